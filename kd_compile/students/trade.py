"""TRADE search space (stem -> Fused-MBConv/MBConv stages -> Transformer -> head) and a plain CNN space.

The TRADE paper (Kim et al., "Trust Region Aware architecture search to Distill knowledge
Effectively") searches ``Stem Conv -> Fused-MBConv & MBConv -> Transformer``: convolutions do
the early visual processing, optional Transformer blocks sit between the conv backbone and the
head. Per stage it searches block type, depth, width, kernel, expansion and SE ratio. This
module implements that space on top of timm's building blocks (``EdgeResidual`` = Fused-MBConv,
``InvertedResidual`` = MBConv, ``DepthwiseSeparableConv`` for MBConv with expansion 1 as in
EfficientNet, ``SqueezeExcite``, ``ConvNormAct``, ``SelectAdaptivePool2d`` and the ViT
``Block``), with a flat list of parameters so a GP sees a fixed-dimension encoding.

Downsampling rule (``stride_plan``), so that the same space serves 16-64 px glyphs and 224 px
photos: let ``S = min(H, W)``.

* the stem has stride 1 when ``S <= 16`` (tiny images keep their detail), else stride 2: a
  first stage at full resolution dominates the cost of training a student (measured 2x per step
  for 30K-parameter students at 20 px on CPU), and glyphs of 20-32 px lose little at half size;
* after the stem, ``n_down`` stride-2 steps are allowed: the largest ``d <= max_stages`` with
  ``ceil(S_stem / 2**d) >= 3``, i.e. the final feature map stays at least 3x3 (16 px -> 4x4,
  20/24 px -> 3x3, 32 px -> 4x4, 64 px -> 4x4, 224 px -> 7x7 with four stages);
* the stride-2 steps go to the first block of the *last* ``n_down`` active stages (stages of
  depth 0 are skipped). With fewer active stages than ``n_down`` every active stage downsamples
  and the final map stays larger; a dropped stage never leaves a hole in the resolution schedule
  of the stages after it.

Two spaces are registered: ``"trade"`` (``TradeSpace``) and ``"cnn"`` (``CnnSpace``, plain
conv-bn-relu stacks, for teachers and tests). Both offer ``build``, ``canonical``,
``estimate_params`` (exact, computed without building; ``count_params_meta`` cross-checks by
building on the meta device), ``describe`` and
``feature_layers``.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import ConvNormAct, SelectAdaptivePool2d, make_divisible, trunc_normal_
from timm.models._efficientnet_blocks import (
    DepthwiseSeparableConv,
    EdgeResidual,
    InvertedResidual,
    SqueezeExcite,
)
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import UsageError
from .base import Config, Param, SearchSpace, register_space

__all__ = [
    "CnnNet",
    "CnnSpace",
    "StagePlan",
    "TokenTransformer",
    "TradeNet",
    "TradeSpace",
    "feature_layers",
    "stride_plan",
]

# Smallest side of the final feature map the stride rule aims for; 3x3 keeps some spatial
# structure for the Transformer tokens and the head while still pooling enough context.
MIN_FINAL_SIDE = 3
# Inputs up to this side keep full resolution in the stem.
SMALL_INPUT_SIDE = 16

_ACTS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
}


def stride_plan(input_hw: tuple[int, int], max_stages: int) -> tuple[int, int]:
    """The downsampling rule: stem stride and the number of stride-2 stage steps.

    Args:
        input_hw: (H, W) of the input image.
        max_stages: number of stage slots (upper bound on the stage steps).

    Returns:
        ``(stem_stride, n_down)``: the stem stride (1 or 2) and how many stages may start with
        a stride-2 block so that the final feature map side stays >= ``MIN_FINAL_SIDE``.
    """
    side = min(int(input_hw[0]), int(input_hw[1]))
    if side < 1:
        raise UsageError(f"input size {input_hw} is empty")
    stem_stride = 1 if side <= SMALL_INPUT_SIDE else 2
    s = math.ceil(side / stem_stride)
    n_down = 0
    while n_down < max_stages and math.ceil(s / 2 ** (n_down + 1)) >= MIN_FINAL_SIDE:
        n_down += 1
    return stem_stride, n_down


def _conv_out(size: int, stride: int) -> int:
    # timm's default padding (k // 2 for odd k) gives ceil(size / stride) for every kernel here
    return math.ceil(size / stride)


def _act(name: str) -> type[nn.Module]:
    try:
        return _ACTS[name]
    except KeyError:
        raise UsageError(f"unknown activation '{name}' (known: {', '.join(_ACTS)})") from None


def _widths(base: Sequence[int], scale: float) -> tuple[int, ...]:
    # multiples of 8, as timm's make_divisible does for channels; duplicates from a small scale
    # are merged so every choice is a distinct architecture
    return tuple(sorted({int(make_divisible(w * scale, 8)) for w in base}))


def _fmt(v: float) -> str:
    # "0.25" -> ".25", "4.0" -> "4": compact numbers for describe()
    s = f"{v:g}"
    return s[1:] if s.startswith("0.") else s


def _meta_param_count(build: Any, config: Config) -> int:
    # Building on the meta device allocates no memory, so the count is exact (same code path as
    # build) and cheap; our own init is skipped because its dispatch on meta tensors took most of
    # the time of the count.
    with torch.device("meta"):
        model = build(config, init=False)
    return sum(p.numel() for p in model.parameters())


def _conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> int:
    # bias-free conv (timm's default) followed by BatchNorm (weight + bias)
    return cin // groups * cout * k * k + 2 * cout


def _se(chs: int, rd: int) -> int:
    # SqueezeExcite: 1x1 reduce and expand convs, both with bias
    return chs * rd + rd + rd * chs + chs


def _block_params(kind: str, in_chs: int, out_chs: int, kernel: int, expand: int, se: float) -> int:
    """Parameters of one conv block as ``TradeSpace._block`` builds it (timm's layer layout)."""
    rd = max(1, round(in_chs * se)) if se > 0 else 0
    if kind == "fused":  # EdgeResidual: kxk expansion conv -> SE -> 1x1 projection
        mid = int(make_divisible(in_chs * expand))
        n = _conv_bn(in_chs, mid, kernel) + _conv_bn(mid, out_chs, 1)
        return n + (_se(mid, rd) if rd else 0)
    if expand == 1:  # DepthwiseSeparableConv: dw kxk -> SE -> 1x1 projection
        n = _conv_bn(in_chs, in_chs, kernel, groups=in_chs) + _conv_bn(in_chs, out_chs, 1)
        return n + (_se(in_chs, rd) if rd else 0)
    mid = int(make_divisible(in_chs * expand))  # InvertedResidual: 1x1 -> dw kxk -> SE -> 1x1
    n = (
        _conv_bn(in_chs, mid, 1)
        + _conv_bn(mid, mid, kernel, groups=mid)
        + _conv_bn(mid, out_chs, 1)
    )
    return n + (_se(mid, rd) if rd else 0)


def _transformer_params(in_chs: int, tokens: int, depth: int, heads: int, mlp_ratio: float) -> int:
    """Parameters of ``TokenTransformer`` (timm ViT ``Block`` with qkv bias)."""
    dim = int(math.ceil(in_chs / heads) * heads)
    hidden = int(dim * mlp_ratio)
    block = 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * dim
    block += dim * hidden + hidden + hidden * dim + dim
    proj = in_chs * dim + dim if dim != in_chs else 0
    return proj + tokens * dim + depth * block + 2 * dim


def feature_layers(model: nn.Module) -> list[str]:
    """Module names whose outputs are the stage feature maps (for feature distillation).

    Args:
        model: a student built by ``TradeSpace.build`` or ``CnnSpace.build``.

    Returns:
        Names usable with ``model.get_submodule``; each module outputs (N, C_i, H_i, W_i).
    """
    names = getattr(model, "feature_names", None)
    if names is None:
        raise UsageError(
            f"{type(model).__name__} was not built by a kd-compile space (no feature_names)"
        )
    return list(names)


# ---------------------------------------------------------------------------------------------
# TRADE


@dataclass(frozen=True)
class StagePlan:
    """One resolved conv stage of a TRADE student.

    Attributes:
        index: stage slot (1-based, as in the config keys ``s{index}_*``).
        type: "fused" or "mbconv".
        depth: number of blocks (>= 1; dropped stages have no plan).
        in_chs, out_chs: channels into the first block and out of every block.
        kernel, expand, se: kernel size, expansion ratio, SE ratio (of the block input).
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
        feature_names: module names of the stage outputs (see ``feature_layers``).
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


def _init_weights(model: nn.Module) -> None:
    # EfficientNet-style fan-out init for convs and ViT-style small init for linears; explicit so
    # a student's starting point does not depend on PyTorch's default-init version.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# Channel choices per stage slot (times width_scale). The upper end grows with the stage index
# (24 -> 32 -> 48 -> 96 at four stages); every slot keeps small choices because parameters grow
# with width^2 * expansion * kernel^2 (Fused-MBConv), and a uniform draw over the unit cube must
# land often in the 10K-200K region that distillation targets for small glyph datasets.
# Measured at 24x24x1, 62 classes, 1000 random samples: 30% under 60K parameters, 75% under
# 200K, median 100K, range 3.5K-3.2M (tests/test_trade_space.py asserts >= 25% under 60K).
_STAGE_WIDTHS: tuple[tuple[int, ...], ...] = (
    (8, 16, 24),
    (8, 16, 24, 32),
    (8, 16, 24, 32, 48),
    (8, 16, 24, 32, 48, 64, 96),
    (16, 24, 32, 48, 64, 96, 128),
    (24, 32, 48, 64, 96, 128, 160),
)


@register_space("trade")
class TradeSpace(SearchSpace):
    """TRADE's search space: stem -> Fused-MBConv/MBConv stages -> Transformer -> head.

    Parameters (config keys), flat so the unit-cube encoding has a fixed dimension:

    * ``stem_width`` (choice), ``head_width`` (choice; 0 = no 1x1 head conv);
    * per stage slot ``i`` in 1..max_stages: ``s{i}_type`` (cat "fused"/"mbconv"),
      ``s{i}_depth`` (int; stage 1: 1..2 as it runs at the highest resolution, later: 0..3
      so stages can be dropped),
      ``s{i}_width`` (choice, growing with ``i``, times ``width_scale``), ``s{i}_kernel``
      (3, 5), ``s{i}_expand`` (1, 2, 4, 6), ``s{i}_se`` (0, 0.25);
    * with ``transformer=True``: ``tf_depth`` (int 0..2), ``tf_heads`` (1, 2, 4),
      ``tf_mlp_ratio`` (1, 2, 4);
    * ``kd_tau`` (float 1..8), ``kd_alpha`` (float 0.1..0.95): read by ``kd_hparams``, ignored by
      ``build`` (left out with ``search_kd=False``).

    At 24x24x1 with 62 classes, 1000 random samples span 3.5K to 3.2M parameters: 30% under
    60K, 75% under 200K, median 100K (``width_scale`` moves the whole range).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        max_stages: int = 4,
        width_scale: float = 1.0,
        transformer: bool = True,
        act: str = "silu",
        drop_rate: float = 0.1,
        drop_path_rate: float = 0.0,
        search_kd: bool = True,
    ) -> None:
        """Create the space.

        Args:
            input_shape: (C, H, W) of the student input.
            num_classes: number of logits.
            max_stages: number of conv stage slots (1..6).
            width_scale: multiplies every channel choice (rounded to multiples of 8).
            transformer: include the Transformer parameters (else never any Transformer block).
            act: activation of the conv blocks ("relu", "silu", "gelu", "hardswish").
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth rate of every residual block.
            search_kd: include ``kd_tau``/``kd_alpha`` (else every student trains with the
                defaults of ``kd_hparams``, tau 4 and alpha 0.7, and only the architecture is
                searched).
        """
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise UsageError(
                f"input_shape must be (C, H, W) with positive sizes, got {input_shape}"
            )
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        if not 1 <= max_stages <= len(_STAGE_WIDTHS):
            raise UsageError(f"max_stages must be in 1..{len(_STAGE_WIDTHS)}, got {max_stages}")
        if width_scale <= 0:
            raise UsageError(f"width_scale must be > 0, got {width_scale}")
        _act(act)
        self.max_stages = int(max_stages)
        self.width_scale = float(width_scale)
        self.transformer = bool(transformer)
        self.act = act
        self.drop_rate = float(drop_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.stem_stride, self.n_down = stride_plan(
            (input_shape[1], input_shape[2]), self.max_stages
        )

        params: list[Param] = []
        stem_w = _widths((8, 16, 24, 32), width_scale)
        params.append(
            Param("stem_width", "choice", choices=stem_w, default=stem_w[min(1, len(stem_w) - 1)])
        )
        for i in range(1, self.max_stages + 1):
            widths = _widths(_STAGE_WIDTHS[i - 1], width_scale)
            params += [
                Param(
                    f"s{i}_type",
                    "cat",
                    choices=("fused", "mbconv"),
                    default="fused" if i <= 2 else "mbconv",
                ),
                # stage 1 always exists so every student has at least one conv stage
                Param(
                    f"s{i}_depth",
                    "int",
                    low=1 if i == 1 else 0,
                    high=2 if i == 1 else 3,
                    default=1 if i <= 3 else 0,
                ),
                Param(
                    f"s{i}_width", "choice", choices=widths, default=widths[len(widths) // 2 - 1]
                ),
                Param(f"s{i}_kernel", "choice", choices=(3, 5), default=3),
                Param(f"s{i}_expand", "choice", choices=(1, 2, 4, 6), default=1 if i == 1 else 4),
                Param(f"s{i}_se", "choice", choices=(0.0, 0.25), default=0.0 if i <= 2 else 0.25),
            ]
        if self.transformer:
            params += [
                Param("tf_depth", "int", low=0, high=2, default=0),
                Param("tf_heads", "choice", choices=(1, 2, 4), default=2),
                Param("tf_mlp_ratio", "choice", choices=(1, 2, 4), default=2),
            ]
        head_w = (0, *_widths((32, 64, 128, 256), width_scale))
        params += [
            Param("head_width", "choice", choices=head_w, default=head_w[2]),
        ]
        self.search_kd = bool(search_kd)
        if self.search_kd:
            params += [
                Param("kd_tau", "float", low=1.0, high=8.0, default=4.0),
                Param("kd_alpha", "float", low=0.1, high=0.95, default=0.7),
            ]
        super().__init__(
            input_shape=tuple(int(v) for v in input_shape),
            num_classes=int(num_classes),
            params=params,
            name="trade",
        )
        self._by_name = {p.name: p for p in self.params}

    # -- canonical form ------------------------------------------------------------------------
    def canonical(self, config: Config) -> Config:
        """Set the parameters that cannot change the student to fixed defaults.

        Dropped stages (depth 0) get the defaults of their slot; with ``tf_depth == 0`` the
        Transformer parameters get theirs. Keys not in the space are dropped.

        Args:
            config: a config (possibly with extra keys).

        Returns:
            A new dict holding the space's keys that ``config`` has (normalised).
        """
        c = {p.name: config[p.name] for p in self.params if p.name in config}
        for i in range(1, self.max_stages + 1):
            if c.get(f"s{i}_depth", 1) == 0:
                for k in ("type", "width", "kernel", "expand", "se"):
                    name = f"s{i}_{k}"
                    if name in c:
                        c[name] = self._by_name[name].default
        if self.transformer and c.get("tf_depth", 1) == 0:
            for name in ("tf_heads", "tf_mlp_ratio"):
                if name in c:
                    c[name] = self._by_name[name].default
        return c

    def _full(self, config: Config) -> Config:
        # missing keys take defaults so build/describe accept partial configs (e.g. old journals)
        c = {p.name: p.default for p in self.params}
        c.update({k: v for k, v in config.items() if k in self._by_name})
        return self.canonical(c)

    # -- structure ----------------------------------------------------------------------------
    def stage_plans(self, config: Config) -> list[StagePlan]:
        """Resolve the active conv stages of ``config`` (strides by the module's rule).

        Args:
            config: a config of this space.

        Returns:
            One ``StagePlan`` per stage with depth >= 1, in order.
        """
        c = self._full(config)
        active = [i for i in range(1, self.max_stages + 1) if int(c[f"s{i}_depth"]) > 0]
        down = set(active[max(0, len(active) - self.n_down) :]) if self.n_down > 0 else set()
        h = _conv_out(self.input_shape[1], self.stem_stride)
        w = _conv_out(self.input_shape[2], self.stem_stride)
        in_chs = int(c["stem_width"])
        plans: list[StagePlan] = []
        for i in active:
            stride = 2 if i in down else 1
            h, w = _conv_out(h, stride), _conv_out(w, stride)
            out = int(c[f"s{i}_width"])
            plans.append(
                StagePlan(
                    index=i,
                    type=str(c[f"s{i}_type"]),
                    depth=int(c[f"s{i}_depth"]),
                    in_chs=in_chs,
                    out_chs=out,
                    kernel=int(c[f"s{i}_kernel"]),
                    expand=int(c[f"s{i}_expand"]),
                    se=float(c[f"s{i}_se"]),
                    stride=stride,
                    out_hw=(h, w),
                )
            )
            in_chs = out
        return plans

    def _block(self, p: StagePlan, in_chs: int, stride: int) -> nn.Module:
        act = _act(self.act)
        # SE width from the block input (EfficientNet's convention), not from the expanded
        # channels, so SE stays a small fraction of the block
        se = partial(SqueezeExcite, rd_channels=max(1, round(in_chs * p.se))) if p.se > 0 else None
        common: dict[str, Any] = {
            "stride": stride,
            "act_layer": act,
            "se_layer": se,
            "drop_path_rate": self.drop_path_rate,
        }
        if p.type == "fused":
            return EdgeResidual(
                in_chs, p.out_chs, exp_kernel_size=p.kernel, exp_ratio=p.expand, **common
            )
        if p.expand == 1:
            # EfficientNet uses a depthwise-separable block for MBConv e1: the 1x1 expansion
            # conv of InvertedResidual would be a square matrix that adds nothing
            return DepthwiseSeparableConv(in_chs, p.out_chs, dw_kernel_size=p.kernel, **common)
        return InvertedResidual(
            in_chs, p.out_chs, dw_kernel_size=p.kernel, exp_ratio=p.expand, **common
        )

    def build(self, config: Config, init: bool = True) -> TradeNet:
        """Build the student of ``config``.

        Args:
            config: a config of this space (``kd_*`` keys are ignored).
            init: apply the explicit weight init (False keeps the layers' own defaults; used
                when only the structure matters, e.g. counting on the meta device).

        Returns:
            A ``TradeNet`` mapping (N, C, H, W) float to (N, num_classes) logits; its weights are
            a deterministic function of the torch RNG state.
        """
        c = self._full(config)
        act = _act(self.act)
        stem = ConvNormAct(
            self.input_shape[0], int(c["stem_width"]), 3, stride=self.stem_stride, act_layer=act
        )
        plans = self.stage_plans(c)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for p in plans:
            blocks = [
                self._block(p, p.in_chs if j == 0 else p.out_chs, p.stride if j == 0 else 1)
                for j in range(p.depth)
            ]
            stages[f"s{p.index}"] = nn.Sequential(*blocks)
        feat = plans[-1].out_chs
        tf: TokenTransformer | None = None
        if self.transformer and int(c["tf_depth"]) > 0:
            tf = TokenTransformer(
                feat,
                plans[-1].out_hw,
                int(c["tf_depth"]),
                int(c["tf_heads"]),
                float(c["tf_mlp_ratio"]),
                drop_path_rate=self.drop_path_rate,
            )
            feat = tf.dim
        head_w = int(c["head_width"])
        head: nn.Module = nn.Identity()
        if head_w > 0:
            head = ConvNormAct(feat, head_w, 1, act_layer=act)
            feat = head_w
        model = TradeNet(
            stem, nn.Sequential(stages), tf, head, feat, self.num_classes, self.drop_rate, plans
        )
        if init:
            _init_weights(model)
        return model

    # -- cheap summaries ----------------------------------------------------------------------
    def estimate_params(self, config: Config) -> int:
        """Exact parameter count of ``build(config)``, computed without building (~0.3 ms).

        The count follows timm's layer layout; tests compare it with built students, and
        ``count_params_meta`` gives the same number by building on the meta device (~50 ms).
        """
        c = self._full(config)
        plans = self.stage_plans(c)
        n = _conv_bn(self.input_shape[0], int(c["stem_width"]), 3)
        for p in plans:
            n += _block_params(p.type, p.in_chs, p.out_chs, p.kernel, p.expand, p.se)
            n += (p.depth - 1) * _block_params(
                p.type, p.out_chs, p.out_chs, p.kernel, p.expand, p.se
            )
        feat = plans[-1].out_chs
        if self.transformer and int(c["tf_depth"]) > 0:
            h, w = plans[-1].out_hw
            n += _transformer_params(
                feat, h * w, int(c["tf_depth"]), int(c["tf_heads"]), float(c["tf_mlp_ratio"])
            )
            feat = int(math.ceil(feat / int(c["tf_heads"])) * int(c["tf_heads"]))
        head_w = int(c["head_width"])
        if head_w > 0:
            n += _conv_bn(feat, head_w, 1)
            feat = head_w
        return n + feat * self.num_classes + self.num_classes

    def count_params_meta(self, config: Config) -> int:
        """Parameter count by building ``config`` on the meta device (no weights allocated)."""
        return _meta_param_count(self.build, config)

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Module names of the stage outputs of a built student (see ``feature_layers``)."""
        return feature_layers(model)

    def describe(self, config: Config) -> str:
        """Compact architecture string, e.g. ``stem16 | FMB24x1 k3 e1 | MB64x2 k5 e4 se.25 /2 | T1 h2 m2 | head128``.

        A stage reads ``{FMB|MB}{width}x{depth} k{kernel} e{expand}[ se{ratio}][ /2]`` where
        ``/2`` marks a stage that starts with a stride-2 block.
        """
        c = self._full(config)
        parts = [f"stem{c['stem_width']}" + (" /2" if self.stem_stride == 2 else "")]
        for p in self.stage_plans(c):
            s = f"{'FMB' if p.type == 'fused' else 'MB'}{p.out_chs}x{p.depth} k{p.kernel} e{p.expand}"
            if p.se > 0:
                s += f" se{_fmt(p.se)}"
            if p.stride == 2:
                s += " /2"
            parts.append(s)
        if self.transformer and int(c["tf_depth"]) > 0:
            parts.append(f"T{c['tf_depth']} h{c['tf_heads']} m{_fmt(float(c['tf_mlp_ratio']))}")
        parts.append(f"head{c['head_width']}" if int(c["head_width"]) > 0 else "head-")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(
            max_stages=self.max_stages,
            width_scale=self.width_scale,
            transformer=self.transformer,
            act=self.act,
            drop_rate=self.drop_rate,
            drop_path_rate=self.drop_path_rate,
            stem_stride=self.stem_stride,
            n_down=self.n_down,
        )
        return d


# ---------------------------------------------------------------------------------------------
# plain CNN


class CnnNet(nn.Module):
    """conv3x3-bn-relu layers -> global average pool -> linear.

    Attributes:
        feature_names: module names of the layer outputs.
    """

    def __init__(
        self, layers: nn.Sequential, num_features: int, num_classes: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layers = layers
        self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)
        self.feature_names = [f"layers.{name}" for name, _ in layers.named_children()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W) float. Returns logits (N, num_classes)."""
        return self.fc(self.drop(self.pool(self.layers(x))))


@register_space("cnn")
class CnnSpace(SearchSpace):
    """Plain conv-bn-relu stacks: ``depth`` layers of widths ``w1..w{depth}``.

    Layer ``i`` is conv3x3 (stride 1 or 2) -> BatchNorm -> ReLU. The stride rule is the TRADE
    one without a stem: the last ``n_down`` layers have stride 2, ``n_down`` being the most
    halvings that keep the final side >= ``MIN_FINAL_SIDE``, at most ``depth - 1`` so the first
    layer always sees full resolution.
    ``kd_tau``/``kd_alpha`` are carried as in the TRADE space.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        max_depth: int = 5,
        width_scale: float = 1.0,
        drop_rate: float = 0.0,
    ) -> None:
        """Create the space.

        Args:
            input_shape: (C, H, W) of the input.
            num_classes: number of logits.
            max_depth: most conv layers (1..8).
            width_scale: multiplies every width choice (rounded to multiples of 8).
            drop_rate: dropout before the classifier.
        """
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise UsageError(
                f"input_shape must be (C, H, W) with positive sizes, got {input_shape}"
            )
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        if not 1 <= max_depth <= 8:
            raise UsageError(f"max_depth must be in 1..8, got {max_depth}")
        if width_scale <= 0:
            raise UsageError(f"width_scale must be > 0, got {width_scale}")
        self.max_depth = int(max_depth)
        self.width_scale = float(width_scale)
        self.drop_rate = float(drop_rate)
        widths = _widths((8, 16, 32, 64, 128, 256), width_scale)
        params = [Param("depth", "int", low=1, high=self.max_depth, default=min(3, self.max_depth))]
        params += [
            Param(f"w{i}", "choice", choices=widths, default=widths[min(len(widths) - 1, i)])
            for i in range(1, self.max_depth + 1)
        ]
        params += [
            Param("kd_tau", "float", low=1.0, high=8.0, default=4.0),
            Param("kd_alpha", "float", low=0.1, high=0.95, default=0.7),
        ]
        super().__init__(
            input_shape=tuple(int(v) for v in input_shape),
            num_classes=int(num_classes),
            params=params,
            name="cnn",
        )
        self._by_name = {p.name: p for p in self.params}

    def canonical(self, config: Config) -> Config:
        """Widths of layers beyond ``depth`` take their defaults; unknown keys are dropped."""
        c = {p.name: config[p.name] for p in self.params if p.name in config}
        depth = int(c.get("depth", self.max_depth))
        for i in range(depth + 1, self.max_depth + 1):
            if f"w{i}" in c:
                c[f"w{i}"] = self._by_name[f"w{i}"].default
        return c

    def _full(self, config: Config) -> Config:
        c = {p.name: p.default for p in self.params}
        c.update({k: v for k, v in config.items() if k in self._by_name})
        return self.canonical(c)

    def strides(self, config: Config) -> list[int]:
        """Stride of each layer of ``config`` (the last ``n_down`` layers, never the first)."""
        depth = int(self._full(config)["depth"])
        side = min(self.input_shape[1], self.input_shape[2])
        n_down = 0
        while n_down < depth - 1 and math.ceil(side / 2 ** (n_down + 1)) >= MIN_FINAL_SIDE:
            n_down += 1
        return [2 if i >= depth - n_down else 1 for i in range(depth)]

    def build(self, config: Config, init: bool = True) -> CnnNet:
        """Build the CNN of ``config``: (N, C, H, W) float -> (N, num_classes) logits.

        Args:
            config: a config of this space (``kd_*`` keys are ignored).
            init: apply the explicit weight init (False keeps the layers' own defaults).
        """
        c = self._full(config)
        in_chs = self.input_shape[0]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, stride in enumerate(self.strides(c), start=1):
            out = int(c[f"w{i}"])
            layers[f"l{i}"] = ConvNormAct(in_chs, out, 3, stride=stride, act_layer=nn.ReLU)
            in_chs = out
        model = CnnNet(nn.Sequential(layers), in_chs, self.num_classes, self.drop_rate)
        if init:
            _init_weights(model)
        return model

    def estimate_params(self, config: Config) -> int:
        """Exact parameter count of ``build(config)``, computed without building."""
        c = self._full(config)
        widths = [self.input_shape[0]] + [int(c[f"w{i}"]) for i in range(1, int(c["depth"]) + 1)]
        n = sum(_conv_bn(a, b, 3) for a, b in itertools.pairwise(widths))
        return n + widths[-1] * self.num_classes + self.num_classes

    def count_params_meta(self, config: Config) -> int:
        """Parameter count by building ``config`` on the meta device (no weights allocated)."""
        return _meta_param_count(self.build, config)

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Module names of the layer outputs of a built CNN."""
        return feature_layers(model)

    def describe(self, config: Config) -> str:
        """E.g. ``conv16 | conv32 /2 | conv64 /2``."""
        c = self._full(config)
        return " | ".join(
            f"conv{c[f'w{i}']}" + (" /2" if s == 2 else "")
            for i, s in enumerate(self.strides(c), start=1)
        )

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(max_depth=self.max_depth, width_scale=self.width_scale, drop_rate=self.drop_rate)
        return d
