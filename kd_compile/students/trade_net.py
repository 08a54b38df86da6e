"""The TRADE student network: its modules, the conv block of a stage, and exact parameter counts.

``TradeSpace`` (``students/trade.py``) resolves a config into ``StagePlan``s and assembles a
``TradeNet`` from timm's building blocks. A stage's block type (``BLOCK_TYPES``) is one of

* ``fused``: ``EdgeResidual`` (Fused-MBConv);
* ``mbconv``: ``InvertedResidual`` (MBConv), or ``DepthwiseSeparableConv`` for expansion 1 (as
  in EfficientNet);
* ``conv``: ``ConvNormAct``, a plain 3x3 conv -> BN -> act;
* ``residual``: timm's ``byobnet.BasicBlock`` (ResNet basic block: two 3x3 convs, a 1x1
  projection shortcut when the shape changes);
* ``repvgg``: timm's ``byobnet.RepVggBlock`` (3x3 + 1x1 + identity-BN branches while training,
  folded into one 3x3 conv with bias by ``reparameterize()``; ``common.deployed`` folds a model).

The depthwise/SE-heavy Fused-MBConv/MBConv blocks launch several small kernels each, slow at
batch 1 on GPUs; the last three are dense 3x3 convs, few kernels, fast there. ``SqueezeExcite``,
``SelectAdaptivePool2d`` and the ViT ``Block`` inside ``TokenTransformer`` complete the network.
The counting functions here mirror that layer layout, so ``TradeSpace.estimate_params`` (the
built, training form) and ``TradeSpace.deployed_params`` (RepVGG folded) are exact without
building a model.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import BatchNormAct2d, ConvNormAct, SelectAdaptivePool2d, make_divisible, trunc_normal_
from timm.models._efficientnet_blocks import (
    DepthwiseSeparableConv,
    EdgeResidual,
    InvertedResidual,
    SqueezeExcite,
)
from timm.models.byobnet import BasicBlock, LayerFn, RepVggBlock
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import UsageError
from .common import conv_bn_params

__all__ = [
    "ACTIVATIONS",
    "BLOCK_TAGS",
    "BLOCK_TYPES",
    "DENSE_KERNEL",
    "DENSE_TYPES",
    "StagePlan",
    "TokenTransformer",
    "TradeNet",
    "act_layer",
    "block_params",
    "conv_block",
    "transformer_params",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
}


# Block types of a stage, in the order of the one-hot ``s{i}_type`` encoding: the two original
# TRADE types first, so configs written before the dense types existed keep their meaning.
BLOCK_TYPES: tuple[str, ...] = ("fused", "mbconv", "conv", "residual", "repvgg")
# describe() tag of each type: FMB24x1, MB64x2, C32x2, R32x2, RV32x2
BLOCK_TAGS: dict[str, str] = {"fused": "FMB", "mbconv": "MB", "conv": "C", "residual": "R", "repvgg": "RV"}
# Dense types: they have no expansion ratio and no SE, and the space builds them 3x3 only
# (``DENSE_KERNEL``), the GPU-fast kernel: at batch 1 a 5x5 dense conv costs 25/9 of the
# parameters and FLOPs for a small gain in receptive field (``conv_block`` builds any odd
# kernel the plan gives).
DENSE_TYPES: frozenset[str] = frozenset({"conv", "residual", "repvgg"})
DENSE_KERNEL = 3


def act_layer(name: str) -> type[nn.Module]:
    """The activation class called ``name`` (a key of ``ACTIVATIONS``).

    Raises:
        UsageError: unknown name (the message lists the known ones).
    """
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise UsageError(f"unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})") from None


@dataclass(frozen=True)
class StagePlan:
    """One resolved conv stage of a TRADE student.

    Attributes:
        index: stage slot (1-based, as in the config keys ``s{index}_*``).
        type: one of ``BLOCK_TYPES``.
        depth: number of blocks (>= 1; dropped stages have no plan).
        in_chs, out_chs: channels into the first block and out of every block.
        kernel, expand, se: kernel size, expansion ratio, SE ratio (of the block input); the
            dense types (``DENSE_TYPES``) use only the kernel.
        stride: stride of the first block (1 or 2).
        out_hw: (H, W) of the stage output.
    """

    index: int
    type: str
    depth: int
    in_chs: int
    out_chs: int
    kernel: int
    expand: int
    se: float
    stride: int
    out_hw: tuple[int, int]


def _no_inplace(act: type[nn.Module], inplace: bool = False) -> nn.Module:
    # timm's byobnet blocks create their activation as act(inplace=True); GELU has no such flag
    return act()


def _byob_layers(act: type[nn.Module]) -> LayerFn:
    """timm's byobnet layer factories with the space's activation (byobnet's default is ReLU)."""
    takes_inplace = "inplace" in inspect.signature(act).parameters
    act_fn: Callable[..., nn.Module] = act if takes_inplace else partial(_no_inplace, act)
    return LayerFn(
        conv_norm_act=partial(ConvNormAct, act_layer=act),  # type: ignore[arg-type]
        norm_act=partial(BatchNormAct2d, act_layer=act),  # type: ignore[arg-type]
        act=act_fn,  # type: ignore[arg-type]
    )


def conv_block(
    plan: StagePlan, in_chs: int, stride: int, act: type[nn.Module], drop_path_rate: float
) -> nn.Module:
    """One block of the stage ``plan``: (N, in_chs, H, W) -> (N, plan.out_chs, H/stride, W/stride).

    Args:
        plan: the stage (type, kernel, expansion, SE ratio, output channels).
        in_chs: input channels (``plan.in_chs`` for the first block, else ``plan.out_chs``).
        stride: 1, or 2 for the first block of a downsampling stage.
        act: activation class of the block.
        drop_path_rate: stochastic depth rate of the residual branch.

    Raises:
        UsageError: unknown block type.
    """
    if plan.type == "conv":
        return ConvNormAct(in_chs, plan.out_chs, plan.kernel, stride=stride, act_layer=act)
    if plan.type == "residual":
        # 1x1-conv projection shortcut (ResNet's option B), not byobnet's default avg-pool + 1x1
        # (ResNet-D): one kernel fewer at batch 1 and no extra op for the predictor to price
        return BasicBlock(
            in_chs,
            plan.out_chs,
            kernel_size=plan.kernel,
            stride=stride,
            downsample="conv1x1",
            layers=_byob_layers(act),
            drop_path_rate=drop_path_rate,
        )
    if plan.type == "repvgg":
        return RepVggBlock(
            in_chs,
            plan.out_chs,
            kernel_size=plan.kernel,
            stride=stride,
            layers=_byob_layers(act),
            drop_path_rate=drop_path_rate,
        )
    if plan.type not in ("fused", "mbconv"):
        raise UsageError(f"unknown block type '{plan.type}' (known: {', '.join(BLOCK_TYPES)})")
    # SE width from the block input (EfficientNet's convention), not from the expanded
    # channels, so SE stays a small fraction of the block
    se = partial(SqueezeExcite, rd_channels=max(1, round(in_chs * plan.se))) if plan.se > 0 else None
    common: dict[str, Any] = {
        "stride": stride,
        "act_layer": act,
        "se_layer": se,
        "drop_path_rate": drop_path_rate,
    }
    if plan.type == "fused":
        return EdgeResidual(
            in_chs, plan.out_chs, exp_kernel_size=plan.kernel, exp_ratio=plan.expand, **common
        )
    if plan.expand == 1:
        # EfficientNet uses a depthwise-separable block for MBConv e1: the 1x1 expansion conv of
        # InvertedResidual would be a square matrix that adds nothing
        return DepthwiseSeparableConv(in_chs, plan.out_chs, dw_kernel_size=plan.kernel, **common)
    return InvertedResidual(
        in_chs, plan.out_chs, dw_kernel_size=plan.kernel, exp_ratio=plan.expand, **common
    )


class TokenTransformer(nn.Module):
    """Transformer blocks on the final feature map, as tokens, with a learned position embedding.

    (N, C, h, w) -> tokens (N, h*w, C) -> Linear to ``dim`` (only when C is not divisible by
    the heads) -> + pos_embed -> Blocks -> LayerNorm -> (N, dim, h, w).
    """

    def __init__(
        self,
        in_chs: int,
        grid: tuple[int, int],
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        dim = int(math.ceil(in_chs / num_heads) * num_heads)
        self.dim = dim
        self.grid = grid
        self.proj: nn.Module = nn.Linear(in_chs, dim) if dim != in_chs else nn.Identity()
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(
            *[
                Block(
                    dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=True,
                    drop_path=drop_path_rate,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, h, w). Returns: (N, dim, h, w)."""
        n, _, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (N, h*w, C)
        t = self.proj(t) + self.pos_embed
        t = self.norm(self.blocks(t))
        return t.transpose(1, 2).reshape(n, self.dim, h, w)


class TradeNet(nn.Module):
    """A TRADE student: stem -> conv stages -> optional Transformer -> head.

    Attributes:
        feature_names: module names of the stage outputs (see ``common.feature_layers``).
        plans: the resolved stages.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: nn.Sequential,
        tf: nn.Module | None,
        head_conv: nn.Module,
        num_features: int,
        num_classes: int,
        drop_rate: float,
        plans: list[StagePlan],
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.tf = tf if tf is not None else nn.Identity()
        self.head_conv = head_conv
        self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)
        self.plans = plans
        self.feature_names = [f"stages.{name}" for name, _ in stages.named_children()]
        if tf is not None:
            self.feature_names.append("tf")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W). Returns the final feature map (N, C_f, h, w)."""
        return self.tf(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W) float. Returns logits (N, num_classes)."""
        x = self.head_conv(self.forward_features(x))
        return self.fc(self.drop(self.pool(x)))


# -- exact parameter counts (timm's layer layout) ---------------------------------------------
def _se_params(chs: int, rd: int) -> int:
    # SqueezeExcite: 1x1 reduce and expand convs, both with bias
    return chs * rd + rd + rd * chs + chs


def block_params(
    kind: str,
    in_chs: int,
    out_chs: int,
    kernel: int,
    expand: int,
    se: float,
    stride: int = 1,
    deployed: bool = False,
) -> int:
    """Parameters of one block as ``conv_block`` builds it.

    Args:
        kind: the block type (one of ``BLOCK_TYPES``).
        in_chs, out_chs: input and output channels.
        kernel, expand, se: kernel size, expansion ratio, SE ratio (the dense types use only
            the kernel).
        stride: the block's stride (a residual block's shortcut and a RepVGG block's identity
            branch depend on it).
        deployed: count a RepVGG block folded into one kxk conv with bias (what ships), not its
            training form; every other type is the same in both forms.
    """
    if kind == "conv":
        return conv_bn_params(in_chs, out_chs, kernel)
    same = in_chs == out_chs and stride == 1
    if kind == "residual":  # BasicBlock: kxk -> kxk (mid = out rounded to 8), 1x1 shortcut if needed
        mid = int(make_divisible(out_chs))
        n = conv_bn_params(in_chs, mid, kernel) + conv_bn_params(mid, out_chs, kernel)
        return n + (0 if same else conv_bn_params(in_chs, out_chs, 1))
    if kind == "repvgg":
        if deployed:  # reparam_conv: one kxk conv with bias
            return in_chs * out_chs * kernel * kernel + out_chs
        # conv_kxk + conv_1x1 (each with BN) + identity BN when the shape is kept
        n = conv_bn_params(in_chs, out_chs, kernel) + conv_bn_params(in_chs, out_chs, 1)
        return n + (2 * out_chs if same else 0)
    if kind not in ("fused", "mbconv"):
        raise UsageError(f"unknown block type '{kind}' (known: {', '.join(BLOCK_TYPES)})")
    rd = max(1, round(in_chs * se)) if se > 0 else 0
    if kind == "fused":  # EdgeResidual: kxk expansion conv -> SE -> 1x1 projection
        mid = int(make_divisible(in_chs * expand))
        n = conv_bn_params(in_chs, mid, kernel) + conv_bn_params(mid, out_chs, 1)
        return n + (_se_params(mid, rd) if rd else 0)
    if expand == 1:  # DepthwiseSeparableConv: dw kxk -> SE -> 1x1 projection
        n = conv_bn_params(in_chs, in_chs, kernel, groups=in_chs) + conv_bn_params(in_chs, out_chs, 1)
        return n + (_se_params(in_chs, rd) if rd else 0)
    mid = int(make_divisible(in_chs * expand))  # InvertedResidual: 1x1 -> dw kxk -> SE -> 1x1
    n = (
        conv_bn_params(in_chs, mid, 1)
        + conv_bn_params(mid, mid, kernel, groups=mid)
        + conv_bn_params(mid, out_chs, 1)
    )
    return n + (_se_params(mid, rd) if rd else 0)


def transformer_params(in_chs: int, tokens: int, depth: int, heads: int, mlp_ratio: float) -> int:
    """Parameters of ``TokenTransformer`` (timm ViT ``Block`` with qkv bias) over ``tokens``."""
    dim = int(math.ceil(in_chs / heads) * heads)
    hidden = int(dim * mlp_ratio)
    block = 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * dim
    block += dim * hidden + hidden + hidden * dim + dim
    proj = in_chs * dim + dim if dim != in_chs else 0
    return proj + tokens * dim + depth * block + 2 * dim
