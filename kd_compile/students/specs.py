"""One parser for architecture specs: ``<family>:<encoding>`` -> a randomly initialised model and its input shape.

The families are those of the published latency tables (``shared/data/latency/README.md``)
plus the two model zoos; nothing is ever downloaded (random init, ``pretrained=False``/
``weights=None``):

* ``nb201:<arch_str>`` NAS-Bench-201 (``students/nb201.py``), 10 classes, 32x32;
* ``fbnet:<22 ops>`` FBNet in HW-NAS-Bench's CIFAR-100 setting (``students/fbnet.py``), 100, 32x32;
* ``ofa:<res>/<depths>/<blocks>`` Once-for-All MobileNetV3 (``students/ofa.py``), 1000, res x res;
* ``anb:<7 stages>`` Accel-NASBench MnasNet (``students/anb.py``), 1000, 224x224;
* ``torchvision:<name>`` ``torchvision.models.get_model(name, weights=None)``, input from its
  default weights' crop size (224 for most);
* ``timm:<name>`` ``timm.create_model(name, pretrained=False)``, input from its ``pretrained_cfg``.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable

from torch import nn

from ..errors import UsageError
from .anb import INPUT_SIDE, build_anb
from .fbnet import build_fbnet
from .nb201 import build_nb201
from .ofa import build_ofa, parse_ofa

__all__ = ["SPEC_PREFIXES", "UnknownModelError", "build_spec", "is_spec", "named_model_specs"]

Shape = tuple[int, int, int]

SPEC_PREFIXES: dict[str, str] = {
    "nb201": "nb201:|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "fbnet": "fbnet:k5_e6|skip|k3_e1_g2|... (22 ops) or fbnet:7-8-1-... (22 op indices)",
    "ofa": "ofa:204/2-2-2-2-3/k7e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3",
    "anb": "anb:e6k3l1s0-e4k5l2s0-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1",
    "torchvision": "torchvision:resnet18",
    "timm": "timm:resnet18",
}


def is_spec(text: str) -> bool:
    """Whether ``text`` starts with a known ``<family>:`` prefix (``SPEC_PREFIXES``)."""
    prefix, sep, _ = str(text).partition(":")
    return bool(sep) and prefix in SPEC_PREFIXES


def _nb201(body: str, num_classes: int | None) -> tuple[nn.Module, Shape]:
    return build_nb201(body, num_classes=num_classes or 10), (3, 32, 32)


def _fbnet(body: str, num_classes: int | None) -> tuple[nn.Module, Shape]:
    return build_fbnet(body, num_classes=num_classes or 100), (3, 32, 32)


def _ofa(body: str, num_classes: int | None) -> tuple[nn.Module, Shape]:
    arch = parse_ofa(body)
    return build_ofa(arch, num_classes=num_classes or 1000), (3, arch.resolution, arch.resolution)


def _anb(body: str, num_classes: int | None) -> tuple[nn.Module, Shape]:
    return build_anb(body, num_classes=num_classes or 1000), (3, INPUT_SIDE, INPUT_SIDE)


class UnknownModelError(UsageError):
    """A ``torchvision:``/``timm:`` spec naming a model its zoo does not have (as a teacher: exit 3,
    like an unknown timm architecture or a missing checkpoint)."""


def _unknown(zoo: str, name: str, known: list[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownModelError(f"unknown {zoo} model '{name}'{hint}")


def _torchvision_names() -> list[str]:
    """The torchvision models a ``torchvision:`` spec builds: classification ones only (the
    top-level ``torchvision.models`` namespace)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def named_model_specs(name: str) -> list[str]:
    """The specs that build the model called ``name`` (``timm:resnet18``, ``torchvision:resnet18``):
    one per zoo whose builder here accepts it; none for anything else."""
    if not name.isidentifier():
        return []
    import timm

    return [f"{zoo}:{name}" for zoo, known in (("timm", timm.is_model(name)),
                                               ("torchvision", name in _torchvision_names())) if known]


def _torchvision(body: str, num_classes: int | None) -> tuple[nn.Module, Shape]:
    import torchvision

    known = _torchvision_names()
    if body not in known:
        raise _unknown("torchvision", body, known)
    kw = {"num_classes": int(num_classes)} if num_classes is not None else {}
    with warnings.catch_warnings():  # e.g. inception_v3's FutureWarning about its default init without weights
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(body, weights=None, **kw)
    side = 224
    try:
        # the default weights' metadata (no download) knows the evaluation crop, e.g. 299 for inception_v3
        crop = torchvision.models.get_model_weights(body).DEFAULT.transforms().crop_size
        side = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    except (ValueError, AttributeError, TypeError, IndexError):
        pass
    return model, (3, side, side)


def _timm(body: str, num_classes: int | None) -> tuple[nn.Module, Shape]:
    import timm

    if not timm.is_model(body):
        raise _unknown("timm", body, timm.list_models())
    kw = {"num_classes": int(num_classes)} if num_classes is not None else {}
    model = timm.create_model(body, pretrained=False, **kw)
    size = tuple(int(v) for v in (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))
    return model, size  # type: ignore[return-value]


_BUILDERS: dict[str, Callable[[str, int | None], tuple[nn.Module, Shape]]] = {
    "nb201": _nb201,
    "fbnet": _fbnet,
    "ofa": _ofa,
    "anb": _anb,
    "torchvision": _torchvision,
    "timm": _timm,
}


def build_spec(spec: str, num_classes: int | None = None) -> tuple[nn.Module, Shape]:
    """Build the model a spec names, with random weights, in eval mode.

    Args:
        spec: ``<family>:<encoding>``, a family of ``SPEC_PREFIXES`` (see the module docstring).
        num_classes: logits; None keeps the family's own (10 for nb201, 100 for fbnet, 1000 for
            ofa/anb and the zoos).

    Returns:
        ``(model, (C, H, W))``: the model maps (N, C, H, W) float to (N, num_classes) logits.

    Raises:
        UsageError: an unknown prefix or a malformed encoding (one line saying what is expected).
    """
    prefix, sep, body = str(spec).strip().partition(":")
    if not sep or prefix not in _BUILDERS:
        raise UsageError(
            f"'{spec}' is not an architecture spec: expected <family>:<encoding>, "
            f"family one of {', '.join(SPEC_PREFIXES)}"
        )
    body = body.strip()
    if not body:
        raise UsageError(f"spec '{spec}' has no encoding after '{prefix}:', e.g. {SPEC_PREFIXES[prefix]}")
    if num_classes is not None and int(num_classes) < 1:
        raise UsageError(f"num_classes must be >= 1, got {num_classes}")
    model, shape = _BUILDERS[prefix](body, num_classes)
    return model.eval(), shape
