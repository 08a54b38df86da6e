"""Once-for-All MobileNetV3 subnets: parse ``ofa:<res>/<depths>/<blocks>``, build, and the ``ofa`` space.

Source: Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment"
(ICLR 2020); the subnets of its ``ofa_mbv3_d234_e346_k357_w1.2`` supernet as
``mit-han-lab/once-for-all`` builds them (``ofa/imagenet_classification/elastic_nn/networks/
ofa_mbv3.py``, ``ofa/utils/layers.py``) and as ``shared/data/latency/README.md`` describes the
encodings of ``ofa-architectures.csv`` (from HELP).

Network (width 1.2): stem conv3x3 stride 2 + BN + h-swish to 24; a fixed MBConv k3 e1 (ReLU, no
SE, residual) at 24; five stages of widths ``OFA_WIDTHS``, strides ``OFA_STRIDES`` (on the first
block), activations ``OFA_ACTS`` and SE ``OFA_SE``, 2-4 blocks each with kernel 3/5/7 and
expansion 3/4/6; conv1x1 to 1152 + BN + h-swish; global pool; conv1x1 to 1536 (no BN, no bias) +
h-swish; dropout; linear. MBConv hidden width ``make_divisible(C_in * e, 8)``; SE squeeze
``make_divisible(hidden // 4, 8)`` with ReLU and a hard-sigmoid gate. Built from timm's
``InvertedResidual``/``DepthwiseSeparableConv``/``SqueezeExcite``, which match those layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import ConvNormAct, make_divisible
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from torch import nn

from ..errors import UsageError
from ..search.space import Config, Param
from .base import StudentSpace, register_space
from .common import feature_layers, init_weights
from .reduction import reduction_strides

__all__ = ["OFA_STRIDES", "OfaArch", "OfaMobileNetV3", "OfaSpace", "build_ofa", "ofa_params", "parse_ofa"]

OFA_WIDTHS: tuple[int, ...] = (32, 48, 96, 136, 192)
OFA_STRIDES: tuple[int, ...] = (2, 2, 2, 1, 2)
OFA_ACTS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU, nn.Hardswish, nn.Hardswish, nn.Hardswish)
OFA_SE: tuple[bool, ...] = (False, True, False, True, True)
STEM, FINAL_EXPAND, FEATURE_MIX = 24, 1152, 1536
KERNELS, EXPANDS, DEPTHS = (3, 5, 7), (3, 4, 6), (2, 3, 4)
_EXPECTED = (
    "<resolution>/<5 depths 2-4 joined by '-'>/<5 stages joined by '|', each its blocks k{3,5,7}e{3,4,6} "
    "joined by '-'>, e.g. 204/2-2-2-2-3/k7e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3"
)

Blocks = tuple[tuple[tuple[int, int], ...], ...]


@dataclass(frozen=True)
class OfaArch:
    """One OFA subnet.

    Attributes:
        resolution: input side in pixels (128-224 in the published subnets).
        blocks: per stage, (kernel, expansion) of each active block.
    """

    resolution: int
    blocks: Blocks

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.blocks)

    def spec(self) -> str:
        """The ``ofa-architectures.csv`` encoding, ``<res>/<depths>/<blocks>``."""
        depths = "-".join(str(d) for d in self.depths)
        stages = "|".join("-".join(f"k{k}e{e}" for k, e in s) for s in self.blocks)
        return f"{self.resolution}/{depths}/{stages}"


def _block(text: str) -> tuple[int, int]:
    t = text.strip()
    k, sep, e = t[1:].partition("e")
    ok = t.startswith("k") and sep and k.isdigit() and e.isdigit()
    if not ok or int(k) not in KERNELS or int(e) not in EXPANDS:
        raise UsageError(f"OFA block '{text}' is not k{{3,5,7}}e{{3,4,6}}; expected {_EXPECTED}")
    return int(k), int(e)


# input sides a subnet is built for: the published subnets use 128-224; the student space runs them at
# its data's size (8-px digits, 16-px glyphs), the feature maps padded down to one pixel
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024


def parse_ofa(text: str) -> OfaArch:
    """Parse ``<resolution>/<depths>/<active_blocks>`` (the columns of ``ofa-architectures.csv``).

    Stages in ``active_blocks`` are separated by ``|`` (or ``,``, which needs no shell quoting).

    Raises:
        UsageError: a malformed field, a resolution outside 8-1024, a depth outside 2-4, or depths that
            disagree with the blocks.
    """
    parts = text.strip().split("/")
    if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) < 1:
        raise UsageError(f"OFA arch '{text}': expected {_EXPECTED}")
    if not MIN_RESOLUTION <= int(parts[0]) <= MAX_RESOLUTION:
        raise UsageError(f"OFA arch '{text}': resolution {int(parts[0])} is outside {MIN_RESOLUTION}-{MAX_RESOLUTION} "
                         "(the published subnets use 128-224)")
    depth_txt = parts[1].split("-")
    if len(depth_txt) != len(OFA_WIDTHS) or not all(d.isdigit() and int(d) in DEPTHS for d in depth_txt):
        raise UsageError(f"OFA arch '{text}': depths must be 5 values in 2-4; expected {_EXPECTED}")
    stages = parts[2].replace(",", "|").split("|")
    if len(stages) != len(OFA_WIDTHS):
        raise UsageError(f"OFA arch '{text}': need 5 stages of blocks; expected {_EXPECTED}")
    blocks = tuple(tuple(_block(b) for b in s.split("-")) for s in stages)
    if tuple(len(s) for s in blocks) != tuple(int(d) for d in depth_txt):
        raise UsageError(f"OFA arch '{text}': depths {parts[1]} disagree with the blocks per stage")
    return OfaArch(int(parts[0]), blocks)


def _mid(c_in: int, expand: int) -> int:
    return int(make_divisible(c_in * expand, 8))


def _se_channels(mid: int) -> int:
    return int(make_divisible(mid // 4, 8))


class OfaMobileNetV3(nn.Module):
    """An OFA MobileNetV3 subnet: (N, in_chans, H, W) -> (N, num_classes) logits.

    Attributes:
        feature_names: module names of the five stage outputs.
    """

    def __init__(
        self, blocks: Blocks, strides: Sequence[int], in_chans: int, num_classes: int, drop_rate: float
    ) -> None:
        super().__init__()
        # strides: the stem, then stages 1, 2, 3 and 5 (stage 4 never downsamples)
        stage_strides = (strides[1], strides[2], strides[3], 1, strides[4])
        self.stem = ConvNormAct(in_chans, STEM, 3, stride=strides[0], act_layer=nn.Hardswish)
        self.first = DepthwiseSeparableConv(STEM, STEM, 3, act_layer=nn.ReLU)
        stages: list[nn.Module] = []
        c_in = STEM
        for i, stage in enumerate(blocks):
            layers: list[nn.Module] = []
            for j, (k, e) in enumerate(stage):
                se = None
                if OFA_SE[i]:
                    rd = _se_channels(_mid(c_in, e))
                    se = partial(SqueezeExcite, rd_channels=rd, gate_layer=nn.Hardsigmoid, force_act_layer=nn.ReLU)
                layers.append(
                    InvertedResidual(
                        c_in,
                        OFA_WIDTHS[i],
                        k,
                        stride=stage_strides[i] if j == 0 else 1,
                        exp_ratio=e,
                        act_layer=OFA_ACTS[i],
                        se_layer=se,
                    )
                )
                c_in = OFA_WIDTHS[i]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final_expand = ConvNormAct(c_in, FINAL_EXPAND, 1, act_layer=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = nn.Sequential(nn.Conv2d(FINAL_EXPAND, FEATURE_MIX, 1, bias=False), nn.Hardswish())
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(FEATURE_MIX, num_classes)
        self.feature_names = [f"stages.{i}" for i in range(len(blocks))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, num_classes) logits."""
        x = self.final_expand(self.stages(self.first(self.stem(x))))
        x = self.feature_mix(self.pool(x))
        return self.classifier(self.drop(torch.flatten(x, 1)))


def _check(blocks: Blocks, strides: Sequence[int]) -> None:
    if len(blocks) != len(OFA_WIDTHS) or any(not s for s in blocks):
        raise UsageError(f"OFA needs 5 non-empty stages, got {len(blocks)}")
    if len(strides) != 5 or any(s not in (1, 2) for s in strides):
        raise UsageError(f"OFA needs 5 strides of 1 or 2 (stem, stages 1, 2, 3, 5), got {tuple(strides)}")


def build_ofa(
    arch: str | OfaArch | Blocks,
    num_classes: int = 1000,
    in_chans: int = 3,
    strides: Sequence[int] = (2, 2, 2, 2, 2),
    drop_rate: float = 0.1,
) -> OfaMobileNetV3:
    """Build an OFA subnet (random init).

    Args:
        arch: ``<res>/<depths>/<blocks>`` text, an ``OfaArch`` or its ``blocks``.
        num_classes: logits (OFA: 1000).
        in_chans: input channels.
        strides: the stem's and stages 1, 2, 3, 5's strides (OFA: all 2, 224 -> 7).
        drop_rate: dropout before the classifier (OFA: 0.1).
    """
    blocks = parse_ofa(arch).blocks if isinstance(arch, str) else arch.blocks if isinstance(arch, OfaArch) else arch
    _check(blocks, strides)
    model = OfaMobileNetV3(blocks, strides, in_chans, num_classes, drop_rate)
    init_weights(model)
    return model


def ofa_params(blocks: Blocks, in_chans: int = 3, num_classes: int = 1000) -> int:
    """Exact parameter count of ``build_ofa(blocks, ...)`` (any strides) without building it."""
    n = 9 * in_chans * STEM + 2 * STEM + (9 * STEM + 2 * STEM) + (STEM * STEM + 2 * STEM)
    c_in = STEM
    for i, stage in enumerate(blocks):
        for k, e in stage:
            mid, c_out = _mid(c_in, e), OFA_WIDTHS[i]
            n += c_in * mid + 2 * mid + mid * k * k + 2 * mid + mid * c_out + 2 * c_out
            if OFA_SE[i]:
                rd = _se_channels(mid)
                n += 2 * mid * rd + rd + mid
            c_in = c_out
    n += c_in * FINAL_EXPAND + 2 * FINAL_EXPAND + FINAL_EXPAND * FEATURE_MIX
    return n + FEATURE_MIX * num_classes + num_classes


@register_space("ofa")
class OfaSpace(StudentSpace):
    """OFA MobileNetV3 subnets as students: depth per stage, kernel and expansion per block.

    Parameters: ``s{i}_depth`` (2-4) for stages 1-5 and ``s{i}_b{j}_k`` (3, 5, 7),
    ``s{i}_b{j}_e`` (3, 4, 6) for blocks 1-4; blocks beyond the depth take their defaults
    (canonical form). The input shape is the teacher's, so the stem and stage strides follow it
    (``reduction_strides`` over the stem and stages 1, 2, 3, 5): 224 px is OFA's layout (7x7),
    32 px halves three times and 16 px twice (final 4x4).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, drop_rate: float = 0.0) -> None:
        """Create the space.

        Args:
            input_shape: (C, H, W) of the student input.
            num_classes: number of logits.
            drop_rate: dropout before the classifier.
        """
        self.drop_rate = float(drop_rate)
        params: list[Param] = []
        for i in range(1, len(OFA_WIDTHS) + 1):
            params.append(Param(f"s{i}_depth", "choice", choices=DEPTHS, default=2))
            for j in range(1, max(DEPTHS) + 1):
                params += [
                    Param(f"s{i}_b{j}_k", "choice", choices=KERNELS, default=3),
                    Param(f"s{i}_b{j}_e", "choice", choices=EXPANDS, default=4),
                ]
        super().__init__(input_shape, num_classes, params, name="ofa")
        self.strides = reduction_strides(min(self.input_shape[1], self.input_shape[2]), 5)

    def canonical(self, config: Config) -> Config:
        """Kernel and expansion of blocks beyond a stage's depth take their defaults; unknown keys
        are dropped."""
        c = {p.name: config[p.name] for p in self.params if p.name in config}
        for i in range(1, len(OFA_WIDTHS) + 1):
            depth = int(c.get(f"s{i}_depth", max(DEPTHS)))
            for j in range(depth + 1, max(DEPTHS) + 1):
                for key in (f"s{i}_b{j}_k", f"s{i}_b{j}_e"):
                    if key in c:
                        c[key] = self.param(key).default
        return c

    def blocks(self, config: Config) -> Blocks:
        """(kernel, expansion) of the active blocks of each stage."""
        c = self.complete(config)
        return tuple(
            tuple((int(c[f"s{i}_b{j}_k"]), int(c[f"s{i}_b{j}_e"])) for j in range(1, int(c[f"s{i}_depth"]) + 1))
            for i in range(1, len(OFA_WIDTHS) + 1)
        )

    def build(self, config: Config) -> OfaMobileNetV3:
        """The student of ``config``: (N, C, H, W) float -> (N, num_classes) logits."""
        return build_ofa(self.blocks(config), self.num_classes, self.input_shape[0], self.strides, self.drop_rate)

    def estimate_params(self, config: Config) -> int:
        """Exact parameter count of ``build(config)`` (closed form, no build)."""
        return ofa_params(self.blocks(config), self.input_shape[0], self.num_classes)

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Module names of the five stage outputs of a built student."""
        return feature_layers(model)

    def describe(self, config: Config) -> str:
        """The ``ofa-architectures.csv`` encoding at this input size, e.g. ``32/2-2-2-2-2/k3e4-...``
        (the space's strides, ``self.strides``, differ from OFA's below 224 px)."""
        return OfaArch(min(self.input_shape[1], self.input_shape[2]), self.blocks(config)).spec()

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(drop_rate=self.drop_rate, strides=list(self.strides))
        return d
