"""FBNet networks of HW-NAS-Bench (CIFAR-100 setting): parse the 22 ops, build, and the ``fbnet`` space.

Source: Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural
Architecture Search" (CVPR 2019), in the CIFAR setting of HW-NAS-Bench (Li et al., ICLR 2021;
``hw_nas_bench_api/fbnet_models/model_infer.py``) whose latencies HELP republishes
(``shared/data/latency/help-fbnet-latency.csv``, layout in ``help-fbnet-layer-positions.csv``).

Network: stem conv3x3 3->16 + BN + ReLU; 22 searched positions (``FBNET_LAYOUT``); head conv1x1
352->1504 + BN + ReLU; global average pool; linear to 100 classes. Input 32x32. A position holds
one of ``FBNET_OPS``: ``k{k}_e{e}[_g2]`` is 1x1 conv (groups g) + BN + ReLU, [channel shuffle],
depthwise kxk (the position's stride) + BN + ReLU, 1x1 conv (groups g) + BN, plus the input when
shapes match; ``skip`` is the identity, or 1x1 conv + BN + ReLU when the shape changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ConvNormAct
from torch import nn

from ..errors import UsageError
from ..search.space import Config, Param
from .base import StudentSpace, register_space
from .common import feature_layers, init_weights
from .reduction import reduction_strides

__all__ = [
    "CIFAR_STRIDES",
    "FBNET_LAYOUT",
    "FBNET_OPS",
    "FBNet",
    "FBNetSpace",
    "build_fbnet",
    "fbnet_params",
    "parse_fbnet",
]

# Index order of HW-NAS-Bench's PRIMITIVES, which the op_idx_list column counts in.
FBNET_OPS: tuple[str, ...] = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")

# (stage, C_in, C_out, stride) of the 22 positions in the CIFAR setting: a copy of
# shared/data/latency/help-fbnet-layer-positions.csv, which transcribes HW-NAS-Bench's
# fbnet_models/model_infer.py (layers per stage [1, 4, 4, 4, 4, 4, 1], channels
# [16, 24, 32, 64, 112, 184, 352], CIFAR strides [1, 1, 2, 2, 1, 2, 1]). Kept in code: the
# package must not read ../shared at run time. One line per stage.
# fmt: off
FBNET_LAYOUT: tuple[tuple[int, int, int, int], ...] = (
    (0, 16, 16, 1),
    (1, 16, 24, 1), (1, 24, 24, 1), (1, 24, 24, 1), (1, 24, 24, 1),
    (2, 24, 32, 2), (2, 32, 32, 1), (2, 32, 32, 1), (2, 32, 32, 1),
    (3, 32, 64, 2), (3, 64, 64, 1), (3, 64, 64, 1), (3, 64, 64, 1),
    (4, 64, 112, 1), (4, 112, 112, 1), (4, 112, 112, 1), (4, 112, 112, 1),
    (5, 112, 184, 2), (5, 184, 184, 1), (5, 184, 184, 1), (5, 184, 184, 1),
    (6, 184, 352, 1),
)
# fmt: on
STEM_CHANNELS = 16
HEAD_CHANNELS = 1504  # CIFAR setting (ImageNet: 1984)
# Downsampling points: the stem, then the first positions of stages 1, 2, 3 and 5 (stride 2 in
# FBNet's ImageNet setting); the CIFAR setting halves only at the last three.
DOWN_POSITIONS: tuple[int, ...] = (1, 5, 9, 17)
CIFAR_STRIDES: tuple[int, ...] = (1, 1, 2, 2, 2)
_EXPECTED = f"22 ops joined by '|' ({', '.join(FBNET_OPS)}) or 22 op indices 0-8 joined by '-'"


def parse_fbnet(text: str) -> tuple[str, ...]:
    """The 22 ops of ``k5_e6|skip|...`` (HELP's ``arch_str``) or ``7-8-1-...`` (``op_idx_list``).

    Raises:
        UsageError: not 22 known ops or indices.
    """
    s = text.strip()
    if "|" in s or "," in s or "_" in s or s == "skip":
        ops = tuple(t.strip() for t in s.replace(",", "|").split("|"))
    else:
        parts = s.split("-")
        if not all(p.isdigit() and int(p) < len(FBNET_OPS) for p in parts):
            raise UsageError(f"FBNet arch '{text}': expected {_EXPECTED}")
        ops = tuple(FBNET_OPS[int(p)] for p in parts)
    if len(ops) != len(FBNET_LAYOUT) or any(op not in FBNET_OPS for op in ops):
        raise UsageError(f"FBNet arch '{text}': expected {_EXPECTED}")
    return ops


def _decode(op: str) -> tuple[int, int, int]:
    """(kernel, expansion, groups) of a block op."""
    parts = op.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), 2 if len(parts) == 3 else 1


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (N, C, H, W) -> (N, C, H, W), channels interleaved by group.

    Written as HW-NAS-Bench's FBNet writes it (``view``, ``permute``, ``contiguous``, ``view``),
    so that eager PyTorch dispatches the same calls as in the measured HELP tables.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)


class FBNetBlock(nn.Module):
    """An FBNet ``k{k}_e{e}[_g2]`` block: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expand: int, groups: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)
        self.has_skip = c_in == c_out and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, ceil(H/stride), ceil(W/stride))."""
        y = self.shuffle(self.act(self.bn1(self.conv1(x))))
        y = self.bn3(self.conv3(self.act(self.bn2(self.conv2(y)))))
        return y + x if self.has_skip else y


class FBNetSkip(nn.Module):
    """The ``skip`` op: identity, or 1x1 conv (stride) + BN + ReLU when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.proj = (
            ConvNormAct(c_in, c_out, 1, stride=stride, act_layer=nn.ReLU)
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, ceil(H/stride), ceil(W/stride))."""
        return self.proj(x)


class FBNet(nn.Module):
    """Stem -> 22 positions -> head conv -> pool -> linear.

    Attributes:
        feature_names: module names of the last position of each stage.
    """

    def __init__(self, ops: Sequence[str], strides: Sequence[int], in_chans: int, num_classes: int) -> None:
        super().__init__()
        pos_stride = dict(zip(DOWN_POSITIONS, strides[1:], strict=True))
        self.stem = ConvNormAct(in_chans, STEM_CHANNELS, 3, stride=strides[0], act_layer=nn.ReLU)
        blocks: list[nn.Module] = []
        for i, (op, (_, c_in, c_out, _)) in enumerate(zip(ops, FBNET_LAYOUT, strict=True)):
            s = pos_stride.get(i, 1)
            if op == "skip":
                blocks.append(FBNetSkip(c_in, c_out, s))
            else:
                k, e, g = _decode(op)
                blocks.append(FBNetBlock(c_in, c_out, k, e, g, s))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvNormAct(FBNET_LAYOUT[-1][2], HEAD_CHANNELS, 1, act_layer=nn.ReLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)
        stage = [row[0] for row in FBNET_LAYOUT] + [-1]
        last = [i for i in range(len(FBNET_LAYOUT)) if stage[i + 1] != stage[i]]
        self.feature_names = [f"blocks.{i}" for i in last]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, num_classes) logits."""
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _check_strides(strides: Sequence[int] | None) -> tuple[int, ...]:
    s = CIFAR_STRIDES if strides is None else tuple(int(v) for v in strides)
    if len(s) != len(CIFAR_STRIDES) or any(v not in (1, 2) for v in s):
        raise UsageError(f"FBNet needs {len(CIFAR_STRIDES)} strides of 1 or 2 (stem, stages 1, 2, 3, 5), got {strides}")
    return s


def build_fbnet(
    arch: str | Sequence[str], num_classes: int = 100, in_chans: int = 3, strides: Sequence[int] | None = None
) -> FBNet:
    """The FBNet of 22 ops (or their string): (N, in_chans, H, W) -> (N, num_classes) logits.

    Args:
        arch: ops as ``parse_fbnet`` accepts, or a sequence of 22 names of ``FBNET_OPS``.
        num_classes: logits (HW-NAS-Bench: 100).
        in_chans: input channels.
        strides: strides of the stem and of stages 1, 2, 3, 5 (default: the CIFAR setting).
    """
    ops = parse_fbnet(arch) if isinstance(arch, str) else parse_fbnet("|".join(arch))
    model = FBNet(ops, _check_strides(strides), in_chans, num_classes)
    init_weights(model)
    return model


def fbnet_params(ops: Sequence[str], in_chans: int = 3, num_classes: int = 100) -> int:
    """Exact parameter count of ``build_fbnet(ops, ...)`` (any strides) without building it."""
    n = 9 * in_chans * STEM_CHANNELS + 2 * STEM_CHANNELS
    for op, (_, c_in, c_out, _) in zip(ops, FBNET_LAYOUT, strict=True):
        if op == "skip":
            # every downsampling position also changes the channels, so C alone decides
            n += 0 if c_in == c_out else c_in * c_out + 2 * c_out
            continue
        k, e, g = _decode(op)
        mid = c_in * e
        n += c_in * mid // g + 2 * mid + mid * k * k + 2 * mid + mid * c_out // g + 2 * c_out
    c = FBNET_LAYOUT[-1][2]
    return n + c * HEAD_CHANNELS + 2 * HEAD_CHANNELS + HEAD_CHANNELS * num_classes + num_classes


@register_space("fbnet")
class FBNetSpace(StudentSpace):
    """FBNet's 22 positions x 9 ops as students (``p00`` .. ``p21``, ``cat`` over ``FBNET_OPS``).

    The fixed FBNet widths (16 -> 352, head 1504) are kept; the strides follow the input
    (``reduction_strides`` over the stem and stages 1, 2, 3, 5): 32 px gives HW-NAS-Bench's CIFAR
    layout (final 4x4), 16 px halves twice (4x4), 224 px five times (7x7, FBNet's ImageNet layout).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        """Create the space.

        Args:
            input_shape: (C, H, W) of the student input.
            num_classes: number of logits.
        """
        # default: expansion 3 everywhere but a skip at the last position of each 4-block stage,
        # a mid-sized member of the space
        default = ["k3_e3"] * len(FBNET_LAYOUT)
        for i in (4, 8, 12, 16, 20):
            default[i] = "skip"
        params = [Param(f"p{i:02d}", "cat", choices=FBNET_OPS, default=op) for i, op in enumerate(default)]
        super().__init__(input_shape, num_classes, params, name="fbnet")
        self.strides = reduction_strides(min(self.input_shape[1], self.input_shape[2]), len(CIFAR_STRIDES))

    def canonical(self, config: Config) -> Config:
        """The space's keys of ``config`` (unknown keys dropped)."""
        return {p.name: config[p.name] for p in self.params if p.name in config}

    def ops(self, config: Config) -> tuple[str, ...]:
        """The 22 ops of ``config``."""
        c = self.complete(config)
        return tuple(str(c[p.name]) for p in self.params)

    def build(self, config: Config) -> FBNet:
        """The student of ``config``: (N, C, H, W) float -> (N, num_classes) logits."""
        return build_fbnet(self.ops(config), self.num_classes, self.input_shape[0], self.strides)

    def estimate_params(self, config: Config) -> int:
        """Exact parameter count of ``build(config)`` (closed form, no build)."""
        return fbnet_params(self.ops(config), self.input_shape[0], self.num_classes)

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Module names of the stage outputs of a built student."""
        return feature_layers(model)

    def describe(self, config: Config) -> str:
        """The ``|``-joined ops, HELP's ``arch_str`` format."""
        return "|".join(self.ops(config))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(strides=list(self.strides))
        return d
