"""Safe loading of teacher checkpoints, and how each teacher expects its inputs.

Formats, detected from the file's content (never its name alone):

* kd-compile checkpoints (``student.pt`` and teachers written by the examples): a plain dict of
  tensors and primitives -> loaded with ``torch.load(weights_only=True)`` and rebuilt from the
  registered search space and config. Safe.
* TorchScript archives (``torch.jit.save``) -> ``torch.jit.load`` (its C++ unpickler builds no
  Python objects); every pickle in the archive is first scanned and refused if it names a Python
  global outside torch's. Metadata may ride in the extra file ``kd_compile.json``.
* ``torch.export`` programs (``.pt2``) -> ``torch.export.load``, which unpickles some payloads
  with ``weights_only=False``; without ``trust_checkpoint`` the archive is inspected first, with
  torch's own zip reader, and refused unless every member is one ``torch.export.load`` reads as
  plain data (see ``safety._check_pt2``). Same extra file. A program exported with a fixed batch
  size runs at that batch (``formats._Exported`` pads the last chunk).
* A timm architecture (``--arch``, or the ``arch`` a training checkpoint records) plus a
  state_dict (``.pth``/``.pt``, loaded with ``weights_only=True``; a bare state_dict or a
  training dict such as ``{"epoch", "model": state_dict, "optimizer"}``, ``module.``/``model.``/
  ``_orig_mod.`` prefixes stripped) or a ``.safetensors`` file.
* A whole pickled module (``torch.save(model)``) only with ``trust_checkpoint=True``: unpickling
  runs arbitrary code, so by default it is refused with the reason.

Preprocessing (``Teacher.preprocessing``, also ``meta["preprocessing"]``): input channels and
size, mean/std, resize filter and centre crop, each taken from the first of: the options
(``--input-shape``/``--input-size``/``--mean``/``--std``/``--interpolation``/``--crop-pct``), the
checkpoint's metadata (kd-compile meta, ``kd_compile.json``, a training dict's keys or ``args``),
the graph's example input (traced TorchScript, ``.pt2``), the weights (the first conv's input
channels), the data's native size (``data_shape``; for weights whose training resolution is not
recorded), timm's ``pretrained_cfg``. A mean/std found nowhere is left ``None`` and filled with
the data's own statistics by the caller (``Teacher.with_stats``). The class count comes from the
checkpoint or one forward pass; a disagreement is an error.

The parts: ``safety`` (the checks that refuse unsafe files), ``layouts`` (where a training
checkpoint keeps its weights), ``formats`` and ``timm_arch`` (one loader per format),
``preprocessing`` (the candidate values and their sources), ``checkpoint`` (the kd-compile
checkpoint format). This module dispatches on the file's content and finishes the teacher.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.preprocess import Preprocessing
from ..errors import CheckpointError, UsageError, out_of_memory
from .checkpoint import FORMAT, META_FILE, build_from_checkpoint, save_checkpoint
from .formats import load_exported, load_pickle, load_spec, load_torchscript
from .layouts import STATE_DICT_KEYS, STATE_DICT_PREFIXES
from .preprocessing import _fit_channels, _Offers
from .safety import _check_graph as _check_graph  # re-exported: the safety tests call it
from .safety import _first_line, _zip_names
from .safety import _Unsafe as _Unsafe
from .timm_arch import load_timm_name, load_weights

__all__ = [
    "FORMAT",
    "META_FILE",
    "STATE_DICT_KEYS",
    "STATE_DICT_PREFIXES",
    "Teacher",
    "build_from_checkpoint",
    "load_teacher",
    "save_checkpoint",
]


@dataclass
class Teacher:
    """A loaded teacher.

    Attributes:
        module: the model in eval mode, mapping (N, C, H, W) float -> (N, num_classes) logits.
        input_shape: (C, H, W).
        num_classes: number of output classes.
        meta: format, data hint, accuracy, class names, architecture; ``preprocessing`` (the
            ``Preprocessing.to_dict()`` form), ``normalize`` (when the teacher has its own
            mean/std), ``notes`` (one-line remarks for the user, e.g. a size taken from the
            data), ``batch`` (a ``.pt2`` program's fixed batch size).
        preprocessing: how its inputs are prepared, and where each value came from.
    """

    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing | None = None

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def with_stats(self, mean: tuple[float, ...], std: tuple[float, ...], source: str = "data") -> Teacher:
        """This teacher with a missing mean/std filled from ``source`` (a teacher's own stay).

        Args:
            mean, std: per-channel statistics, e.g. the data's (``DataBundle.mean``/``std``).
            source: recorded as their source.
        """
        pre = self.preprocessing or Preprocessing(self.input_shape)
        pre = pre.with_stats(tuple(mean), tuple(std), source)
        meta = {**self.meta, "preprocessing": pre.to_dict()}
        return dataclasses.replace(self, preprocessing=pre, meta=meta)


def load_teacher(
    path: str | Path,
    *,
    arch: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    input_size: tuple[int, int] | None = None,
    num_classes: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    data_shape: tuple[int, int, int] | None = None,
    trust_checkpoint: bool = False,
) -> Teacher:
    """Load a teacher checkpoint safely and find how it expects its inputs.

    See the module docstring for the formats and the order preprocessing values are taken in.

    Args:
        path: a checkpoint file, ``timm:<name>`` or a student-family spec.
        arch: timm architecture of a state_dict / safetensors file.
        input_shape: ``--input-shape`` (C, H, W).
        input_size: ``--input-size`` (H, W).
        num_classes: checked against the teacher's output.
        mean, std: ``--mean``/``--std`` (one value or one per channel).
        interpolation: ``--interpolation``.
        crop_pct: ``--crop-pct``.
        data_shape: the data's native (C, H, W) (``data.native_shape``): used for weights that
            do not record their input size, rather than an architecture's default.
        trust_checkpoint: allow loading that can run the checkpoint's code.

    Raises:
        CheckpointError: missing, corrupt, unsafe (without trust) or inconsistent checkpoints.
        UsageError: ``input_shape`` and ``input_size`` disagree; a mean/std of the wrong length;
            ``trust_checkpoint`` not a bool (a truthy ``"no"`` must not unpickle anything).
    """
    if not isinstance(trust_checkpoint, bool):
        raise UsageError(f"trust_checkpoint must be True or False, got {trust_checkpoint!r}")
    if not isinstance(path, (str, Path)):
        raise UsageError(f"the teacher must be a checkpoint path or a model spec, got {type(path).__name__}")
    offers = _Offers()
    if input_shape is not None:
        offers.offer("channels", int(input_shape[0]), "--input-shape")
        offers.offer("size", (int(input_shape[1]), int(input_shape[2])), "--input-shape")
    if input_size is not None:
        if input_shape is not None and tuple(input_shape[1:]) != tuple(input_size):
            raise UsageError(f"--input-size {tuple(input_size)} disagrees with --input-shape {tuple(input_shape)}")
        offers.offer("size", (int(input_size[0]), int(input_size[1])), "--input-size")
    offers.offer("mean", None if mean is None else tuple(mean), "--mean")
    offers.offer("std", None if std is None else tuple(std), "--std")
    offers.offer("interpolation", interpolation, "--interpolation")
    offers.offer("crop_pct", crop_pct, "--crop-pct")
    notes: list[str] = []

    p = Path(path)
    if arch is None and str(path).startswith("timm:"):
        module, meta = load_timm_name(str(path)[5:], offers, num_classes)
        return _finish(module, meta, offers, num_classes, str(path), notes)
    from ..students.specs import is_spec  # lazy: the students package imports timm

    if arch is None and is_spec(str(path)):
        module, meta = load_spec(str(path), offers, num_classes)
        return _finish(module, meta, offers, num_classes, str(path), notes)
    if not p.exists():
        prefix, colon, _ = str(path).partition(":")
        # "foo:bar" reads as a spec; "C:/x" (a drive) and "runs/x:1" (a path) do not
        spec_like = bool(colon) and len(prefix) > 1 and prefix.isidentifier()
        from ..students.specs import SPEC_PREFIXES, named_model_specs

        hint = None
        if spec_like:
            hint = (f"'{prefix}:' is no model family; a model spec is <family>:<encoding>, family one of "
                    f"{', '.join(SPEC_PREFIXES)}")
        elif specs := named_model_specs(str(path)):
            hint = f"a model by name is a spec: {' or '.join(specs)}"
        raise CheckpointError(f"teacher checkpoint not found: {p}", hint=hint)
    if p.is_dir():
        raise CheckpointError(f"teacher checkpoint is a directory, expected a file: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"teacher checkpoint is empty: {p}")

    names = _zip_names(p)
    if arch is not None or p.suffix == ".safetensors":
        module, meta = load_weights(p, arch, offers, num_classes, data_shape, notes, trust_checkpoint)
    elif any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        module, meta = load_torchscript(p, offers, data_shape, trust_checkpoint)
    elif p.suffix == ".pt2" or any(n.endswith("archive_format") or "/models/" in n for n in names):
        module, meta = load_exported(p, names, offers, notes, trust_checkpoint)
    else:
        module, meta = load_pickle(p, names, offers, num_classes, data_shape, notes, trust_checkpoint)
    return _finish(module, meta, offers, num_classes, str(p), notes)


def _finish(
    module: nn.Module,
    meta: dict[str, Any],
    offers: _Offers,
    num_classes: int | None,
    where: str,
    notes: list[str],
) -> Teacher:
    """Resolve the preprocessing, run the teacher once on it and check its output."""
    module.eval()
    size, channels = offers.value("size"), offers.value("channels")
    if size is None or channels is None:
        raise CheckpointError(
            f"{where}: the input shape is unknown (nothing records its {'size' if size is None else 'channels'})",
            hint="pass --input-shape C,H,W (or --input-size H[xW]), or --data so that the data's size is used",
        )
    shape = (int(channels), int(size[0]), int(size[1]))
    # channels guessed from the data may be wrong (gray data, RGB-trained teacher): then the
    # other count is tried, and the data is converted to the teacher's channels
    tries = [shape]
    if offers.source("channels") == "data (native channels)":
        tries.append((4 - shape[0] if shape[0] in (1, 3) else 3, shape[1], shape[2]))
    error: Exception | None = None
    for shape in tries:
        try:
            with torch.inference_mode():
                out = module(torch.zeros(1, *shape))
            break
        except Exception as exc:  # noqa: BLE001 (reported below, with the first shape)
            error = error or exc
    else:
        shape = tries[0]
        if out_of_memory(error):  # the teacher is fine; one forward at this size does not fit this machine
            raise UsageError(
                f"one forward pass of the teacher at input {shape} ran out of this machine's memory: "
                f"{type(error).__name__}: {_first_line(error)}",
                hint="use a smaller --input-size (or --image-size)",
            )
        example = meta.get("example_input_shape")
        fixed = f" (the program was exported for inputs of shape {tuple(example)})" if example else ""
        raise CheckpointError(
            f"teacher does not run on input of shape {shape}{fixed}: {type(error).__name__}: {_first_line(error)}"
        ) from None
    if shape[0] != int(channels):
        offers.values["channels"] = (shape[0], "teacher (runs on it; the data is converted)")
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
    mean = _fit_channels(offers.value("mean"), shape[0], "--mean", offers.source("mean"))
    std = _fit_channels(offers.value("std"), shape[0], "--std", offers.source("std"))
    if std is not None and not all(v > 0 for v in std):
        raise CheckpointError(f"{where}: the std {std} ({offers.source('std')}) must be positive")
    sources = {n: offers.source(n) for n in ("channels", "size", "mean", "std", "interpolation", "crop_pct")}
    sources["interpolation"] = sources["interpolation"] or "default"
    sources["crop_pct"] = sources["crop_pct"] or "default"
    pre = Preprocessing(
        input_shape=shape,
        mean=mean,
        std=std,
        interpolation=offers.value("interpolation") or "bilinear",
        crop_pct=float(offers.value("crop_pct") or 1.0),
        sources=tuple((k, v) for k, v in sources.items() if v is not None),
    )
    meta = {**meta, "input_shape": list(shape), "num_classes": out_classes, "preprocessing": pre.to_dict()}
    if mean is not None and std is not None:
        meta["normalize"] = {"mean": list(mean), "std": list(std)}
    if notes:
        meta["notes"] = list(notes)
    return Teacher(module=module, input_shape=shape, num_classes=out_classes, meta=meta, preprocessing=pre)
