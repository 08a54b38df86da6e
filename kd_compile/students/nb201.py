"""NAS-Bench-201 networks: parse an ``arch_str``, build the "infer.tiny" network, and the ``nb201`` space.

Source: Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture
Search" (ICLR 2020); the definitions follow AutoDL-Projects (``xautodl/models/cell_operations.py``,
``cell_infers/cells.py``, ``cell_infers/tiny_network.py``) and ``shared/data/latency/README.md``.

A cell is a DAG of four nodes; node ``j`` sums one op per earlier node. The ``arch_str``
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` lists those ops node by node, so the six edges are, in
order, 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2. Ops: ``none`` (zero), ``skip_connect``,
``nor_conv_1x1``/``nor_conv_3x3`` (ReLU, conv, BN), ``avg_pool_3x3`` (stride 1). Network: conv3x3
3->C + BN; N cells at C; a ResNet basic block (stride 2) to 2C; N cells; the same to 4C; N cells;
BN, ReLU, global average pool, linear. NAS-Bench-201 uses C=16, N=5 at 32x32.

Checked against the NAS-Bench-201 API (CIFAR-10): the all-``nor_conv_3x3`` network has
1,531,546 parameters and 220.1M MACs, a network without convolutions in its cells 73,306.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..search.space import Config, Param
from .base import StudentSpace, register_space
from .common import feature_layers, init_weights

__all__ = [
    "EDGES",
    "NB201_OPS",
    "NB201Net",
    "NB201Space",
    "build_nb201",
    "nb201_arch_str",
    "nb201_params",
    "parse_nb201",
]

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (to node, from node) of the six edges in arch_str order
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
_CONV_K = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}
_EXPECTED = "|op~0|+|op~0|op~1|+|op~0|op~1|op~2| with op in " + "/".join(NB201_OPS)


def parse_nb201(arch_str: str) -> tuple[str, ...]:
    """The six edge ops of a NAS-Bench-201 ``arch_str``, in ``EDGES`` order.

    Raises:
        UsageError: not three ``+``-separated nodes with inputs ``~0..~j-1`` and known ops.
    """
    nodes = arch_str.strip().split("+")
    if len(nodes) != 3:
        raise UsageError(f"NAS-Bench-201 arch '{arch_str}': expected 3 nodes joined by '+', {_EXPECTED}")
    ops: list[str] = []
    for j, node in enumerate(nodes, start=1):
        found: dict[int, str] = {}
        for item in filter(None, node.strip().split("|")):
            op, sep, src = item.partition("~")
            if not sep or not src.isdigit() or op not in NB201_OPS:
                raise UsageError(f"NAS-Bench-201 arch: bad edge '{item}', expected {_EXPECTED}")
            found[int(src)] = op
        if sorted(found) != list(range(j)):
            raise UsageError(f"NAS-Bench-201 arch: node {j} needs inputs ~0..~{j - 1}, expected {_EXPECTED}")
        ops += [found[i] for i in range(j)]
    return tuple(ops)


def nb201_arch_str(ops: Sequence[str]) -> str:
    """The ``arch_str`` of six edge ops (inverse of ``parse_nb201``)."""
    if len(ops) != len(EDGES):
        raise UsageError(f"NAS-Bench-201 needs {len(EDGES)} edge ops, got {len(ops)}")
    nodes = [[f"{op}~{src}" for op, (dst, src) in zip(ops, EDGES, strict=True) if dst == j] for j in (1, 2, 3)]
    return "+".join("|" + "|".join(n) + "|" for n in nodes)


class ReLUConvBN(nn.Sequential):
    """ReLU -> kxk conv (no bias) -> BN: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


class Zero(nn.Module):
    """The ``none`` op: zeros of the input's shape. Kept as ``x * 0`` like the original, so the
    measured latencies (which include this multiply) stay comparable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> zeros (N, C, H, W)."""
        return x.mul(0.0)


def _op(name: str, c: int) -> nn.Module:
    if name in _CONV_K:
        return ReLUConvBN(c, c, _CONV_K[name])
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    return nn.Identity() if name == "skip_connect" else Zero()


class NB201Cell(nn.Module):
    """One cell: node j = sum of op(node i) over i < j; returns node 3. Shape-preserving."""

    def __init__(self, ops: Sequence[str], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(_op(op, channels) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        nodes = [x]
        for j in (1, 2, 3):
            # plain adds (not sum(), which starts from 0 and puts an extra op in exported graphs)
            out: torch.Tensor | None = None
            for e, (dst, src) in enumerate(EDGES):
                if dst == j:
                    y = self.edges[e](nodes[src])
                    out = y if out is None else out + y
            assert out is not None
            nodes.append(out)
        return nodes[3]


class ResNetBasicBlock(nn.Module):
    """The reduction between stages: two ReLUConvBN 3x3 (the first with stride 2) plus a
    shortcut of 2x2 average pooling and a 1x1 conv (no BN). (N, C_in, H, W) -> (N, C_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        # ceil_mode: the 3x3 stride-2 conv gives ceil(H/2); an odd side must pool to the same size
        self.downsample = nn.Sequential(
            nn.AvgPool2d(2, stride=2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, ceil(H/2), ceil(W/2))."""
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Net(nn.Module):
    """The NAS-Bench-201 "infer.tiny" network (returns logits only, not AutoDL's (features, logits)).

    Attributes:
        feature_names: module names of the three stage outputs.
    """

    def __init__(self, ops: Sequence[str], channels: int, cells: int, in_chans: int, num_classes: int) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        layers: list[nn.Module] = []
        for stage in range(3):
            if stage > 0:
                layers.append(ResNetBasicBlock(c, 2 * c))
                c *= 2
            layers += [NB201Cell(ops, c) for _ in range(cells)]
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.feature_names = [f"cells.{cells - 1}", f"cells.{2 * cells}", f"cells.{3 * cells + 1}"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, num_classes) logits."""
        x = self.lastact(self.cells(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def build_nb201(
    arch: str | Sequence[str], num_classes: int = 10, channels: int = 16, cells: int = 5, in_chans: int = 3
) -> NB201Net:
    """The network of an ``arch_str`` (or six edge ops): (N, in_chans, H, W) -> (N, num_classes).

    Defaults are NAS-Bench-201's (C=16, N=5, CIFAR-10); input 32x32 there, any side works.
    """
    ops = parse_nb201(arch) if isinstance(arch, str) else tuple(arch)
    if len(ops) != len(EDGES) or any(op not in NB201_OPS for op in ops):
        raise UsageError(f"NAS-Bench-201 needs six ops from {', '.join(NB201_OPS)}, got {ops}")
    model = NB201Net(ops, channels, cells, in_chans, num_classes)
    init_weights(model)
    return model


def nb201_params(
    ops: Sequence[str], channels: int = 16, cells: int = 5, in_chans: int = 3, num_classes: int = 10
) -> int:
    """Exact parameter count of ``build_nb201(ops, ...)`` without building it."""

    def cell(c: int) -> int:
        return sum(_CONV_K[op] ** 2 * c * c + 2 * c for op in ops if op in _CONV_K)

    def reduction(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out + c_in * c_out

    c = channels
    n = 9 * in_chans * c + 2 * c + cells * (cell(c) + cell(2 * c) + cell(4 * c))
    n += reduction(c, 2 * c) + reduction(2 * c, 4 * c)
    return n + 2 * 4 * c + 4 * c * num_classes + num_classes


@register_space("nb201")
class NB201Space(StudentSpace):
    """NAS-Bench-201 cells as students: one ``cat`` parameter per edge, optionally C and N.

    Parameters: ``e1_0``, ``e2_0``, ``e2_1``, ``e3_0``, ``e3_1``, ``e3_2`` (edge ``to_from``,
    choices ``NB201_OPS``); with ``search_size``: ``C`` (8, 16, 32) and ``N`` (1..5 cells per
    stage). The default cell is ``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|
    nor_conv_3x3~1|nor_conv_3x3~2|`` at C=16, N=5. The network is
    fully convolutional with two halvings, so 16-32 px inputs end at 4x4 to 8x8.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        search_size: bool = True,
        channels: int = 16,
        cells: int = 5,
    ) -> None:
        """Create the space.

        Args:
            input_shape: (C, H, W) of the student input.
            num_classes: number of logits.
            search_size: also search ``C`` and ``N`` (else fixed at ``channels`` and ``cells``).
            channels: C when not searched.
            cells: N when not searched.
        """
        if channels < 1 or cells < 1:
            raise UsageError(f"channels and cells must be >= 1, got {channels}, {cells}")
        self.search_size = bool(search_size)
        self.channels = int(channels)
        self.cells = int(cells)
        best = ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3")
        params = [
            Param(self.edge_name(e), "cat", choices=NB201_OPS, default=op) for e, op in zip(EDGES, best, strict=True)
        ]
        if self.search_size:
            params += [
                Param("C", "choice", choices=(8, 16, 32), default=16),
                Param("N", "int", low=1, high=5, default=5),
            ]
        super().__init__(input_shape, num_classes, params, name="nb201")

    @staticmethod
    def edge_name(edge: tuple[int, int]) -> str:
        """Config key of an edge (to, from): ``e{to}_{from}``."""
        return f"e{edge[0]}_{edge[1]}"

    def canonical(self, config: Config) -> Config:
        """The space's keys of ``config`` (unknown keys dropped)."""
        return {p.name: config[p.name] for p in self.params if p.name in config}

    def _resolve(self, config: Config) -> tuple[tuple[str, ...], int, int]:
        c = self.complete(config)
        ops = tuple(str(c[self.edge_name(e)]) for e in EDGES)
        if self.search_size:
            return ops, int(c["C"]), int(c["N"])
        return ops, self.channels, self.cells

    def build(self, config: Config) -> NB201Net:
        """The student of ``config``: (N, C, H, W) float -> (N, num_classes) logits."""
        ops, ch, n = self._resolve(config)
        return build_nb201(ops, self.num_classes, ch, n, self.input_shape[0])

    def estimate_params(self, config: Config) -> int:
        """Exact parameter count of ``build(config)`` (closed form, no build)."""
        ops, ch, n = self._resolve(config)
        return nb201_params(ops, ch, n, self.input_shape[0], self.num_classes)

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Module names of the three stage outputs of a built student."""
        return feature_layers(model)

    def describe(self, config: Config) -> str:
        """E.g. ``|nor_conv_3x3~0|+|...| C16 N5``."""
        ops, ch, n = self._resolve(config)
        return f"{nb201_arch_str(ops)} C{ch} N{n}"

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(search_size=self.search_size, channels=self.channels, cells=self.cells)
        return d
