"""The teacher's own family as a search space: ``--space teacher-family`` (AutoKD's idea).

AutoKD (Kang et al., "Towards Oracle Knowledge Distillation with Neural Architecture Search")
searches students *within a family* rather than over arbitrary cells; for a timm teacher the
natural family is the teacher's own architecture at other depth and width multipliers:

* a ResNet teacher (timm ``ResNet``: resnet18/34/50, resnet*d, resnext, seresnet, ...) gives
  ResNets with the same block, stem and shortcut style, ``d{i}`` blocks in stage ``i`` (1 up to
  the teacher's count) and channels ``(64, 128, 256, 512)`` (and the stem) times ``width``;
* an EfficientNet teacher (``efficientnet_b0..b8``, ``tf_efficientnet_b0..b8``) gives
  EfficientNets with the same seven MBConv stages (kernels, expansions, SE, strides), ``d{i}``
  blocks in stage ``i`` (1 up to the teacher's repeats, i.e. the B0 repeats scaled by the
  teacher's depth coefficient) and the teacher's width coefficient times ``width``; the stem
  and head (1280) scale with the width as in timm's ``_gen_efficientnet``.

The space's parameters are ``d1..d{n}`` (ints) and ``width`` (a choice of multipliers <= 1), so
every student is at most the teacher. Students are built with timm's own classes
(``timm.models.resnet.ResNet``, ``timm.models.efficientnet.EfficientNet`` with
``decode_arch_def``), keep the teacher's downsampling (so the teacher's input resolution serves
them too) and expose their stage outputs as ``feature_names`` for feature distillation.

Where a student departs from its teacher: attention other than SE/ECA in a ResNet block is not
carried over; a tiered deep stem becomes timm's plain deep stem; a ``tf_`` EfficientNet's
TensorFlow "same" padding and BatchNorm epsilon become timm's PyTorch defaults (the student is
trained from scratch, so only the shape matters).

The space rebuilds from its arguments (``teacher_arch`` is a timm model name), as every family
does, so a candidate trained in another process or a saved ``student.pt`` rebuilds exactly;
``from_teacher`` finds that name from a loaded teacher and refuses, with a ``UsageError``, a
teacher that is not a timm ResNet or EfficientNet.
"""

from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..search.space import Config, Param
from .base import StudentSpace, register_space
from .common import meta_param_count

__all__ = ["EFFICIENTNET_COEFFICIENTS", "WIDTH_CHOICES", "TimmFamilySpace", "teacher_timm_arch"]

# Width multipliers relative to the teacher, smallest first (the all-low corner is the smallest
# student, which ``inputs.check_feasible`` tries first).
WIDTH_CHOICES: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 1.0)

# EfficientNet's compound coefficients (width, depth) per variant, from the paper's Table
# (as in timm's ``_gen_efficientnet`` docstring).
EFFICIENTNET_COEFFICIENTS: dict[int, tuple[float, float]] = {
    0: (1.0, 1.0),
    1: (1.0, 1.1),
    2: (1.1, 1.2),
    3: (1.2, 1.4),
    4: (1.4, 1.8),
    5: (1.6, 2.2),
    6: (1.8, 2.6),
    7: (2.0, 3.1),
    8: (2.2, 3.6),
}
# EfficientNet-B0's stages (timm's ``_gen_efficientnet``) without their repeats: block, kernel,
# stride, expansion, channels, SE ratio; and the B0 repeats.
_EFFNET_STAGES: tuple[str, ...] = (
    "ds_r{}_k3_s1_e1_c16_se0.25",
    "ir_r{}_k3_s2_e6_c24_se0.25",
    "ir_r{}_k5_s2_e6_c40_se0.25",
    "ir_r{}_k3_s2_e6_c80_se0.25",
    "ir_r{}_k5_s1_e6_c112_se0.25",
    "ir_r{}_k5_s2_e6_c192_se0.25",
    "ir_r{}_k3_s1_e6_c320_se0.25",
)
_EFFNET_REPEATS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
_EFFNET_RE = re.compile(r"^(?:tf_)?efficientnet_b(\d)$")
_RESNET_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)


def _fmt(v: float) -> str:
    s = f"{v:g}"
    return s[1:] if s.startswith("0.") else s


def teacher_timm_arch(teacher: Any) -> str | None:
    """The timm model name a loaded teacher was built from, or None.

    Read from the teacher's metadata (``arch``: ``timm:<name>`` and state_dict/safetensors
    teachers record it), else from the module's timm ``pretrained_cfg`` (a pickled timm model).
    A pretrained tag (``resnet50.a1_in1k``) is dropped.
    """
    meta = getattr(teacher, "meta", None) or {}
    arch = meta.get("arch")
    if not arch:
        module = getattr(teacher, "module", teacher)
        cfg = getattr(module, "pretrained_cfg", None) or {}
        arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return str(arch).split(".")[0] if arch else None


def _resnet_spec(arch: str) -> dict[str, Any] | None:
    """The structure of timm ResNet ``arch`` (built on the meta device), or None if not a ResNet."""
    import timm
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False)
    except Exception:  # noqa: BLE001 (an unknown or unbuildable name is simply not a ResNet)
        return None
    if type(model) is not ResNet:
        return None
    first = model.layer1[0]
    if type(first) not in (BasicBlock, Bottleneck):
        return None
    spec: dict[str, Any] = {
        "block": type(first).__name__,
        "layers": [len(getattr(model, f"layer{i}")) for i in range(1, 5)],
        "cardinality": 1,
        "base_width": 64,
        "stem_type": "",
        "stem_width": 64,
        "avg_down": False,
        "attn": "",
    }
    if isinstance(first, Bottleneck):
        groups = int(first.conv2.groups)
        spec["cardinality"] = groups
        spec["base_width"] = int(first.conv1.out_channels) // groups
    if isinstance(model.conv1, nn.Sequential):
        spec["stem_type"] = "deep"
        spec["stem_width"] = int(model.conv1[0].out_channels)
    down = model.layer2[0].downsample
    spec["avg_down"] = isinstance(down, nn.Sequential) and isinstance(down[0], nn.AvgPool2d)
    attn = type(getattr(first, "se", None)).__name__
    spec["attn"] = {"SEModule": "se", "EcaModule": "eca"}.get(attn, "")
    return spec


def _family_of(arch: str) -> tuple[str, dict[str, Any]]:
    """("resnet" | "efficientnet", structure) of timm ``arch``.

    Raises:
        UsageError: ``arch`` is not a timm ResNet or EfficientNet-B0..B8.
    """
    m = _EFFNET_RE.match(arch)
    if m and int(m.group(1)) in EFFICIENTNET_COEFFICIENTS:
        cm, dm = EFFICIENTNET_COEFFICIENTS[int(m.group(1))]
        return "efficientnet", {
            "channel_multiplier": cm,
            "repeats": [int(math.ceil(r * dm)) for r in _EFFNET_REPEATS],
        }
    spec = _resnet_spec(arch)
    if spec is None:
        raise UsageError(
            f"--space teacher-family needs a timm ResNet or EfficientNet-B0..B8 teacher, got '{arch}'"
        )
    return "resnet", spec


@register_space("teacher-family")
class TimmFamilySpace(StudentSpace):
    """The teacher's timm family at smaller depths and widths (see the module docstring).

    Parameters: ``d1..d{n}`` (blocks per stage, 1 up to the teacher's; n = 4 for a ResNet, 7
    for an EfficientNet) and ``width`` (a multiplier of the teacher's channels, 0.25..1).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        teacher_arch: str = "resnet18",
        drop_rate: float = 0.0,
    ) -> None:
        """Create the space.

        Args:
            input_shape: (C, H, W) of the student input (the teacher's).
            num_classes: number of logits.
            teacher_arch: the teacher's timm model name (a pretrained tag is ignored); the
                default lets the space be created without a teacher (conformance tests).
            drop_rate: dropout before the classifier.

        Raises:
            UsageError: ``teacher_arch`` is not a timm ResNet or EfficientNet-B0..B8.
        """
        arch = str(teacher_arch).split(".")[0]
        self.teacher_arch = arch
        self.drop_rate = float(drop_rate)
        self.kind, self.spec = _family_of(arch)
        depths = self.spec["layers"] if self.kind == "resnet" else self.spec["repeats"]
        params = [
            Param(f"d{i}", "int", low=1, high=int(n), default=max(1, int(n) // 2))
            for i, n in enumerate(depths, start=1)
        ]
        params.append(Param("width", "choice", choices=WIDTH_CHOICES, default=0.5))
        super().__init__(input_shape, num_classes, params, name="teacher-family")
        self._counts: dict[str, int] = {}

    @classmethod
    def from_teacher(cls, teacher: Any, **kwargs: Any) -> TimmFamilySpace:
        """The family of a loaded teacher (``kd_compile.teacher.Teacher``).

        Raises:
            UsageError: the teacher records no timm architecture, or not a ResNet/EfficientNet.
        """
        arch = teacher_timm_arch(teacher)
        if arch is None:
            raise UsageError(
                "--space teacher-family needs a timm teacher (timm:<name>, or weights with --arch); "
                "this teacher records no timm architecture"
            )
        return cls(tuple(teacher.input_shape), int(teacher.num_classes), teacher_arch=arch, **kwargs)

    # -- structure ----------------------------------------------------------------------------
    def depths(self, config: Config) -> list[int]:
        """Blocks per stage of ``config``."""
        c = self.complete(config)
        return [int(c[p.name]) for p in self.params if p.name != "width"]

    def build(self, config: Config, init: bool = True) -> nn.Module:
        """The student of ``config``: (N, C, H, W) float -> (N, num_classes) logits.

        Args:
            config: a config of this space (keys outside the space are ignored).
            init: accepted for the families' common signature; timm initialises its models in
                their constructor, a deterministic function of the torch RNG state.
        """
        c = self.complete(config)
        width = float(c["width"])
        if self.kind == "resnet":
            model = self._build_resnet(self.depths(c), width)
            model.feature_names = [f"layer{i}" for i in range(1, 5)]  # type: ignore[assignment]
        else:
            model = self._build_efficientnet(self.depths(c), width)
            model.feature_names = [f"blocks.{i}" for i in range(len(model.blocks))]  # type: ignore[assignment]
        return model

    def _build_resnet(self, depths: list[int], width: float) -> nn.Module:
        from timm.layers import make_divisible
        from timm.models import resnet

        s = self.spec
        block = resnet.BasicBlock if s["block"] == "BasicBlock" else resnet.Bottleneck
        return resnet.ResNet(
            block=block,
            layers=tuple(depths),
            channels=tuple(int(make_divisible(ch * width, 8)) for ch in _RESNET_CHANNELS),
            num_classes=self.num_classes,
            in_chans=self.input_shape[0],
            cardinality=s["cardinality"],
            base_width=s["base_width"],
            stem_type=s["stem_type"],
            stem_width=int(make_divisible(s["stem_width"] * width, 8)),
            avg_down=s["avg_down"],
            block_args={"attn_layer": s["attn"]} if s["attn"] else None,
            drop_rate=self.drop_rate,
        )

    def _build_efficientnet(self, depths: list[int], width: float) -> nn.Module:
        from timm.models._efficientnet_builder import decode_arch_def, round_channels
        from timm.models.efficientnet import EfficientNet

        round_chs = partial(round_channels, multiplier=self.spec["channel_multiplier"] * width, divisor=8)
        arch_def = [[stage.format(d)] for stage, d in zip(_EFFNET_STAGES, depths, strict=True)]
        return EfficientNet(
            block_args=decode_arch_def(arch_def, 1.0),
            num_features=round_chs(1280),
            stem_size=32,
            round_chs_fn=round_chs,
            act_layer=nn.SiLU,
            norm_layer=nn.BatchNorm2d,
            num_classes=self.num_classes,
            in_chans=self.input_shape[0],
            drop_rate=self.drop_rate,
        )

    # -- cheap summaries ----------------------------------------------------------------------
    def estimate_params(self, config: Config) -> int:
        """Exact parameter count of ``build(config)``: built once on the meta device, then cached.

        No block folds at export, so this is also ``deployed_params``, the count that
        ``--max-params`` limits.
        """
        key = self.key(config)
        if key not in self._counts:
            self._counts[key] = meta_param_count(self.build, self.complete(config))
        return self._counts[key]

    def deployed_params(self, config: Config) -> int:
        """The deployed student's parameters (the same as ``estimate_params``: nothing folds)."""
        return self.estimate_params(config)

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Module names of the stage outputs of a built student."""
        return list(model.feature_names)  # type: ignore[arg-type]

    def describe(self, config: Config) -> str:
        """E.g. ``resnet18 family | BasicBlock 1-2-2-1 | w.5`` or ``efficientnet_b0 family | MBConv
        1-2-2-3-3-4-1 | w.75``."""
        c = self.complete(config)
        block = self.spec["block"] if self.kind == "resnet" else "MBConv"
        d = "-".join(str(v) for v in self.depths(c))
        return f"{self.teacher_arch} family | {block} {d} | w{_fmt(float(c['width']))}"

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(teacher_arch=self.teacher_arch, drop_rate=self.drop_rate, family=self.kind)
        return d
