"""The kd-compile checkpoint format: a plain dict of tensors and primitives (loadable with
``torch.load(weights_only=True)``, no pickled code) that names a registered search space and a
config, rebuilt from them. ``META_FILE`` is the metadata file other formats may carry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError

FORMAT = "kd-compile-model"
META_FILE = "kd_compile.json"


def save_checkpoint(
    path: str | Path,
    *,
    space: str,
    space_kwargs: dict[str, Any],
    config: dict[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write a kd-compile checkpoint: loadable with ``weights_only=True`` (no pickled code)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": 1,
        "space": space,
        "space_kwargs": _plain(space_kwargs),
        "config": _plain(config),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "meta": _plain(meta),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _plain(obj: Any) -> Any:
    """Reduce to JSON-like primitives so weights_only loading accepts it."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def build_from_checkpoint(payload: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a kd-compile checkpoint dict."""
    from ..students import create_space

    try:
        kwargs = dict(payload["space_kwargs"])
        kwargs.pop("search_kd", None)  # older checkpoints: the KD settings have left the families
        if "input_shape" in kwargs:
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        space = create_space(payload["space"], **kwargs)
        model = space.build(dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"kd-compile checkpoint does not rebuild: {type(exc).__name__}: {exc}") from None
    meta = dict(payload.get("meta", {}))
    meta.setdefault("input_shape", list(space.input_shape))
    meta.setdefault("num_classes", space.num_classes)
    meta["space"] = payload["space"]
    meta["config"] = dict(payload["config"])
    return model, meta
