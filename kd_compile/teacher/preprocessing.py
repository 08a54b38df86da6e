"""Deciding a teacher's preprocessing: input channels and size, mean/std, resize filter and
centre crop, each offered by its sources in priority order (the first offer wins) and recorded
with where it came from."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from ..data.preprocess import INTERPOLATIONS
from ..errors import CheckpointError, UsageError


class _Offers:
    """Candidate preprocessing values, offered in priority order: the first offer of a field
    wins. Fields: ``channels`` (int), ``size`` ((H, W)), ``mean``/``std`` (tuples),
    ``interpolation`` (str), ``crop_pct`` (float)."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[Any, str]] = {}

    def offer(self, name: str, value: Any, source: str) -> None:
        if value is not None and name not in self.values:
            self.values[name] = (value, source)

    def value(self, name: str) -> Any:
        return self.values.get(name, (None, None))[0]

    def source(self, name: str) -> str | None:
        return self.values.get(name, (None, None))[1]


def _as_size(v: Any) -> tuple[int, int, int | None] | None:
    """(H, W, C or None) from ``[C, H, W]``, ``[H, W]`` or an int; ``None`` if not a size."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int) and v > 0:
        return v, v, None
    if isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        if len(v) == 3:
            return int(v[1]), int(v[2]), int(v[0])
        if len(v) == 2:
            return int(v[0]), int(v[1]), None
    return None


def _as_floats(v: Any) -> tuple[float, ...] | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or len(v) not in (1, 3):
        return None
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(x) for x in out) else None


def _offer_meta(offers: _Offers, meta: Mapping[str, Any], source: str) -> None:
    """Offer what a checkpoint's metadata says about preprocessing (its own keys first, then a
    recorded ``preprocessing``/``normalize``, then timm-style ``pretrained_cfg``/``args``)."""
    places: list[Mapping[str, Any]] = [meta]
    for k in ("preprocessing", "normalize", "pretrained_cfg", "data_config", "args", "hyper_parameters", "hparams"):
        if isinstance(meta.get(k), Mapping):
            places.append(meta[k])
    for d in places:
        for key in ("input_shape", "input_size", "img_size", "image_size"):
            size = _as_size(d.get(key))
            if size is not None:
                offers.offer("size", (size[0], size[1]), source)
                offers.offer("channels", size[2], source)
        offers.offer("channels", d.get("in_chans") if isinstance(d.get("in_chans"), int) else None, source)
        offers.offer("mean", _as_floats(d.get("mean")), source)
        offers.offer("std", _as_floats(d.get("std")), source)
        interp = d.get("interpolation")
        offers.offer("interpolation", interp if interp in INTERPOLATIONS else None, source)
        crop = d.get("crop_pct")
        ok = isinstance(crop, (int, float)) and not isinstance(crop, bool) and 0 < crop <= 1
        offers.offer("crop_pct", float(crop) if ok else None, source)


def _check_meta_agrees(offers: _Offers, meta: Mapping[str, Any]) -> None:
    """An input shape in the checkpoint's metadata that the options contradict is an error."""
    shape = meta.get("input_shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3):
        return
    said = (int(shape[0]), int(shape[1]), int(shape[2]))
    size, size_src = offers.value("size"), offers.source("size") or ""
    ch, ch_src = offers.value("channels"), offers.source("channels") or ""
    opt = (ch if ch_src.startswith("--") else said[0], *(size if size_src.startswith("--") else said[1:]))
    if opt != said:
        raise CheckpointError(f"input shape mismatch: the checkpoint says {said}, options say {opt}")


def _timm_data_config(module: nn.Module) -> dict[str, Any]:
    """``timm.data.resolve_data_config`` of a timm model; ``{}`` for other modules."""
    if not getattr(module, "pretrained_cfg", None):
        return {}
    try:
        from timm.data import resolve_data_config

        return dict(resolve_data_config(model=module))
    except Exception:  # noqa: BLE001 (a module with an odd pretrained_cfg: treated as not timm)
        return {}


def _offer_timm(offers: _Offers, module: nn.Module, arch: str, *, crop: bool) -> None:
    """Offer timm's data config: the architecture's size, filter and mean/std (and its crop only
    when ``crop``: the size is timm's too, i.e. the whole ImageNet evaluation recipe applies)."""
    cfg = _timm_data_config(module)
    if not cfg:
        return
    src = f"timm pretrained_cfg ({arch})"
    size = _as_size(list(cfg.get("input_size", ())))
    if size is not None:
        offers.offer("channels", size[2], src)
        offers.offer("size", (size[0], size[1]), src)
    offers.offer("mean", _as_floats(list(cfg.get("mean", ()))), src)
    offers.offer("std", _as_floats(list(cfg.get("std", ()))), src)
    interp = cfg.get("interpolation")
    offers.offer("interpolation", interp if interp in INTERPOLATIONS else None, src)
    if crop and offers.source("size") == src and isinstance(cfg.get("crop_pct"), (int, float)):
        offers.offer("crop_pct", float(cfg["crop_pct"]), src)


def _offer_data(offers: _Offers, data_shape: tuple[int, int, int] | None) -> None:
    """The data's native (C, H, W): the fallback for weights whose training size is unknown."""
    if data_shape is not None:
        offers.offer("size", (int(data_shape[1]), int(data_shape[2])), "data (native size)")
        offers.offer("channels", int(data_shape[0]), "data (native channels)")


def _fit_channels(values: tuple[float, ...] | None, c: int, what: str, source: str | None) -> tuple[float, ...] | None:
    """A per-channel mean/std for ``c`` channels: one value is repeated; three for a 1-channel
    teacher are averaged (a gray input fed to all three channels of an RGB-trained stem)."""
    if values is None or len(values) == c:
        return values
    if len(values) == 1:
        return values * c
    if c == 1:
        return (sum(values) / len(values),)
    raise UsageError(f"{what} has {len(values)} values ({source}), the teacher takes {c} channels")
