"""Error bands of the latency predictor: the calibration files and the band of a prediction.

``kd_compile/targets/calibration/<target>.json`` (written by :mod:`kd_compile.calibrate`) holds,
per regime ``runtime/precision/batch-regime``, the held-out error of the predictor for that
target and what it was measured on; ``_all_devices.json`` holds the bands for devices without a
file of their own (user TOMLs). A user's own fit (``kd-compile calibrate`` without ``--out``,
``<cache>/calibration/<target>.json``) takes precedence over the shipped file.
:func:`error_band` is what every roofline ``Measurement`` carries in ``extra["error_band"]``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..paths import cache_dir
from ..targets.profile import TargetProfile

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "targets" / "calibration"
SHARED_FIT = CALIBRATION_DIR / "_all_devices.json"
# published measurements of ImageNet-size models in tables no fit reads, summarised per target,
# runtime, precision, batch regime and source by ``benchmarks/external_check.py`` (:func:`out_of_sample`)
OUT_OF_SAMPLE = CALIBRATION_DIR / "_out_of_sample.json"


# the smallest batch of the tables behind the ``large`` bands (HELP's 32/64/256, timm's 256-1024, ...)
LARGE_MEASURED_FROM = 32


def batch_regime(batch: int) -> str:
    """``batch1`` for batch 1 (launch/dispatch-bound), ``large`` otherwise (measured: 32-1024)."""
    return "batch1" if batch <= 1 else "large"


def regime_key(runtime: str, precision: str, batch: int) -> str:
    """``runtime/precision/batch-regime``, the key of an error band."""
    return f"{runtime}/{precision}/{batch_regime(batch)}"


@lru_cache(maxsize=64)
def _read_json(path: str, mtime: float) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_calibration(name: str) -> dict[str, Any] | None:
    """The calibration document of target ``name`` (``calibration/<name>.json``), or None."""
    f = CALIBRATION_DIR / f"{name}.json"
    if not f.is_file():
        return None
    return _read_json(str(f), f.stat().st_mtime)


def user_calibration_file(name: str) -> Path:
    """Where ``kd-compile calibrate`` keeps a user's own fit of target ``name`` without ``--out``:
    ``<cache>/calibration/<name>.json`` (``kd_compile.paths.cache_dir``), never the package."""
    return cache_dir("calibration") / f"{name}.json"


def user_calibration(name: str) -> dict[str, Any] | None:
    """The user's own calibration of target ``name`` (written by ``kd-compile calibrate``), or None
    when there is none or it is unreadable (a damaged file is ignored, the shipped one used)."""
    f = user_calibration_file(name)
    try:
        doc = _read_json(str(f), f.stat().st_mtime) if f.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("target") != name or not isinstance(doc.get("constants"), dict):
        return None
    return {**doc, "source": str(f)}


def own_calibration(target: TargetProfile) -> dict[str, Any] | None:
    """The calibration of ``target``: the user's own fit (``kd-compile calibrate``, written to the
    user cache) when there is one, else the shipped file of a built-in (or plugin) target; a user
    TOML gets no shipped file, even if it reuses a built-in name, since its numbers may differ
    from the profile that was calibrated."""
    mine = user_calibration(target.name)
    if mine is not None:
        return mine
    return shipped_calibration(target)


def shipped_calibration(target: TargetProfile) -> dict[str, Any] | None:
    """The shipped calibration file of a built-in (or plugin) target; None for a user TOML, even
    one that reuses a built-in name, since its numbers may differ from the profile that was
    calibrated."""
    return read_calibration(target.name) if _builtin(target) else None


def _builtin(target: TargetProfile) -> bool:
    """A built-in (or plugin) target, not a user TOML (which may reuse a built-in's name)."""
    return target.path is None or Path(target.path).resolve().parent == CALIBRATION_DIR.parent


_PRECISION_FALLBACK = {"bf16": "fp16", "int8": "fp16", "fp16": "fp32", "fp32": "fp16"}


def error_band(target: TargetProfile, runtime: str, precision: str, batch: int) -> dict[str, Any]:
    """The measured error band of predictions for ``target`` in this regime.

    Returns:
        ``{"median_ape", "p80_ape", "n", "regime", "basis", "transfer", "files", "families"}``:
        the held-out median and 80th-percentile absolute percentage error (fractions: 0.23 = 23%),
        the number of held-out predictions they come from, the regime key, what they were
        measured on, how the target relates to the measurements (``"fitted on this device"``,
        ``"device left out"``, or ``"proxy: ..."`` when the regime itself has no measurements),
        the measured files and the families of the models measured (``calibrate.FAMILIES``
        names). ``median_ape`` is None when nothing was measured that could stand for this
        regime. A device fitted on its own rows also gives ``family_left_out``
        (``{"median_ape", "p80_ape", "n", "families"}``): the error on its rows of a family left
        out of every fit, the closer guide for a student of a family its tables lack.
    """
    key = regime_key(runtime, precision, batch)
    doc = own_calibration(target)
    bands: dict[str, Any] = doc.get("error_bands", {}) if doc is not None else left_out_bands(target)
    band = bands.get(key)
    note = ""
    if band is None:
        alt = regime_key(runtime, _PRECISION_FALLBACK.get(precision, "fp16"), batch)
        if alt in bands:
            band, note = bands[alt], f"proxy: no {precision} measurements, band of {alt}"
    if band is None:
        # a CPU of the user's with no calibration at all: only the development VM's CPU was measured,
        # and one CPU cannot be left out to measure a transfer; the user can measure theirs
        own = (f" on this CPU; fit one from a table of yours with kd-compile calibrate --target {target.path} "
               f"--table T.csv --runtime {runtime} --precision {precision}"
               if target.kind == "cpu" and doc is None and not _builtin(target) else "")
        return {"median_ape": None, "p80_ape": None, "n": 0, "regime": key,
                "basis": f"no measured tables for {runtime} ({precision}) stand for this regime{own}: unvalidated",
                "transfer": "none", "files": []}
    out = {"median_ape": band.get("median_ape"), "p80_ape": band.get("p80_ape"), "n": band.get("n", 0),
           "regime": key, "basis": band.get("basis", ""), "transfer": band.get("transfer", ""),
           "files": list(band.get("files", [])), "families": list(band.get("families", []))}
    if isinstance(band.get("family_left_out"), dict):
        out["family_left_out"] = dict(band["family_left_out"])
    for k in ("input_px", "small_input_check"):  # the sizes it was measured at, and a check below them
        if band.get(k):
            out[k] = copy.deepcopy(band[k])
    if note:
        out["transfer"] = f"{note}; {out['transfer']}"
    if 1 < batch < LARGE_MEASURED_FROM:
        out["caveat"] = (f"batch {batch} lies between the measured regimes (batch 1, and {LARGE_MEASURED_FROM} and "
                         f"above): this is the band measured at batch {LARGE_MEASURED_FROM} and above")
    if doc is None:
        out["transfer"] = f"{left_out_note(target)}; {out['transfer']}"
    return out


def left_out_bands(target: TargetProfile) -> dict[str, Any]:
    """The bands of a target without a calibration of its own (a user's TOML): the all-device
    fit's device-left-out bands of its kind, by regime."""
    return (read_calibration(SHARED_FIT.stem) or {}).get("transfer_bands", {}).get(target.kind, {})


def left_out_note(target: TargetProfile) -> str:
    """How such a band relates to the target, ahead of its own ``transfer``."""
    return f"device left out (no calibration file for '{target.name}')"


# HELP's NAS-Bench-201 and FBNet tables: networks on 32-px CIFAR inputs (``../shared/data/latency``)
SMALL_INPUT_FAMILIES = frozenset({"nb201", "fbnet"})


def small_input_band(band: dict[str, Any]) -> bool:
    """The band was measured on HELP's 32-px networks only (``SMALL_INPUT_FAMILIES``)."""
    families = set(band.get("families") or [])
    return bool(families) and families <= SMALL_INPUT_FAMILIES


def out_of_sample(target: TargetProfile, runtime: str, precision: str, batch: int) -> list[dict[str, Any]] | None:
    """What published measurements of ImageNet-size models, in tables no fit reads, say of the
    predictor on this built-in target in this runtime, precision and batch regime (``OUT_OF_SAMPLE``,
    written by ``benchmarks/external_check.py``): one summary per source, ``{"source", "models", "n",
    "median_ape", "p80_ape", "median_ratio", "batches", "input_px"}`` (``median_ratio``: predicted /
    measured; ``input_px``: the smallest and largest input side), or None where none was measured."""
    if not _builtin(target):
        return None
    found = _out_of_sample_doc().get("entries", {}).get(f"{target.name}/{regime_key(runtime, precision, batch)}")
    if not isinstance(found, list):
        return None
    return [dict(e) for e in found if isinstance(e, dict)] or None


def proxy_caveat(target: TargetProfile, runtime: str, precision: str, batch: int) -> str | None:
    """For a band that stands in for a precision no table calibrates (``"proxy: ..."``), what tables no
    fit reads measured in this runtime, precision and batch regime on other GPUs, in words; None
    where none did."""
    key = regime_key(runtime, precision, batch)
    parts = []
    for where, found in sorted(_out_of_sample_doc().get("entries", {}).items()):
        gpu, _, regime = where.partition("/")
        if regime != key or gpu == target.name or not isinstance(found, list):
            continue
        for o in found:
            p80 = f", {100 * o['p80_ape']:.0f}% p80" if o.get("p80_ape") is not None else ""
            parts.append(f"{o['models']} on the {gpu} ({o['source']}; {o['n']}): ±{100 * o['median_ape']:.0f}% "
                         f"median{p80} error, predicted x{o['median_ratio']:.2f} the measured time (median)")
    if not parts:
        return None
    return (f"no {precision} table calibrates this band, which is a proxy; out of sample "
            f"(benchmarks/external_check.py) {runtime} {precision} measured elsewhere: " + "; ".join(parts))


def _out_of_sample_doc() -> dict[str, Any]:
    f = OUT_OF_SAMPLE
    return _read_json(str(f), f.stat().st_mtime) if f.is_file() else {}


def ratio_span(ratios: Iterable[float]) -> str:
    """``x0.89-x2.19`` over some predicted / measured ratios, ``x2.19`` where they print alike."""
    values = list(ratios)
    lo, hi = f"{min(values):.2f}", f"{max(values):.2f}"
    return f"x{lo}" if lo == hi else f"x{lo}-x{hi}"


def size_range_caveat(band: dict[str, Any], input_px: int) -> str | None:
    """A warning for a model whose input lies outside the sizes the band was measured at (the band's
    ``input_px``, kept by ``kd-compile calibrate``; the ``cpu`` target's: 96-256 px), with what
    measured models below them showed (``small_input_check``, ``benchmarks/cpu_table.py``); None
    inside them, or for a band that does not say."""
    rng = band.get("input_px")
    if not (isinstance(rng, list) and len(rng) == 2) or rng[0] <= input_px <= rng[1]:
        return None
    lo, hi = rng
    text = f"this model's input is {input_px} px, outside the {lo}-{hi} px of the models the band was measured on"
    chk = band.get("small_input_check")
    if input_px < lo and isinstance(chk, dict) and chk.get("n"):
        a, b = chk["input_px"]
        text += (f"; on {chk['n']} models at {a}-{b} px, measured and not fitted (benchmarks/cpu_table.py), the "
                 f"same calibration erred ±{100 * chk['median_ape']:.0f}% median ({100 * chk['p80_ape']:.0f}% p80), "
                 f"predicted / measured {ratio_span((chk['min_ratio'], chk['max_ratio']))}")
    return text


def large_input_notes(
    band: dict[str, Any], target: TargetProfile, runtime: str, precision: str, batch: int, input_px: int
) -> dict[str, Any]:
    """What a band gains for a model whose input is ImageNet-size (64 px or more; empty otherwise):

    - ``out_of_sample``: this target's figures from tables no fit reads (:func:`out_of_sample`),
      where there are some for this runtime, precision and batch regime;
    - ``caveat``: for a band measured on 32-px networks only (HELP's tables), which cannot speak for
      such a model, a warning that says so and points to what was measured out of sample instead:
      this GPU's figures, else, per source, the range of the per-GPU median ratios over the GPUs
      whose band in this regime was measured on 32-px networks only; for a proxy band (a precision
      no table calibrates, int8) on a GPU with no figures of its own, what other GPUs measured out
      of sample in this runtime and precision (:func:`proxy_caveat`).
    """
    if input_px < 64:
        return {}
    out: dict[str, Any] = {}
    mine = out_of_sample(target, runtime, precision, batch)
    if mine is not None:
        out["out_of_sample"] = mine
    elif str(band.get("transfer", "")).startswith("proxy:"):
        proxy = proxy_caveat(target, runtime, precision, batch)
        if proxy:
            out["caveat"] = proxy
    if not small_input_band(band):
        return out
    head = f"measured on 32-px networks only, and this model's input is {input_px} px"
    pooled = _out_of_sample_doc().get("small_input_bands", {}).get(regime_key(runtime, precision, batch)) or []
    pooled = [p for p in pooled if isinstance(p, dict) and p.get("median_ratio_by_device")]
    if mine is not None:
        out["caveat"] = f"{head}: this GPU's out-of-sample figures, by kind of ImageNet-size model, follow"
    elif pooled:
        parts = []
        for p in pooled:
            r = p["median_ratio_by_device"]
            of = f"each of {len(r)} GPUs: {', '.join(sorted(r))}" if len(r) > 1 else f"the {next(iter(r))}'s rows"
            parts.append(f"{p['models']} {ratio_span(r.values())} ({p['source']}; the median of {of}; "
                         f"±{100 * p['median_ape']:.0f}% median error over {p['n']})")
        out["caveat"] = (f"{head}: out of sample (benchmarks/external_check.py), predicted / measured on the GPUs "
                         f"whose {runtime} {precision} band here is measured so: " + "; ".join(parts))
    else:
        out["caveat"] = (f"{head}: out of sample (benchmarks/external_check.py) ImageNet-size models fell outside "
                         "such a band")
    return out
