"""Accel-NASBench networks: the MnasNet search space in an EfficientNet-B0 skeleton, from a spec.

Source: Ahmad et al., "Accel-NASBench: Sustainable Benchmarking for Accelerator-Aware NAS"
(``afzalxo/Accel-NASBench``, ``configurationspaces/searchspaces.py`` and the dataset described in
``shared/data/latency/README.md``, ``accel-nasbench-mbconv.csv``).

Network: stem conv3x3 stride 2, 3->32 + BN + ReLU; seven stages with strides ``ANB_STRIDES`` and
widths ``ANB_WIDTHS``, each ``l`` MBConv blocks of expansion ``e`` and depthwise kernel ``k``
(the first block carries the stride); head conv1x1 320->1280 + BN + ReLU; global pool; linear to
1000. MBConv: expand 1x1 + BN + ReLU (skipped when e = 1), depthwise kxk + BN + ReLU, optional SE
(squeeze ``max(1, C_in // 4)`` of the block input, ReLU, hard-sigmoid gate), project 1x1 + BN,
residual at stride 1 with equal widths. Input 224x224: the published ``params_M`` are met
exactly, and ``macs_M`` equal conv/linear MACs plus 4 per BN output element plus the pooled
elements (their counter's convention), within 0.02%.

Spec (``anb:`` prefix in ``students/specs.py``): seven stages joined by ``-``, each
``e{1,4,6}k{3,5}l{1-4}s{0,1}`` (``s1`` = squeeze-excite), e.g.
``e6k3l1s0-e4k5l2s0-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s0``. The CSV's ``arch_encoding``
form (stages joined by ``|``, SE as a trailing ``se``, e.g. ``e6k3l1|e4k5l2se|...``) is accepted too;
``anb_spec_from_row`` turns a CSV row's ``b{i}_e/_k/_l/_se`` columns into the spec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import ConvNormAct
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from torch import nn

from ..errors import UsageError
from .common import init_weights

__all__ = ["ANB_STRIDES", "ANB_WIDTHS", "AnbNet", "AnbStage", "anb_spec", "anb_spec_from_row", "build_anb", "parse_anb"]

ANB_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
ANB_WIDTHS: tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
STEM, HEAD = 32, 1280
INPUT_SIDE = 224
_STAGE = re.compile(r"^e(\d+)k(\d+)l(\d+)(?:s([01])|(se))?$")
_EXPECTED = (
    "7 stages joined by '-', each e{1,4,6}k{3,5}l{1-4}s{0,1}, "
    "e.g. e6k3l1s0-e4k5l2s0-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1, "
    "or the CSV's arch_encoding, e.g. e6k3l1|e4k5l2|e6k3l3|e6k5l3|e6k5l2|e1k3l2|e1k3l2se"
)


@dataclass(frozen=True)
class AnbStage:
    """One stage: expansion, depthwise kernel, number of layers, squeeze-excite."""

    e: int
    k: int
    l: int  # noqa: E741  (the benchmark's own name for the layer count)
    se: bool

    def spec(self) -> str:
        return f"e{self.e}k{self.k}l{self.l}s{int(self.se)}"


def parse_anb(text: str) -> tuple[AnbStage, ...]:
    """The seven stages of an Accel-NASBench spec (or of the CSV's ``arch_encoding``).

    Raises:
        UsageError: not seven stages of the grammar above, or values outside the space.
    """
    parts = text.strip().replace("|", "-").split("-")
    if len(parts) != len(ANB_WIDTHS):
        raise UsageError(f"Accel-NASBench arch '{text}': expected {_EXPECTED}")
    stages = []
    for p in parts:
        m = _STAGE.match(p.strip())
        if m is None:
            raise UsageError(f"Accel-NASBench stage '{p}': expected {_EXPECTED}")
        e, k, n = int(m[1]), int(m[2]), int(m[3])
        if e not in (1, 4, 6) or k not in (3, 5) or not 1 <= n <= 4:
            raise UsageError(f"Accel-NASBench stage '{p}' is outside the space: expected {_EXPECTED}")
        stages.append(AnbStage(e, k, n, m[4] == "1" or m[5] is not None))
    return tuple(stages)


def anb_spec(stages: Sequence[AnbStage]) -> str:
    """The spec of seven stages (inverse of ``parse_anb``), without the ``anb:`` prefix."""
    return "-".join(s.spec() for s in stages)


def anb_spec_from_row(row: Mapping[str, object]) -> str:
    """The spec of an ``accel-nasbench-mbconv.csv`` row, from its ``b{i}_e``, ``b{i}_k``,
    ``b{i}_l`` and ``b{i}_se`` columns (i = 0..6), without the ``anb:`` prefix.

    Raises:
        UsageError: a column is missing or not an integer.
    """
    try:
        stages = [
            AnbStage(*(int(str(row[f"b{i}_{c}"]).strip()) for c in ("e", "k", "l")), bool(int(str(row[f"b{i}_se"]))))
            for i in range(len(ANB_WIDTHS))
        ]
    except (KeyError, ValueError) as exc:
        raise UsageError(f"Accel-NASBench row lacks integer b{{i}}_e/_k/_l/_se columns ({exc})") from None
    return anb_spec(parse_anb(anb_spec(stages)))


def _block(c_in: int, c_out: int, st: AnbStage, stride: int) -> nn.Module:
    se = None
    if st.se:
        # the squeeze width comes from the block input, as in torchvision's EfficientNet MBConv
        se = partial(SqueezeExcite, rd_channels=max(1, c_in // 4), gate_layer=nn.Hardsigmoid)
    if st.e == 1:
        return DepthwiseSeparableConv(c_in, c_out, st.k, stride=stride, act_layer=nn.ReLU, se_layer=se)
    return InvertedResidual(c_in, c_out, st.k, stride=stride, exp_ratio=st.e, act_layer=nn.ReLU, se_layer=se)


class AnbNet(nn.Module):
    """An Accel-NASBench network: (N, in_chans, H, W) -> (N, num_classes) logits.

    Attributes:
        feature_names: module names of the seven stage outputs.
    """

    def __init__(self, stages: Sequence[AnbStage], in_chans: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.stem = ConvNormAct(in_chans, STEM, 3, stride=2, act_layer=nn.ReLU)
        blocks: list[nn.Module] = []
        c_in = STEM
        for st, c_out, stride in zip(stages, ANB_WIDTHS, ANB_STRIDES, strict=True):
            layers = [_block(c_in if j == 0 else c_out, c_out, st, stride if j == 0 else 1) for j in range(st.l)]
            blocks.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*blocks)
        self.head = ConvNormAct(c_in, HEAD, 1, act_layer=nn.ReLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(HEAD, num_classes)
        self.feature_names = [f"stages.{i}" for i in range(len(stages))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, num_classes) logits."""
        x = self.pool(self.head(self.stages(self.stem(x))))
        return self.classifier(self.drop(torch.flatten(x, 1)))


def build_anb(
    arch: str | Sequence[AnbStage], num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2
) -> AnbNet:
    """Build an Accel-NASBench network (random init); input 224x224 in the benchmark.

    Args:
        arch: a spec (see the module docstring) or seven ``AnbStage``.
        num_classes: logits (ImageNet: 1000).
        in_chans: input channels.
        drop_rate: dropout before the classifier (EfficientNet-B0's 0.2).
    """
    stages = parse_anb(arch) if isinstance(arch, str) else tuple(arch)
    if len(stages) != len(ANB_WIDTHS):
        raise UsageError(f"Accel-NASBench needs {len(ANB_WIDTHS)} stages, got {len(stages)}")
    model = AnbNet(stages, in_chans, num_classes, drop_rate)
    init_weights(model)
    return model
