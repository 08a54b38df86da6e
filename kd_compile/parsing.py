"""Human-written values: sizes ("4M"), durations ("2ms"), byte sizes ("64MB"), latency limits
("1x", "2ms", "none"), input shapes and preprocessing values, parsed into numbers with one-line
``UsageError``s that name the option."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*$")
_SIZE_MULT = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}

_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s)?\s*$")
_TIME_TO_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}

_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")


def parse_size(text: str | int | float, what: str = "size") -> int:
    """Parse a count such as ``4M``, ``600K``, ``1.2G`` or ``123456`` into an int.

    Raises:
        UsageError: if the text is not a positive count.
    """
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise UsageError(f"invalid {what} {text!r}: expected a number with an optional K/M/G suffix, e.g. 4M")
        value = float(m.group(1)) * _SIZE_MULT[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be positive")
    return int(round(value))


def parse_latency_ms(text: str | int | float, what: str = "latency") -> float:
    """Parse a duration such as ``2ms``, ``500us``, ``0.01s`` (bare numbers are ms) into ms."""
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _TIME_RE.match(str(text))
        if not m:
            raise UsageError(f"invalid {what} {text!r}: expected a duration such as 2ms, 500us or 0.01s")
        value = float(m.group(1)) * _TIME_TO_MS[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be positive")
    return value


def parse_bytes(text: str | int | float, what: str = "memory") -> int:
    """Parse a byte size such as ``64MB``, ``1.5GiB`` or ``4M`` (decimal unless ``i``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return parse_size(text, what)
    m = _BYTES_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: expected e.g. 64MB or 1.5GiB")
    base = 1024 if m.group(3) else 1000
    exp = " kmgt".index(m.group(2).lower() or " ")
    value = float(m.group(1)) * base**exp
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be positive")
    return int(round(value))


@dataclass(frozen=True)
class LatencyLimit:
    """A latency limit: absolute (ms) or relative to the teacher's latency on the same target
    and by the same method (``relative``: ``value`` is a multiple, e.g. 1.0 = "no slower")."""

    value: float
    relative: bool = False

    def limit_ms(self, teacher_ms: float | None) -> float | None:
        """The limit in ms (a relative one needs the teacher's latency)."""
        if not self.relative:
            return self.value
        return None if teacher_ms is None else self.value * teacher_ms

    def __str__(self) -> str:
        return f"{self.value:g}x" if self.relative else f"{self.value:g}ms"


def parse_latency_limit(text: Any, what: str = "--max-latency") -> LatencyLimit | None:
    """``2ms``/``500us`` (absolute), ``1x``/``0.5x`` (relative to the teacher), ``none`` (no limit)."""
    if isinstance(text, LatencyLimit):
        return text
    if isinstance(text, str):
        t = text.strip().lower()
        if t in ("none", "off", "no"):
            return None
        if t.endswith("x"):
            try:
                v = float(t[:-1])
            except ValueError:
                v = math.nan
            if not (math.isfinite(v) and v > 0):
                raise UsageError(f"invalid {what} {text!r}: a relative limit is a positive multiple, e.g. 1x or 0.5x")
            return LatencyLimit(v, relative=True)
    try:
        return LatencyLimit(parse_latency_ms(text, what))
    except UsageError as exc:  # name every form a limit takes, not only durations
        if "expected a duration" not in str(exc):
            raise
        raise UsageError(
            f"invalid {what} {text!r}: expected a duration (2ms, 500us, 0.01s), a multiple of the teacher's "
            "latency (1x, 0.5x) or none"
        ) from None


def format_count(n: float) -> str:
    """Human form of a count: 4.12M, 600K, 1.2G."""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.3g}"


def parse_shape(text: Any, flag: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        parts = tuple(text)
    else:
        try:
            parts = tuple(int(x) for x in str(text).replace("x", ",").split(","))
        except ValueError:
            raise UsageError(f"{flag} must be C,H,W (e.g. 3,224,224), got '{text}'") from None
    if len(parts) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in parts):
        raise UsageError(f"{flag} must be C,H,W (e.g. 3,224,224), got '{text}'")
    return parts  # type: ignore[return-value]


def parse_input_size(text: Any, flag: str) -> tuple[int, int] | None:
    """``32`` (square) or ``32x48`` / ``32,48`` (H then W) -> (H, W)."""
    if text is None:
        return None
    bad = UsageError(f"{flag} must be H or HxW (e.g. 32 or 224x224), got '{text}'")
    if isinstance(text, (tuple, list)):
        parts = tuple(text)
    elif isinstance(text, int) and not isinstance(text, bool):
        parts = (text,)
    else:
        try:
            parts = tuple(int(x) for x in re.split(r"[xX,*]", str(text).strip()))
        except ValueError:
            raise bad from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in parts):
        raise bad
    return parts  # type: ignore[return-value]


def parse_channel_values(positive: bool) -> Callable[[Any, str], tuple[float, ...] | None]:
    """A parser of one or three comma-separated finite numbers (per-channel mean or std)."""

    def parse(text: Any, flag: str) -> tuple[float, ...] | None:
        if text is None:
            return None
        what = "positive numbers" if positive else "numbers"
        bad = UsageError(f"{flag} must be three comma-separated {what} or one (e.g. 0.485,0.456,0.406), got '{text}'")
        items = list(text) if isinstance(text, (tuple, list)) else str(text).replace(" ", ",").split(",")
        try:
            values = tuple(float(v) for v in items if not (isinstance(v, str) and not v.strip()))
        except (TypeError, ValueError):
            raise bad from None
        if len(values) not in (1, 3) or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
            raise bad
        return values

    return parse


def parse_interpolation(text: Any, flag: str) -> str | None:
    if text is None:
        return None
    value = str(text).strip().lower()
    if value not in ("bilinear", "bicubic", "nearest"):
        raise UsageError(f"{flag} must be bilinear, bicubic or nearest, got '{text}'")
    return value


def parse_crop_pct(text: Any, flag: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} must be a fraction in (0, 1], e.g. 0.875, got '{text}'") from None
    if isinstance(text, bool) or not 0 < value <= 1:
        raise UsageError(f"{flag} must be a fraction in (0, 1], e.g. 0.875, got '{text}'")
    return value


def optional(parse: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda v, flag: None if v is None else parse(v, flag)


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _kv_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_kv_options(text: Any, flag: str) -> str:
    """``KEY=VALUE[,KEY=VALUE...]`` (or a dict from the Python API) as its canonical text: keys
    sorted, no spaces, ``""`` for none. Values are read by :func:`kv_options`.

    Raises:
        UsageError: an entry without ``=``, a key that is not a name, or a key given twice.
    """
    if text is None or text == "" or text == {}:
        return ""
    if isinstance(text, dict):
        items = [(str(k), "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                 for k, v in text.items()]  # fmt: skip
    else:
        items = []
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            key, eq, value = part.partition("=")
            if not eq:
                raise UsageError(f"{flag} takes KEY=VALUE pairs separated by commas (e.g. n_init=12), got '{part}'")
            items.append((key.strip(), value.strip()))
    keys = [k for k, _ in items]
    for k in keys:
        if not _KEY_RE.match(k):
            raise UsageError(f"{flag}: '{k}' is not an option name")
    if len(set(keys)) != len(keys):
        raise UsageError(f"{flag}: '{next(k for k in keys if keys.count(k) > 1)}' is given twice")
    if any("," in v for _, v in items):
        raise UsageError(f"{flag}: a value may not contain ','")
    return ",".join(f"{k}={v}" for k, v in sorted(items))


def kv_options(text: str) -> dict[str, Any]:
    """The options of a canonical ``KEY=VALUE,...`` text (``parse_kv_options``), each value read
    as a bool (``true``/``false``), None (``none``), an int, a float, or else left as text."""
    out: dict[str, Any] = {}
    for part in filter(None, (text or "").split(",")):
        key, _, value = part.partition("=")
        out[key] = _kv_value(value)
    return out
