"""One loader per checkpoint format (besides timm's, in ``timm_arch``): student-family specs,
TorchScript archives, ``torch.export`` programs (``.pt2``, with the fixed-batch wrapper) and
pickle/zip checkpoints (kd-compile checkpoints, training dicts, trusted pickled modules).

Each loader returns (the module, its metadata), offers the preprocessing the file records to the
``_Offers`` it is given and appends remarks for the user to ``notes``; the checks that refuse an
unsafe file come first (``safety``).
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .checkpoint import FORMAT, META_FILE, build_from_checkpoint
from .layouts import _arch_in, _describe_keys, _find_weights, _meta_from_object
from .preprocessing import _check_meta_agrees, _offer_data, _offer_meta, _offer_timm, _Offers
from .safety import (
    _check_graph,
    _check_pt2,
    _check_torchscript,
    _first_byte,
    _first_line,
    _load_object,
    _refused,
    _Unsafe,
)
from .timm_arch import timm_with_weights


def load_spec(spec: str, offers: _Offers, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """A student-family spec, built with random weights."""
    from ..students.specs import UnknownModelError, build_spec  # lazy: the students package imports timm

    try:
        module, spec_shape = build_spec(spec, num_classes)
    except UnknownModelError as exc:  # an unknown model, as an unknown timm architecture: a checkpoint error
        raise CheckpointError(str(exc)) from None
    offers.offer("channels", int(spec_shape[0]), "student-family spec")
    offers.offer("size", (int(spec_shape[1]), int(spec_shape[2])), "student-family spec")
    return module, {"format": "spec", "arch": spec}


# ----------------------------------------------------------------------------------------------
# TorchScript


def load_torchscript(
    p: Path, offers: _Offers, data_shape: tuple[int, int, int] | None, trust: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """A TorchScript archive, its pickles scanned first unless ``trust``."""
    data = p.read_bytes()  # checked and loaded from the same bytes
    if not trust:
        try:
            _check_torchscript(p, data)
        except _Unsafe as exc:
            raise _refused(p, str(exc)) from None
    try:
        extra = {META_FILE: ""}
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise CheckpointError(f"cannot load TorchScript archive {p}: {_first_line(exc)}") from None
    try:
        meta = json.loads(extra[META_FILE]) if extra[META_FILE] else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{p}: metadata {META_FILE} is not valid JSON") from None
    meta["format"] = "torchscript"
    _check_meta_agrees(offers, meta)
    _offer_meta(offers, meta, "checkpoint")
    traced = _traced_input_shape(data)
    if traced is not None:
        offers.offer("channels", traced[0], "TorchScript traced input")
        offers.offer("size", traced[1:], "TorchScript traced input")
    _offer_data(offers, data_shape)
    return module, meta


class _ShapeUnpickler(pickle.Unpickler):
    """Reads the tensor sizes of a TorchScript ``traced_inputs.pkl`` and nothing else: every
    global resolves to a stub here, and an unknown one is an error (so nothing can run)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda _storage, _offset, size, *_rest: tuple(int(s) for s in size)
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda obj, _tag: obj
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid: Any) -> None:
        return None  # the storage's bytes are not needed, only the sizes


def _traced_input_shape(data: bytes) -> tuple[int, int, int] | None:
    """(C, H, W) of the example input ``torch.jit.trace`` stored with the archive, if any."""
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        if not reader.has_record("traced_inputs.pkl"):
            return None
        traced = _ShapeUnpickler(io.BytesIO(reader.get_record("traced_inputs.pkl"))).load()
    except Exception:  # noqa: BLE001 (the shape is optional: without it the size comes from elsewhere)
        return None
    for shapes in dict(traced).values() if isinstance(traced, Mapping) else ():
        for s in shapes if isinstance(shapes, (list, tuple)) else ():
            if isinstance(s, tuple) and len(s) == 4:
                return int(s[1]), int(s[2]), int(s[3])
    return None


# ----------------------------------------------------------------------------------------------
# torch.export programs


class _Exported(nn.Module):
    """Wraps a ``torch.export`` graph module, whose ``eval()``/``train()`` are unsupported: the
    program was exported in inference mode and is used that way.

    Args:
        gm: ``ExportedProgram.module()``.
        batch: the batch size the program was exported with when it is fixed; inputs of another
            batch size then run in chunks of exactly it, the last one zero-padded (its padding
            rows are dropped from the output, and each row of an eval-mode network depends only
            on its own input).
    """

    def __init__(self, gm: nn.Module, batch: int | None = None) -> None:
        super().__init__()
        self.program = gm
        self.batch = batch

    def train(self, mode: bool = True) -> _Exported:
        self.training = mode  # do not propagate: the graph's mode was fixed at export
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.batch
        if b is None or x.shape[0] == b:
            return self.program(x)
        outs = []
        for start in range(0, x.shape[0], b):
            chunk = x[start : start + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - n, *chunk.shape[1:]))])
            outs.append(self.program(chunk)[:n])
        return torch.cat(outs)


def load_exported(
    p: Path, names: list[str], offers: _Offers, notes: list[str], trust: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """A ``torch.export`` program (``names``: its zip members), checked first unless ``trust``."""
    data = p.read_bytes()  # checked and loaded from the same bytes
    if not trust:
        try:
            _check_pt2(p, data)
        except _Unsafe as exc:
            raise _refused(p, str(exc)) from None
    try:
        ep = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise CheckpointError(f"cannot load torch.export program {p}: {_first_line(exc)}") from None
    if not trust:
        try:
            _check_graph(ep)  # before anything runs it
        except _Unsafe as exc:
            raise _refused(p, str(exc)) from None
    example, batch = _export_input(ep)
    module = _Exported(ep.module(), batch)
    meta = _read_extra_meta(p, names)
    meta["format"] = "torch.export"
    _check_meta_agrees(offers, meta)
    _offer_meta(offers, meta, "checkpoint")
    if example is not None:
        meta["example_input_shape"] = list(example)
        offers.offer("channels", example[0], "torch.export example input")
        offers.offer("size", example[1:], "torch.export example input")
    if batch is not None:
        meta["batch"] = batch
        notes.append(
            f"{p.name} was exported with a fixed batch size of {batch}: it runs {batch} image(s) at a time, "
            "padding the last batch (to run it batched, export it with an example batch of 2 and "
            "dynamic_shapes=({0: torch.export.Dim('batch')},))"
        )
    return module, meta


def _export_input(ep: Any) -> tuple[tuple[int, int, int] | None, int | None]:
    """((C, H, W) of an exported program's example input, its fixed batch size or ``None``)."""
    shape: tuple[int, int, int] | None = None
    batch: int | None = None
    try:
        user = set(ep.graph_signature.user_inputs)
        for node in ep.graph.nodes:
            if node.op == "placeholder" and node.name in user and "val" in node.meta:
                dims = tuple(node.meta["val"].shape)
                if len(dims) == 4:
                    if isinstance(dims[0], int):
                        batch = int(dims[0])
                    if all(isinstance(d, int) for d in dims[1:]):
                        shape = (int(dims[1]), int(dims[2]), int(dims[3]))
                break
        if shape is None and ep.example_inputs:
            args = ep.example_inputs[0]
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
                shape = tuple(int(d) for d in args[0].shape[1:])  # type: ignore[assignment]
    except Exception:  # noqa: BLE001 (the shape is optional: without it the size comes from elsewhere)
        return shape, batch
    return shape, batch


def _read_extra_meta(path: Path, names: list[str]) -> dict[str, Any]:
    hits = [n for n in names if n.endswith("/" + META_FILE) or n.endswith("/extra/" + META_FILE) or n == META_FILE]
    if not hits:
        return {}
    with zipfile.ZipFile(path) as zf:
        try:
            meta = json.loads(zf.read(hits[0]).decode())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: metadata {META_FILE} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata {META_FILE} is not a JSON object")
    return meta


# ----------------------------------------------------------------------------------------------
# pickle/zip checkpoints


def load_pickle(
    p: Path,
    names: list[str],
    offers: _Offers,
    num_classes: int | None,
    data_shape: tuple[int, int, int] | None,
    notes: list[str],
    trust: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """A ``torch.save`` checkpoint (``names``: its zip members, none for a legacy pickle): a
    kd-compile checkpoint, a training dict or state_dict naming its timm architecture, or (only
    with ``trust``) a pickled module."""
    if not names and _first_byte(p) != b"\x80":
        raise CheckpointError(
            f"cannot read checkpoint {p}: corrupt or not a PyTorch file (neither a zip archive nor a pickle)"
        )
    obj = _load_object(p, trust)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        module, meta = build_from_checkpoint(obj)
        meta["format"] = FORMAT
        _check_meta_agrees(offers, meta)
        _offer_meta(offers, meta, "checkpoint")
    else:
        weights, key = _find_weights(obj)
        meta = _meta_from_object(obj, key)
        if isinstance(weights, nn.Module):  # only a trusted pickle holds a module
            module = weights
            meta["format"] = "pickled-module"
            _offer_meta(offers, meta, "checkpoint")
            _offer_data(offers, data_shape)
            _offer_timm(offers, module, type(module).__name__, crop=False)
        elif weights is not None:
            found_arch = _arch_in(meta)
            where = f"under '{key}'" if key else "at its top level"
            if not found_arch:
                raise CheckpointError(
                    f"{p} holds only weights (a state_dict {where}); "
                    "name the architecture with --arch <timm model name>"
                )
            _check_meta_agrees(offers, meta)
            _offer_meta(offers, meta, "checkpoint")
            return timm_with_weights(p, found_arch, weights, key, meta, offers, num_classes, data_shape, notes)
        else:
            raise CheckpointError(f"{p} is not a model checkpoint (found {_describe_keys(obj)})")
    return module, meta
