"""Safe loading of teacher checkpoints.

Formats, detected from the file (not its name alone):

* kd-compile checkpoints (``student.pt`` and teachers written by the examples): a plain dict of
  tensors and primitives -> loaded with ``torch.load(weights_only=True)`` and rebuilt from the
  registered search space and config. Safe.
* TorchScript archives (``torch.jit.save``) -> ``torch.jit.load``. Metadata may ride in the
  extra file ``kd_compile.json``.
* ``torch.export`` programs (``.pt2``) -> ``torch.export.load``; same extra file.
* A timm architecture name (``--arch``) plus a state_dict (``.pth``/``.pt``, loaded with
  ``weights_only=True``) or a ``.safetensors`` file.
* A whole pickled module (``torch.save(model)``) only with ``trust_checkpoint=True``: unpickling
  runs arbitrary code, so by default it is refused with the reason.

Input shape and class count come from the checkpoint's metadata, else from options, else from
the architecture (timm's pretrained config) and one forward pass; a disagreement is an error.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import CheckpointError

FORMAT = "kd-compile-model"
META_FILE = "kd_compile.json"


@dataclass
class Teacher:
    """A loaded teacher.

    Attributes:
        module: the model in eval mode, mapping (N, C, H, W) float -> (N, num_classes) logits.
        input_shape: (C, H, W).
        num_classes: number of output classes.
        meta: format, data hint, accuracy, normalisation, class names, architecture.
    """

    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


class _Exported(nn.Module):
    """Wraps a ``torch.export`` graph module, whose ``eval()``/``train()`` are unsupported: the
    program was exported in inference mode and is used that way."""

    def __init__(self, gm: nn.Module) -> None:
        super().__init__()
        self.program = gm

    def train(self, mode: bool = True) -> _Exported:
        self.training = mode  # do not propagate: the graph's mode was fixed at export
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


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
    from .students import create_space

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


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _load_state_dict_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file

            sd = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                raw = f.metadata() or {}
        except Exception as exc:
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from None
        meta: dict[str, Any] = {}
        if META_FILE in raw:
            meta = json.loads(raw[META_FILE])
        return sd, meta
    obj = _torch_load_safe(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and _is_tensor_dict(obj["state_dict"]):
        meta = {k: v for k, v in obj.items() if k != "state_dict" and isinstance(v, (str, int, float, list, dict))}
        return dict(obj["state_dict"]), meta
    if _is_tensor_dict(obj):
        return dict(obj), {}
    raise CheckpointError(f"{path} holds no state_dict (a mapping of names to tensors)")


def _torch_load_safe(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise _Unsafe(str(exc)) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt or not a PyTorch file ({_first_line(exc)})"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}") from None


class _Unsafe(Exception):
    """weights_only loading refused the file: it pickles code, not just tensors."""


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return s[0] if s else ""


def _read_extra_meta(path: Path, names: list[str]) -> dict[str, Any]:
    hits = [n for n in names if n.endswith("/" + META_FILE) or n.endswith("/extra/" + META_FILE) or n == META_FILE]
    if not hits:
        return {}
    with zipfile.ZipFile(path) as zf:
        try:
            return json.loads(zf.read(hits[0]).decode())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: metadata {META_FILE} is not valid JSON") from None


def load_teacher(
    path: str | Path,
    *,
    arch: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    trust_checkpoint: bool = False,
) -> Teacher:
    """Load a teacher checkpoint safely. See the module docstring for formats.

    Raises:
        CheckpointError: missing, corrupt, unsafe (without trust) or inconsistent checkpoints.
    """
    p = Path(path)
    if arch is None and str(path).startswith("timm:"):
        return _finish(
            _timm_model(str(path)[5:], num_classes, input_shape, None),
            {"format": "timm", "arch": str(path)[5:]},
            input_shape,
            num_classes,
            str(path),
        )
    from .students.specs import build_spec, is_spec  # lazy: the students package imports timm

    if arch is None and is_spec(str(path)):
        module, spec_shape = build_spec(str(path), num_classes)
        return _finish(module, {"format": "spec", "arch": str(path)}, input_shape or spec_shape, num_classes, str(path))
    if not p.exists():
        raise CheckpointError(f"teacher checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"teacher checkpoint is a directory, expected a file: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"teacher checkpoint is empty: {p}")

    names = _zip_names(p)
    meta: dict[str, Any]
    module: nn.Module
    if arch is not None or p.suffix == ".safetensors":
        if arch is None:
            sd, meta = _load_state_dict_file(p)
            arch = meta.get("arch")
            if not arch:
                raise CheckpointError(f"{p} holds only weights; name the architecture with --arch <timm model name>")
        else:
            sd, meta = _load_state_dict_file(p)
        module = _timm_model(arch, num_classes or meta.get("num_classes"), input_shape, sd)
        meta = {
            **meta,
            "format": "timm+" + ("safetensors" if p.suffix == ".safetensors" else "state_dict"),
            "arch": arch,
        }
    elif any(n.endswith("/code/") or "/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        try:
            extra = {META_FILE: ""}
            module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise CheckpointError(f"cannot load TorchScript archive {p}: {_first_line(exc)}") from None
        meta = json.loads(extra[META_FILE]) if extra[META_FILE] else {}
        meta["format"] = "torchscript"
    elif p.suffix == ".pt2" or any(n.endswith("archive_format") or "/models/" in n for n in names):
        try:
            ep = torch.export.load(str(p))
        except Exception as exc:
            raise CheckpointError(f"cannot load torch.export program {p}: {_first_line(exc)}") from None
        module = _Exported(ep.module())
        meta = _read_extra_meta(p, names)
        meta["format"] = "torch.export"
    else:
        if not names and not p.read_bytes()[:1] == b"\x80":
            raise CheckpointError(
                f"cannot read checkpoint {p}: corrupt or not a PyTorch file (neither a zip archive nor a pickle)"
            )
        try:
            obj = _torch_load_safe(p)
        except _Unsafe as exc:
            if not trust_checkpoint:
                raise CheckpointError(
                    f"refused to unpickle {p}: it contains Python objects, and loading a pickle can run arbitrary code",
                    hint="re-save it as TorchScript, torch.export (.pt2) or a state_dict with --arch, "
                    "or pass --trust-checkpoint if you trust its author",
                ) from None
            try:
                obj = torch.load(p, map_location="cpu", weights_only=False)
            except Exception as exc2:
                raise CheckpointError(f"cannot unpickle {p}: {_first_line(exc2)}") from None
            del exc
        if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
            module, meta = build_from_checkpoint(obj)
            meta["format"] = FORMAT
        elif isinstance(obj, nn.Module):
            module, meta = obj, {"format": "pickled-module"}
        elif _is_tensor_dict(obj) or (isinstance(obj, Mapping) and "state_dict" in obj):
            raise CheckpointError(
                f"{p} holds only weights (a state_dict); name the architecture with --arch <timm model name>"
            )
        else:
            raise CheckpointError(f"{p} is not a model checkpoint (found {type(obj).__name__})")
    return _finish(module, meta, input_shape, num_classes, str(p))


def _timm_model(
    arch: str,
    num_classes: int | None,
    input_shape: tuple[int, int, int] | None,
    state_dict: Mapping[str, torch.Tensor] | None,
) -> nn.Module:
    import timm

    if not timm.list_models(arch) and arch not in timm.list_models():
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CheckpointError(f"unknown timm architecture '{arch}'{hint}")
    kw: dict[str, Any] = {"pretrained": False}
    if num_classes is None and state_dict is not None:
        num_classes = _infer_classes_from_state_dict(state_dict)
    if num_classes is not None:
        kw["num_classes"] = int(num_classes)
    if input_shape is not None:
        kw["in_chans"] = int(input_shape[0])
    try:
        model = timm.create_model(arch, **kw)
    except Exception as exc:
        raise CheckpointError(f"cannot build timm model '{arch}': {_first_line(exc)}") from None
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit timm '{arch}': {_first_line(exc)}") from None
    return model


def _infer_classes_from_state_dict(sd: Mapping[str, torch.Tensor]) -> int | None:
    for key in ("head.fc.weight", "head.weight", "fc.weight", "classifier.weight", "head.fc.bias"):
        if key in sd:
            return int(sd[key].shape[0])
    return None


def _finish(
    module: nn.Module,
    meta: dict[str, Any],
    input_shape: tuple[int, int, int] | None,
    num_classes: int | None,
    where: str,
) -> Teacher:
    module.eval()
    meta_shape = tuple(meta["input_shape"]) if meta.get("input_shape") else None
    if meta_shape is None:
        cfg = getattr(module, "pretrained_cfg", None) or {}
        if input_shape is None and cfg.get("input_size"):
            meta_shape = tuple(cfg["input_size"])
    if input_shape is not None and meta_shape is not None and tuple(input_shape) != tuple(meta_shape):
        if meta.get("input_shape"):
            raise CheckpointError(
                f"input shape mismatch: the checkpoint says {tuple(meta_shape)}, options say {tuple(input_shape)}"
            )
    shape = tuple(input_shape or meta_shape or ())
    if len(shape) != 3:
        raise CheckpointError(f"{where}: the input shape is unknown", hint="pass --input-shape C,H,W")
    try:
        with torch.inference_mode():
            out = module(torch.zeros(1, *shape))
    except Exception as exc:
        raise CheckpointError(
            f"teacher does not run on input of shape {shape}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CheckpointError(
            f"teacher output must be logits of shape (N, classes), got {getattr(out, 'shape', type(out))}"
        )
    out_classes = int(out.shape[1])
    meta_classes = meta.get("num_classes")
    for name, value in (("the checkpoint metadata", meta_classes), ("--num-classes", num_classes)):
        if value is not None and int(value) != out_classes:
            raise CheckpointError(
                f"class-count mismatch: {name} says {value}, the teacher outputs {out_classes} classes"
            )
    meta = {**meta, "input_shape": list(shape), "num_classes": out_classes}
    return Teacher(module=module, input_shape=shape, num_classes=out_classes, meta=meta)  # type: ignore[arg-type]
