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
  plain data (see ``_check_pt2``). Same extra file. A program exported with a fixed batch size
  runs at that batch (``_Exported`` pads the last chunk).
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
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import math
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .data.preprocess import INTERPOLATIONS, Preprocessing
from .errors import CheckpointError, UsageError

FORMAT = "kd-compile-model"
META_FILE = "kd_compile.json"

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


# ----------------------------------------------------------------------------------------------
# reading files safely


class _Unsafe(Exception):
    """Loading the file as data was refused: it pickles code, not just tensors."""


def _first_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).strip().splitlines() if s.strip()]
    # torch's C++ checks prefix their messages with where they failed
    line = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", lines[0]) if lines else ""
    return line or type(exc).__name__


def _safe_globals() -> list[Any]:
    """Plain-data classes common in training checkpoints, allowed to ``weights_only`` loading:
    timm's ``args`` (``argparse.Namespace``) and numpy scalars (a metric saved as ``np.float64``).
    Rebuilding them calls no code of the file's choosing."""
    out: list[Any] = [argparse.Namespace]
    try:
        import numpy as np

        scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
        out += [
            (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar"),
            np.dtype,
            *{type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")},
        ]
    except (ImportError, AttributeError):
        pass
    return out


def _torch_load_safe(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise _Unsafe(_first_line(exc)) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt or not a PyTorch file ({_first_line(exc)})"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}") from None


def _refused(p: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"refused to load {p}: {what}, and loading it could run arbitrary code",
        hint="re-save it as TorchScript, torch.export (.pt2) or a state_dict with --arch, "
        "or pass --trust-checkpoint if you trust its author",
    )


def _load_object(p: Path, trust: bool) -> Any:
    """``torch.load`` a pickle/zip checkpoint: as data, or with ``trust`` as anything."""
    try:
        return _torch_load_safe(p)
    except _Unsafe:
        if not trust:
            raise CheckpointError(
                f"refused to unpickle {p}: it contains Python objects, and loading a pickle can run arbitrary code",
                hint="re-save it as TorchScript, torch.export (.pt2) or a state_dict with --arch, "
                "or pass --trust-checkpoint if you trust its author",
            ) from None
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot unpickle {p}: {_first_line(exc)}") from None


# Globals a TorchScript archive's pickles may name: TorchScript classes and torch's rebuild
# helpers. (torch.jit.load's C++ unpickler resolves nothing else; scanning first gives the reason.)
_TS_GLOBAL_MODULES = ("torch", "__torch__")
_TS_GLOBAL_NAMES = {"collections.OrderedDict", "builtins.complex", "builtins.set"}


def _pickle_globals(data: bytes) -> list[str]:
    """The globals a pickle names (``module.name``), read with ``pickletools`` (nothing runs).

    Opcodes that name a global indirectly (``STACK_GLOBAL``, the extension registry) are
    returned as ``"<opcode>"`` so that callers refuse them: torch's TorchScript pickler never
    writes them.
    """
    found: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", ".", 1))
            elif op.name in ("STACK_GLOBAL", "EXT1", "EXT2", "EXT4"):
                found.append(f"<{op.name}>")
    except Exception:  # noqa: BLE001 (a pickle that does not parse is refused by the caller)
        found.append("<unparseable pickle>")
    return found


def _ts_global_ok(name: str) -> bool:
    return name in _TS_GLOBAL_NAMES or name.split(".", 1)[0] in _TS_GLOBAL_MODULES


def _check_torchscript(p: Path, data: bytes) -> None:
    """Refuse a TorchScript archive (``data``, the bytes of ``p``) whose pickles name Python
    globals outside torch's."""
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = reader.get_all_records()
        for name in records:
            if name.endswith((".pkl", ".debug_pkl")):
                bad = [g for g in _pickle_globals(reader.get_record(name)) if not _ts_global_ok(g)]
                if bad:
                    raise _Unsafe(f"its {name} pickles {bad[0]}")
    except RuntimeError as exc:
        raise CheckpointError(f"cannot read TorchScript archive {p}: {_first_line(exc)}") from None


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


# ``torch.export.load`` parses symbolic shape expressions with ``sympy.sympify``, which calls
# ``eval``. torch writes them in sympy's ``srepr`` form (``Mul(Integer(16), Symbol('s16',
# positive=True, integer=True))``): an expression must consist of the sympy classes and
# functions below, shape-symbol names (bare or quoted), assumption keywords, numbers and
# operators, or it is refused (no builtins, attributes, subscripts or other strings).
_SYM_TOKEN = re.compile(
    r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|'([^'\\]*)'|\"([^\"\\]*)\""
    r"|(\*\*|//|<=|>=|==|!=|[-+*/%()<>,&|~^=]))"
)
_SYM_SYMBOL = re.compile(r"(?:s|u|zf|zuf|tmp|ps|i|r0_|r1_|idx|x|y|z|indirect|view|h)\d+")
_SYM_NAMES = frozenset(
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv IntTrueDiv FloatTrueDiv "
    "LShift RShift IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat "
    "FloatPow PowByNatural Identity Symbol Dummy Integer Rational Float Add Mul Pow Max Min Abs Eq Ne Lt Le Gt Ge "
    "StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not Piecewise ExprCondPair "
    "floor ceiling sqrt oo zoo nan true false True False S One Zero NegativeOne Half Infinity NegativeInfinity "
    "integer positive negative nonnegative nonpositive nonzero zero real extended_real finite infinite rational "
    "even odd commutative prime composite".split()
)


def _safe_sym_expr(text: str) -> bool:
    """Whether a serialized shape expression is plain arithmetic over shape symbols (and small:
    one power at most, its exponent a literal up to 64, so that parsing it cannot take forever)."""
    if len(text) > 4000 or text.count("**") > 1:
        return False
    pos, after_pow = 0, False
    while pos < len(text):
        m = _SYM_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            return text[pos:].strip() == ""
        name, number, quoted1, quoted2, op = m.groups()
        quoted = quoted1 if quoted1 is not None else quoted2
        if name is not None and name not in _SYM_NAMES and not _SYM_SYMBOL.fullmatch(name):
            return False
        if quoted is not None and not _SYM_SYMBOL.fullmatch(quoted):
            return False
        if after_pow and not (number is not None and number.isdigit() and int(number) <= 64):
            return False
        if number is not None and len(number) > 40:
            return False
        after_pow = op == "**"
        pos = m.end()
    return not after_pow


def _expr_strings(obj: Any) -> list[str]:
    """Every ``expr_str`` value in a deserialized JSON document (what sympify would parse)."""
    found: list[str] = []
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr_str":
                    found.append(value if isinstance(value, str) else repr(value))
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _check_pt2(p: Path, data: bytes) -> None:
    """Refuse a ``.pt2`` archive (``data``, the bytes of ``p``, which are then loaded: what is
    checked is what is loaded) unless ``torch.export.load`` would read every member as data.

    ``torch.export.load`` unpickles with ``weights_only=False`` a weight or tensor constant
    whose payload entry says ``use_pickle``, ``opaque_obj_*`` constants, legacy
    ``data/weights/<model>.pt``/``data/constants/<model>.pt`` files and (when ``weights_only``
    fails) its sample inputs; it loads compiled code from ``data/aotinductor/``; and when the
    PT2 reader fails it falls back to an older format it unpickles. So, reading the archive
    with torch's own zip reader (what ``torch.export.load`` will see): ``archive_format`` must
    be ``pt2``; every member must be archive bookkeeping, ``models/<m>.json``, ``extra/*``, a
    weights/constants config whose every entry is a raw tensor (``use_pickle`` false, a
    ``weight_``/``tensor_`` file), a raw tensor file such an entry names, or
    ``data/sample_inputs/<m>.pt`` loadable with ``weights_only=True``; and every symbolic shape
    expression in ``models/<m>.json`` (which ``sympy.sympify`` would ``eval``) must be plain
    arithmetic over shape symbols (``_safe_sym_expr``). After loading, ``_check_graph`` checks
    the graph calls only operators.

    Raises:
        _Unsafe: with the reason.
        CheckpointError: the file is not a readable zip archive.
    """
    from torch.export.pt2_archive import constants as k

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        raise CheckpointError(f"cannot read torch.export archive {p}: not a zip archive") from None
    if len(names) != len(set(names)):
        raise _Unsafe("its zip archive lists a member twice")
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = set(reader.get_all_records())
        if "archive_format" not in records or reader.get_record("archive_format") != b"pt2":
            raise _Unsafe("it is not a PT2 archive (an older torch.export format, which torch.export.load unpickles)")
        models = {
            n[len(k.MODELS_DIR) : -len(".json")]
            for n in records
            if n.startswith(k.MODELS_DIR) and n.endswith(".json") and "/" not in n[len(k.MODELS_DIR) :]
        }
        allowed = {"archive_format", "archive_version", "byteorder", "version", ".data/version"}
        allowed |= {".data/serialization_id", ".format_version", ".storage_alignment"}
        for m in models:
            graph_file = k.MODELS_FILENAME_FORMAT.format(m)
            try:
                graph = json.loads(reader.get_record(graph_file))
            except (ValueError, UnicodeDecodeError):
                raise _Unsafe(f"its {graph_file} is not JSON") from None
            bad = next((e for e in _expr_strings(graph) if not _safe_sym_expr(e)), None)
            if bad is not None:
                raise _Unsafe(f"its {graph_file} holds a shape expression that is code ({bad[:40]!r})")
            allowed.add(graph_file)
            sample = k.SAMPLE_INPUTS_FILENAME_FORMAT.format(m)
            if sample in records:
                try:
                    torch.load(io.BytesIO(reader.get_record(sample)), weights_only=True)
                except Exception:  # noqa: BLE001 (torch.export.load would retry it unpickling freely)
                    raise _Unsafe(f"its sample inputs {sample} pickle Python objects") from None
                allowed.add(sample)
            payloads = (
                (k.WEIGHTS_CONFIG_FILENAME_FORMAT, k.WEIGHTS_DIR, k.WEIGHT_FILENAME_PREFIX, "weight"),
                (k.CONSTANTS_CONFIG_FILENAME_FORMAT, k.CONSTANTS_DIR, k.TENSOR_CONSTANT_FILENAME_PREFIX, "constant"),
            )
            for config_format, folder, prefix, what in payloads:
                config_name = config_format.format(m)
                if config_name not in records:
                    continue
                allowed.add(config_name)
                try:
                    entries = json.loads(reader.get_record(config_name))["config"]
                    items = [(str(n), dict(e)) for n, e in dict(entries).items()]
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise _Unsafe(f"its {config_name} is not a payload config") from None
                for fqn, entry in items:
                    path_name = str(entry.get("path_name", ""))
                    if entry.get("use_pickle") is not False:
                        raise _Unsafe(f"its {what} '{fqn}' is stored as a pickle")
                    if not path_name.startswith(prefix) or "/" in path_name:
                        raise _Unsafe(f"its {what} '{fqn}' is a pickled Python object ({path_name})")
                    allowed.add(folder + path_name)
        extra = [n for n in records if n not in allowed and not n.startswith(k.EXTRA_DIR)]
    except RuntimeError as exc:
        raise CheckpointError(f"cannot read torch.export archive {p}: {_first_line(exc)}") from None
    if extra:
        first = sorted(extra)[0]
        what = "compiled AOTInductor code" if first.startswith(k.AOTINDUCTOR_DIR) else f"member {first}"
        raise _Unsafe(f"it holds {what}, which torch.export.load would load without checks")


def _graph_functions() -> tuple[Any, ...]:
    """The plain functions (besides operators) an exported graph may call: the arithmetic on
    sizes and the grad/autocast switches ``torch.export``'s verifier allows."""
    import math
    import operator

    names = "getitem add mul sub truediv floordiv mod pow neg abs eq ne lt le gt ge and_ or_ not_ lshift rshift"
    fns: list[Any] = [getattr(operator, n) for n in names.split()]
    fns += [math.ceil, math.floor, math.trunc, round, torch._C._set_grad_enabled]
    fns += [getattr(torch, n) for n in ("sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_not", "sym_sqrt")]
    fns += [torch.autograd.grad_mode.set_grad_enabled]
    fns += [torch.amp.autocast_mode._enter_autocast, torch.amp.autocast_mode._exit_autocast]
    return tuple(fns)


def _check_graph(ep: Any) -> None:
    """Refuse a loaded exported program whose graphs call anything but operators (ATen ops,
    higher-order ops on its own subgraphs, size arithmetic): what runs is the graph's calls.

    Raises:
        _Unsafe: naming the first other call.
    """
    allowed = _graph_functions()
    for gm in ep.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op in ("call_module", "call_method"):
                raise _Unsafe(f"its graph has a {node.op} node ({node.target})")
            if node.op != "call_function":
                continue
            target = node.target
            ok = isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
            if not ok and not any(target is fn for fn in allowed):
                raise _Unsafe(f"its graph calls {getattr(target, '__qualname__', target)!s}, not an operator")


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
# training checkpoints: where the weights are


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


# ----------------------------------------------------------------------------------------------
# preprocessing: candidate values, first offer wins


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


# ----------------------------------------------------------------------------------------------
# loading


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
        UsageError: ``input_shape`` and ``input_size`` disagree; a mean/std of the wrong length.
    """
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
        name = str(path)[5:]
        module = _timm_model(name, num_classes, offers.value("channels"), None)
        _offer_timm(offers, module, name, crop=True)
        return _finish(module, {"format": "timm", "arch": name}, offers, num_classes, str(path), notes)
    from .students.specs import build_spec, is_spec  # lazy: the students package imports timm

    if arch is None and is_spec(str(path)):
        module, spec_shape = build_spec(str(path), num_classes)
        offers.offer("channels", int(spec_shape[0]), "student-family spec")
        offers.offer("size", (int(spec_shape[1]), int(spec_shape[2])), "student-family spec")
        return _finish(module, {"format": "spec", "arch": str(path)}, offers, num_classes, str(path), notes)
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
        sd, meta, key = _read_weights(p, trust_checkpoint)
        arch = arch or meta.get("arch") or _arch_in(meta)
        if not arch:
            raise CheckpointError(f"{p} holds only weights; name the architecture with --arch <timm model name>")
        _check_meta_agrees(offers, meta)
        _offer_meta(offers, meta, "checkpoint")
        return _finish_timm(p, arch, sd, key, meta, offers, num_classes, data_shape, notes)
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        data = p.read_bytes()  # checked and loaded from the same bytes
        if not trust_checkpoint:
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
    elif p.suffix == ".pt2" or any(n.endswith("archive_format") or "/models/" in n for n in names):
        data = p.read_bytes()  # checked and loaded from the same bytes
        if not trust_checkpoint:
            try:
                _check_pt2(p, data)
            except _Unsafe as exc:
                raise _refused(p, str(exc)) from None
        try:
            ep = torch.export.load(io.BytesIO(data))
        except Exception as exc:
            raise CheckpointError(f"cannot load torch.export program {p}: {_first_line(exc)}") from None
        if not trust_checkpoint:
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
    else:
        if not names and not p.read_bytes()[:1] == b"\x80":
            raise CheckpointError(
                f"cannot read checkpoint {p}: corrupt or not a PyTorch file (neither a zip archive nor a pickle)"
            )
        obj = _load_object(p, trust_checkpoint)
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
                return _finish_timm(p, found_arch, weights, key, meta, offers, num_classes, data_shape, notes)
            else:
                raise CheckpointError(f"{p} is not a model checkpoint (found {_describe_keys(obj)})")
    return _finish(module, meta, offers, num_classes, str(p), notes)


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
    if not names and not p.read_bytes()[:1] == b"\x80":
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


def _finish_timm(
    p: Path,
    arch: str,
    sd: Mapping[str, torch.Tensor],
    key: str | None,
    meta: dict[str, Any],
    offers: _Offers,
    num_classes: int | None,
    data_shape: tuple[int, int, int] | None,
    notes: list[str],
) -> Teacher:
    """Build timm ``arch`` with the weights ``sd`` and finish the teacher."""
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
    return _finish(module, meta, offers, num_classes, str(p), notes)


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
