"""The checks that refuse unsafe teacher files, and loading pickles as data.

A file is read as data unless the user trusts it: ``torch.load(weights_only=True)`` (with a few
plain-data classes allowed), a TorchScript archive's pickles scanned for globals outside torch's
(``_check_torchscript``), a ``.pt2`` archive's members and shape expressions checked against
what ``torch.export.load`` reads as plain data (``_check_pt2``) and its loaded graph checked to
call only operators (``_check_graph``). A pickled module is unpickled only with trust
(``_load_object``).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _first_byte(path: Path) -> bytes:
    """The file's first byte (b"" when empty or unreadable), without reading the rest of it."""
    try:
        with open(path, "rb") as f:
            return f.read(1)
    except OSError:
        return b""


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
