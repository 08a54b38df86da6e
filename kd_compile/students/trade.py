"""TRADE's search space: stem -> conv stages -> Transformer -> head.

The TRADE paper (Kim et al., "Trust Region Aware architecture search to Distill knowledge
Effectively") searches ``Stem Conv -> Fused-MBConv & MBConv -> Transformer``: convolutions do
the early visual processing, optional Transformer blocks sit between the conv backbone and the
head. Per stage it searches block type, depth, width, kernel, expansion and SE ratio.
``TradeSpace`` is that space as a flat list of parameters, so a GP sees a fixed-dimension
encoding; the network it builds lives in ``students/trade_net.py``.

Beside TRADE's depthwise/SE-heavy Fused-MBConv and MBConv, a stage may use dense 3x3 blocks that
are fast on GPUs at batch 1 (few, large kernels; 3x3 is the kernel cuDNN and TensorRT run
fastest, with Winograd): a plain conv, a ResNet basic block and a RepVGG block (three branches
while training, one conv once folded). Costs count the *deployed* form
(RepVGG folded, ``common.deployed``), which is what ships: ``deployed_params`` is the count that
``--max-params`` limits; ``estimate_params`` counts the model ``build`` returns (training form).

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

Width rule (``auto_width_scale``), so that a params limit sized for photos proposes students of
that size: with ``width_scale=None`` (the default) every channel choice is multiplied by
``clip(S / 112, 1, 2)``. Inputs up to 112 px (the glyphs, CIFAR, 64 px folders) keep the
widths, hence the configs, they had before the rule; 224 px doubles them. Measured at
224x224x3 with 1000 classes, 400 seeded samples: median 0.49M deployed parameters (10%-90%:
0.16M-1.3M, 99% within 4M), and a median of 310 MFLOPs (forward, 2 x MACs) over the first 12
samples within 4M; with the glyph widths the median was 0.18M parameters and 83 MFLOPs, a
twentieth of a ``--max-params 4M`` budget.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from timm.layers import ConvNormAct
from torch import nn

from ..errors import UsageError
from ..search.space import Config, Param
from .base import StudentSpace, register_space
from .common import (
    MIN_FINAL_SIDE,
    channel_choices,
    conv_bn_params,
    feature_layers,
    init_weights,
    meta_param_count,
)
from .trade_net import (
    BLOCK_TAGS,
    BLOCK_TYPES,
    DENSE_KERNEL,
    DENSE_TYPES,
    StagePlan,
    TokenTransformer,
    TradeNet,
    act_layer,
    block_params,
    conv_block,
    transformer_params,
)

__all__ = ["SMALL_INPUT_SIDE", "TradeSpace", "auto_width_scale", "stride_plan"]

# Inputs up to this side keep full resolution in the stem.
SMALL_INPUT_SIDE = 16


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


# Inputs up to this side keep the glyph widths; wider inputs grow them linearly, up to
# ``MAX_AUTO_WIDTH_SCALE`` (reached at 224 px).
WIDTH_REFERENCE_SIDE = 112
MAX_AUTO_WIDTH_SCALE = 2.0


def auto_width_scale(input_hw: tuple[int, int]) -> float:
    """The width multiplier of an input size: ``clip(min(H, W) / 112, 1, 2)``.

    Photos need wider students than glyphs (more classes and more detail per image, and a
    params limit in millions): 224 px doubles every channel choice, while inputs up to 112 px
    keep the widths the space was tuned on (see the module docstring for measured figures).
    """
    side = min(int(input_hw[0]), int(input_hw[1]))
    return min(MAX_AUTO_WIDTH_SCALE, max(1.0, side / WIDTH_REFERENCE_SIDE))


def _conv_out(size: int, stride: int) -> int:
    # timm's default padding (k // 2 for odd k) gives ceil(size / stride) for every kernel here
    return math.ceil(size / stride)


def _fmt(v: float) -> str:
    # "0.25" -> ".25", "4.0" -> "4": compact numbers for describe()
    s = f"{v:g}"
    return s[1:] if s.startswith("0.") else s


# Channel choices per stage slot (times width_scale). The upper end grows with the stage index
# (24 -> 32 -> 48 -> 96 at four stages); every slot keeps small choices because parameters grow
# with width^2 * expansion * kernel^2 (Fused-MBConv), and a uniform draw over the unit cube must
# land often in the 10K-200K region that distillation targets for small glyph datasets.
# Measured at 24x24x1, 62 classes, 1000 random samples over the five block types: 33% under 60K
# parameters, 77% under 200K, median 99K, range 3.4K-1.8M (tests/students/test_trade_space.py
# asserts >= 25% under 60K).
_STAGE_WIDTHS: tuple[tuple[int, ...], ...] = (
    (8, 16, 24),
    (8, 16, 24, 32),
    (8, 16, 24, 32, 48),
    (8, 16, 24, 32, 48, 64, 96),
    (16, 24, 32, 48, 64, 96, 128),
    (24, 32, 48, 64, 96, 128, 160),
)


@register_space("trade")
class TradeSpace(StudentSpace):
    """TRADE's search space: stem -> conv stages -> Transformer -> head.

    Parameters (config keys), flat so the unit-cube encoding has a fixed dimension:

    * ``stem_width`` (choice), ``head_width`` (choice; 0 = no 1x1 head conv);
    * per stage slot ``i`` in 1..max_stages: ``s{i}_type`` (cat over ``block_types``:
      "fused" Fused-MBConv, "mbconv" MBConv, "conv" plain 3x3 conv, "residual" ResNet basic
      block, "repvgg" RepVGG block), ``s{i}_depth`` (int; stage 1: 1..2 as it runs at the
      highest resolution, later: 0..3 so stages can be dropped),
      ``s{i}_width`` (choice, growing with ``i``, times ``width_scale``), ``s{i}_kernel``
      (3, 5), ``s{i}_expand`` (1, 2, 4, 6), ``s{i}_se`` (0, 0.25); the dense types (conv,
      residual, repvgg) are always 3x3, without expansion or SE, so ``canonical`` fixes those
      three;
    * with ``transformer=True``: ``tf_depth`` (int 0..2), ``tf_heads`` (1, 2, 4),
      ``tf_mlp_ratio`` (1, 2, 4).

    Counts: ``estimate_params`` is the exact count of the model ``build`` returns (the training
    form: a RepVGG block has its 3x3, 1x1 and identity branches); ``deployed_params`` is the
    exact count once RepVGG blocks are folded into one conv each (``common.deployed``), which is
    what is exported, so it is what ``--max-params`` limits (candidates' params, FLOPs and
    latency are all measured on the folded student). The two differ only for RepVGG.

    At 24x24x1 with 62 classes, 1000 random samples span 3.4K to 1.8M parameters: 33% under
    60K, 77% under 200K, median 99K (``width_scale`` moves the whole range). At 224x224x3 with
    1000 classes the automatic width scale (2) gives a median of 0.49M, 99% within 4M.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        max_stages: int = 4,
        width_scale: float | None = None,
        transformer: bool = True,
        act: str = "silu",
        drop_rate: float = 0.1,
        drop_path_rate: float = 0.0,
        block_types: Sequence[str] = BLOCK_TYPES,
    ) -> None:
        """Create the space.

        Args:
            input_shape: (C, H, W) of the student input.
            num_classes: number of logits.
            max_stages: number of conv stage slots (1..6).
            width_scale: multiplies every channel choice (rounded to multiples of 8); None: the
                resolution's ``auto_width_scale`` (1 up to 112 px, 2 at 224 px).
            transformer: include the Transformer parameters (else never any Transformer block).
            act: activation of the conv blocks ("relu", "silu", "gelu", "hardswish").
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth rate of every residual block.
            block_types: the stage block types to search (a subset of ``BLOCK_TYPES``, in that
                order in the encoding); ``("fused", "mbconv")`` is the original TRADE space
                (33 coordinates at four stages with the Transformer).
        """
        if not 1 <= max_stages <= len(_STAGE_WIDTHS):
            raise UsageError(f"max_stages must be in 1..{len(_STAGE_WIDTHS)}, got {max_stages}")
        if width_scale is None:
            hw = tuple(input_shape)[1:3]
            width_scale = auto_width_scale((int(hw[0]), int(hw[1]))) if len(hw) == 2 and min(hw) >= 1 else 1.0
        if width_scale <= 0:
            raise UsageError(f"width_scale must be > 0, got {width_scale}")
        act_layer(act)
        unknown = [t for t in block_types if t not in BLOCK_TYPES]
        if not block_types or unknown or len(set(block_types)) != len(block_types):
            raise UsageError(
                f"block_types must be distinct names from {', '.join(BLOCK_TYPES)}, got {list(block_types)}"
            )
        # the canonical encoding order, whatever order the caller gave
        self.block_types = tuple(t for t in BLOCK_TYPES if t in block_types)
        self.max_stages = int(max_stages)
        self.width_scale = float(width_scale)
        self.transformer = bool(transformer)
        self.act = act
        self.drop_rate = float(drop_rate)
        self.drop_path_rate = float(drop_path_rate)

        params: list[Param] = []
        stem_w = channel_choices((8, 16, 24, 32), width_scale)
        params.append(
            Param("stem_width", "choice", choices=stem_w, default=stem_w[min(1, len(stem_w) - 1)])
        )
        for i in range(1, self.max_stages + 1):
            widths = channel_choices(_STAGE_WIDTHS[i - 1], width_scale)
            type_default = "fused" if i <= 2 else "mbconv"
            params += [
                Param(
                    f"s{i}_type",
                    "cat",
                    choices=self.block_types,
                    default=type_default if type_default in self.block_types else self.block_types[0],
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
        head_w = (0, *channel_choices((32, 64, 128, 256), width_scale))
        params += [
            Param("head_width", "choice", choices=head_w, default=head_w[2]),
        ]
        # StudentSpace checks input_shape and num_classes, so the stride rule runs after it
        super().__init__(input_shape, num_classes, params, name="trade")
        self.stem_stride, self.n_down = stride_plan((self.input_shape[1], self.input_shape[2]), self.max_stages)

    # -- canonical form ------------------------------------------------------------------------
    def canonical(self, config: Config) -> Config:
        """Set the parameters that cannot change the student to fixed defaults.

        Dropped stages (depth 0) get the defaults of their slot; stages of a dense type (conv,
        residual, repvgg) get the slot's default kernel, expansion and SE ratio (they are always
        3x3, with no expansion and no SE); with ``tf_depth == 0`` the Transformer parameters get theirs.
        Keys not in the space are dropped.

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
                        c[name] = self.param(name).default
            elif c.get(f"s{i}_type") in DENSE_TYPES:
                for k in ("kernel", "expand", "se"):
                    name = f"s{i}_{k}"
                    if name in c:
                        c[name] = self.param(name).default
        if self.transformer and c.get("tf_depth", 1) == 0:
            for name in ("tf_heads", "tf_mlp_ratio"):
                if name in c:
                    c[name] = self.param(name).default
        return c


    # -- structure ----------------------------------------------------------------------------
    def stage_plans(self, config: Config) -> list[StagePlan]:
        """Resolve the active conv stages of ``config`` (strides by the module's rule).

        Args:
            config: a config of this space.

        Returns:
            One ``StagePlan`` per stage with depth >= 1, in order.
        """
        c = self.complete(config)
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
            kind = str(c[f"s{i}_type"])
            plans.append(
                StagePlan(
                    index=i,
                    type=kind,
                    depth=int(c[f"s{i}_depth"]),
                    in_chs=in_chs,
                    out_chs=out,
                    kernel=DENSE_KERNEL if kind in DENSE_TYPES else int(c[f"s{i}_kernel"]),
                    expand=int(c[f"s{i}_expand"]),
                    se=float(c[f"s{i}_se"]),
                    stride=stride,
                    out_hw=(h, w),
                )
            )
            in_chs = out
        return plans

    def build(self, config: Config, init: bool = True) -> TradeNet:
        """Build the student of ``config``.

        Args:
            config: a config of this space (keys outside the space are ignored).
            init: apply the explicit weight init (False keeps the layers' own defaults; used
                when only the structure matters, e.g. counting on the meta device).

        Returns:
            A ``TradeNet`` mapping (N, C, H, W) float to (N, num_classes) logits; its weights are
            a deterministic function of the torch RNG state.
        """
        c = self.complete(config)
        act = act_layer(self.act)
        stem = ConvNormAct(
            self.input_shape[0], int(c["stem_width"]), 3, stride=self.stem_stride, act_layer=act
        )
        plans = self.stage_plans(c)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for p in plans:
            blocks = [
                conv_block(p, p.in_chs if j == 0 else p.out_chs, p.stride if j == 0 else 1, act, self.drop_path_rate)
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
            init_weights(model)
        return model

    # -- cheap summaries ----------------------------------------------------------------------
    def estimate_params(self, config: Config) -> int:
        """Exact parameter count of ``build(config)`` (training form), without building (~0.3 ms).

        The count follows timm's layer layout; tests compare it with built students, and
        ``count_params_meta`` gives the same number by building on the meta device (~50 ms).
        A RepVGG stage counts its three training branches; see ``deployed_params``.
        """
        return self._count(config, deployed=False)

    def deployed_params(self, config: Config) -> int:
        """Exact parameter count of the deployed student: ``common.deployed(build(config))``.

        RepVGG blocks count as the one 3x3 conv with bias they fold into; every other block
        is the same as in ``estimate_params``. This is the count ``--max-params`` limits.
        """
        return self._count(config, deployed=True)

    def _count(self, config: Config, deployed: bool) -> int:
        c = self.complete(config)
        plans = self.stage_plans(c)
        n = conv_bn_params(self.input_shape[0], int(c["stem_width"]), 3)
        for p in plans:
            kw = {"kernel": p.kernel, "expand": p.expand, "se": p.se, "deployed": deployed}
            n += block_params(p.type, p.in_chs, p.out_chs, stride=p.stride, **kw)
            n += (p.depth - 1) * block_params(p.type, p.out_chs, p.out_chs, stride=1, **kw)
        feat = plans[-1].out_chs
        if self.transformer and int(c["tf_depth"]) > 0:
            h, w = plans[-1].out_hw
            n += transformer_params(
                feat, h * w, int(c["tf_depth"]), int(c["tf_heads"]), float(c["tf_mlp_ratio"])
            )
            feat = int(math.ceil(feat / int(c["tf_heads"])) * int(c["tf_heads"]))
        head_w = int(c["head_width"])
        if head_w > 0:
            n += conv_bn_params(feat, head_w, 1)
            feat = head_w
        return n + feat * self.num_classes + self.num_classes

    def count_params_meta(self, config: Config) -> int:
        """Parameter count by building ``config`` on the meta device (no weights allocated)."""
        return meta_param_count(self.build, config)

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Module names of the stage outputs of a built student (see ``common.feature_layers``)."""
        return feature_layers(model)

    def describe(self, config: Config) -> str:
        """Compact architecture string, e.g. ``stem16 | FMB24x1 k3 e1 | RV32x2 /2 | T1 h2 m2 | head128``.

        A Fused-MBConv/MBConv stage reads ``{FMB|MB}{width}x{depth} k{kernel} e{expand}[ se{ratio}]``,
        a dense 3x3 stage ``{C|R|RV}{width}x{depth}`` (plain conv, residual basic block, RepVGG
        block); `` /2`` marks a stage that starts with a stride-2 block.
        """
        c = self.complete(config)
        parts = [f"stem{c['stem_width']}" + (" /2" if self.stem_stride == 2 else "")]
        for p in self.stage_plans(c):
            s = f"{BLOCK_TAGS[p.type]}{p.out_chs}x{p.depth}"
            if p.type not in DENSE_TYPES:
                s += f" k{p.kernel} e{p.expand}" + (f" se{_fmt(p.se)}" if p.se > 0 else "")
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
            block_types=list(self.block_types),
            stem_stride=self.stem_stride,
            n_down=self.n_down,
        )
        return d
