"""Training checkpoints as people save them: where the weights are, the prefixes wrappers add
to their keys, and the facts about the model kept beside them."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

#: Keys under which training scripts keep the weights, in the order they are tried (the plain
#: weights before an EMA copy).
STATE_DICT_KEYS: tuple[str, ...] = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "model_ema",
    "state_dict_ema",
    "ema",
    "ema_state_dict",
    "ema_model",
    "weights",
    "params",
)
#: Key prefixes wrappers add: DataParallel/DDP, torch.compile, Lightning and similar modules.
STATE_DICT_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.", "net.", "network.")


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _find_weights(obj: Any) -> tuple[Any, str | None]:
    """The state_dict (or, from a trusted pickle, the module) inside a checkpoint object.

    Returns:
        (weights, key): a tensor dict or ``nn.Module`` and the key it was under (``None`` for
        the object itself), or (None, None).
    """
    if _is_tensor_dict(obj) or isinstance(obj, nn.Module):
        return obj, None
    if not isinstance(obj, Mapping):
        return None, None
    for key in STATE_DICT_KEYS:
        value = obj.get(key)
        if _is_tensor_dict(value) or isinstance(value, nn.Module):
            return value, key
        if isinstance(value, Mapping):  # e.g. {"model": {"state_dict": ...}}
            inner, sub = _find_weights(value)
            if inner is not None and sub is not None:
                return inner, f"{key}.{sub}"
    return None, None


def _describe_keys(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return type(obj).__name__
    keys = [str(k) for k in obj]
    more = f", ... ({len(keys)} keys)" if len(keys) > 12 else ""
    return "keys " + ", ".join(keys[:12]) + more if keys else "an empty dict"


def _strip_prefixes(sd: Mapping[str, torch.Tensor], anchor: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """Drop wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``, ...) from state_dict keys.

    Args:
        sd: the weights as saved.
        anchor: a key the architecture has (its first conv's weight), or ``None``. With it, the
            prefix is whatever stands before the anchor in the saved keys (the known wrapper
            prefixes preferred, then the shortest), and only keys under it are kept (a
            Lightning module's other members go); without it, known prefixes are stripped while
            every key has them.

    Returns:
        (weights, the prefix stripped, "" for none).
    """
    if anchor is not None:
        prefixes = {k[: -len(anchor)] for k in sd if k == anchor or k.endswith("." + anchor)}
        if not prefixes or "" in prefixes:
            return dict(sd), ""

        def known(pre: str) -> bool:
            rest = pre
            while rest:
                match = next((w for w in STATE_DICT_PREFIXES if rest.startswith(w)), None)
                if match is None:
                    return False
                rest = rest[len(match) :]
            return True

        pre = min(prefixes, key=lambda x: (not known(x), len(x)))
        return {k[len(pre) :]: v for k, v in sd.items() if k.startswith(pre)}, pre
    out, stripped = dict(sd), ""
    for _ in range(4):  # e.g. "module._orig_mod."
        pre = next((w for w in STATE_DICT_PREFIXES if out and all(k.startswith(w) for k in out)), None)
        if pre is None:
            break
        out, stripped = {k[len(pre) :]: v for k, v in out.items()}, stripped + pre
    return out, stripped


def _meta_from_object(obj: Any, key: str | None) -> dict[str, Any]:
    """JSON-like top-level values of a training dict (``epoch``, ``arch``, ...) and its ``args``."""
    meta: dict[str, Any] = {}
    if not isinstance(obj, Mapping):
        return meta
    for k, v in obj.items():
        if isinstance(k, str) and k != key and k not in _TRAINING_STATE and _small_json(v):
            meta[k] = v
    for k in ("args", "hyper_parameters", "hparams", "config", "cfg"):
        v = obj.get(k)
        if isinstance(v, argparse.Namespace):
            v = vars(v)
        if isinstance(v, Mapping):
            plain = (str, int, float, bool, list, tuple, type(None))
            meta[k] = {str(a): b for a, b in v.items() if isinstance(b, plain)}
    return meta


#: Keys of a training checkpoint that hold the training's state, not facts about the model.
_TRAINING_STATE = frozenset(
    "optimizer optimizer_state_dict optimizer_states scheduler lr_scheduler lr_schedulers scaler amp loops "
    "callbacks rng_state".split()
)


def _small_json(value: Any) -> bool:
    """Whether ``value`` is plain JSON data (no tensors, no objects) of a few KB at most."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    try:
        return len(json.dumps(value, allow_nan=False)) <= 4096
    except (TypeError, ValueError):
        return False


def _arch_in(meta: Mapping[str, Any]) -> str | None:
    """The timm architecture a training checkpoint names (timm's ``arch`` / ``args.model``)."""
    if isinstance(meta.get("arch"), str) and meta["arch"]:
        return meta["arch"]
    args = meta.get("args")
    if isinstance(args, Mapping) and isinstance(args.get("model"), str) and args["model"]:
        return args["model"]
    return None
