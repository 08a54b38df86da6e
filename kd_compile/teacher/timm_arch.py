"""timm architectures as teachers: ``timm:<name>``, and a state_dict or ``.safetensors`` file
with ``--arch`` (or the architecture its metadata names) fitted to one."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .checkpoint import META_FILE
from .layouts import _arch_in, _describe_keys, _find_weights, _meta_from_object, _strip_prefixes
from .preprocessing import (
    _as_size,
    _check_meta_agrees,
    _offer_data,
    _offer_meta,
    _offer_timm,
    _Offers,
    _timm_data_config,
)
from .safety import _first_byte, _first_line, _load_object, _zip_names


def load_timm_name(name: str, offers: _Offers, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """``timm:<name>``: the architecture with random weights, and timm's preprocessing for it."""
    module = _timm_model(name, num_classes, offers.value("channels"), None)
    _offer_timm(offers, module, name, crop=True)
    return module, {"format": "timm", "arch": name}


def load_weights(
    p: Path,
    arch: str | None,
    offers: _Offers,
    num_classes: int | None,
    data_shape: tuple[int, int, int] | None,
    notes: list[str],
    trust: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """A state_dict / safetensors file ``p`` with timm ``arch`` (or the one its metadata names)."""
    sd, meta, key = _read_weights(p, trust)
    arch = arch or meta.get("arch") or _arch_in(meta)
    if not arch:
        raise CheckpointError(f"{p} holds only weights; name the architecture with --arch <timm model name>")
    _check_meta_agrees(offers, meta)
    _offer_meta(offers, meta, "checkpoint")
    return timm_with_weights(p, arch, sd, key, meta, offers, num_classes, data_shape, notes)


def _read_weights(p: Path, trust: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any], str | None]:
    """(state_dict, metadata, the key it was under) of a state_dict or safetensors file."""
    if p.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file

            sd = load_file(str(p))
            with safe_open(str(p), framework="pt") as f:
                raw = f.metadata() or {}
        except Exception as exc:
            raise CheckpointError(f"cannot read safetensors file {p}: {_first_line(exc)}") from None
        meta: dict[str, Any] = {}
        if META_FILE in raw:
            try:
                meta = json.loads(raw[META_FILE])
            except json.JSONDecodeError:
                raise CheckpointError(f"{p}: metadata {META_FILE} is not valid JSON") from None
        return sd, meta, None
    names = _zip_names(p)
    if not names and _first_byte(p) != b"\x80":
        raise CheckpointError(
            f"cannot read checkpoint {p}: corrupt or not a PyTorch file (neither a zip archive nor a pickle)"
        )
    obj = _load_object(p, trust)
    weights, key = _find_weights(obj)
    if isinstance(weights, nn.Module):
        weights = weights.state_dict()
    if weights is None:
        raise CheckpointError(f"{p} holds no state_dict (found {_describe_keys(obj)})")
    return dict(weights), _meta_from_object(obj, key), key


def timm_with_weights(
    p: Path,
    arch: str,
    sd: Mapping[str, torch.Tensor],
    key: str | None,
    meta: dict[str, Any],
    offers: _Offers,
    num_classes: int | None,
    data_shape: tuple[int, int, int] | None,
    notes: list[str],
) -> tuple[nn.Module, dict[str, Any]]:
    """Build timm ``arch`` with the weights ``sd``: (the module, its metadata). The preprocessing
    the architecture implies is offered to ``offers``; remarks for the user go to ``notes``."""
    module = _timm_model(arch, num_classes or meta.get("num_classes"), offers.value("channels"), sd)
    stripped = getattr(module, "_kd_stripped_prefix", "")
    in_chans = getattr(module, "_kd_in_chans", None)
    if in_chans is not None:
        offers.offer("channels", in_chans[0], in_chans[1])
    _offer_data(offers, data_shape)
    _offer_timm(offers, module, arch, crop=True)
    timm_size = _as_size(list(_timm_data_config(module).get("input_size", ())))
    if offers.source("size") == "data (native size)" and timm_size and timm_size[:2] != offers.value("size"):
        h, w = offers.value("size")
        notes.append(
            f"{p.name} does not record its input size: using the data's {h}x{w} (timm's default for {arch} is "
            f"{timm_size[0]}x{timm_size[1]}; pass --input-size {timm_size[0]} if it was trained at that size)"
        )
    elif offers.source("size") == f"timm pretrained_cfg ({arch})":
        h, w = offers.value("size")
        notes.append(f"{p.name} does not record its input size: using timm's default {h}x{w} for {arch} (--input-size)")
    meta = {
        **meta,
        "format": "timm+" + ("safetensors" if p.suffix == ".safetensors" else "state_dict"),
        "arch": arch,
    }
    if key:
        meta["state_dict_key"] = key
    if stripped:
        meta["stripped_prefix"] = stripped
    return module, meta


def _timm_model(
    arch: str,
    num_classes: int | None,
    in_chans: int | None,
    state_dict: Mapping[str, torch.Tensor] | None,
) -> nn.Module:
    """timm ``arch`` (random weights, or ``state_dict`` with wrapper prefixes stripped).

    The class count and input channels default to the weights' (the classifier's rows, the
    first conv's input channels, as the architecture's ``pretrained_cfg`` names them). The
    module gets ``_kd_stripped_prefix`` and ``_kd_in_chans`` ((channels, source) or None).
    """
    import timm

    if not timm.list_models(arch) and arch not in timm.list_models():
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CheckpointError(f"unknown timm architecture '{arch}'{hint}")
    kw: dict[str, Any] = {"pretrained": False}
    stripped, chans = "", None
    if state_dict is not None:
        try:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(arch)
        except Exception:  # noqa: BLE001 (no cfg: prefixes are stripped only when all keys share them)
            cfg = None
        first = getattr(cfg, "first_conv", None)
        first = first[0] if isinstance(first, (list, tuple)) and first else first
        classifier = getattr(cfg, "classifier", None)
        classifier = classifier[0] if isinstance(classifier, (list, tuple)) and classifier else classifier
        anchor = f"{first}.weight" if isinstance(first, str) and first else None
        state_dict, stripped = _strip_prefixes(state_dict, anchor)
        w = state_dict.get(anchor) if anchor else None
        if in_chans is None and isinstance(w, torch.Tensor) and w.dim() >= 2:
            in_chans = int(w.shape[1])
            chans = (in_chans, "weights (first conv)")
        head = state_dict.get(f"{classifier}.weight") if classifier else None  # timm's own name for the head
        if num_classes is not None and isinstance(head, torch.Tensor) and head.shape[0] != int(num_classes):
            raise CheckpointError(f"the checkpoint's classifier ({classifier}) outputs {head.shape[0]} classes, not "
                                  f"the {int(num_classes)} given (--num-classes)")
        if num_classes is None:
            num_classes = _infer_classes_from_state_dict(state_dict, classifier)
    if num_classes is not None:
        kw["num_classes"] = int(num_classes)
    if in_chans is not None:
        kw["in_chans"] = int(in_chans)
    try:
        model = timm.create_model(arch, **kw)
    except Exception as exc:
        raise CheckpointError(f"cannot build timm model '{arch}': {_first_line(exc)}") from None
    if state_dict is not None:
        try:
            result = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as exc:
            bad = re.findall(r"size mismatch for ([^:]+):", str(exc))
            what = f"{len(bad)} of another shape ({', '.join(bad[:3])})" if bad else _first_line(exc)
            raise CheckpointError(f"weights do not fit timm '{arch}': {what}") from None
        if result.missing_keys or result.unexpected_keys:
            parts = []
            if result.missing_keys:
                parts.append(f"{len(result.missing_keys)} missing ({', '.join(result.missing_keys[:3])})")
            if result.unexpected_keys:
                parts.append(f"{len(result.unexpected_keys)} unexpected ({', '.join(result.unexpected_keys[:3])})")
            raise CheckpointError(f"weights do not fit timm '{arch}': {'; '.join(parts)}")
    model._kd_stripped_prefix = stripped  # type: ignore[assignment]
    model._kd_in_chans = chans  # type: ignore[assignment]
    return model


def _infer_classes_from_state_dict(sd: Mapping[str, torch.Tensor], classifier: str | None = None) -> int | None:
    keys = ([f"{classifier}.weight"] if classifier else []) + [
        "head.fc.weight",
        "head.weight",
        "fc.weight",
        "classifier.weight",
        "head.fc.bias",
    ]
    for key in keys:
        if key in sd:
            return int(sd[key].shape[0])
    return None
