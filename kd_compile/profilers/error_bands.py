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
        regime. A regime no fit measures but a table no fit reads does (TensorRT int8 at batch
        1, OpenPPL's T4 table) has that table's error as its band (:func:`out_of_sample_band`);
        one neither does has another precision's band, marked ``"proxy: ..."``. A device fitted on
        its own rows also gives ``family_left_out`` (``{"median_ape", "p80_ape", "n",
        "families"}``): the error on its rows of a family left out of every fit, the closer guide
        for a student of a family its tables lack.
    """
    key = regime_key(runtime, precision, batch)
    doc = own_calibration(target)
    bands: dict[str, Any] = doc.get("error_bands", {}) if doc is not None else left_out_bands(target)
    band = bands.get(key)
    note = ""
    if band is None:
        alt = regime_key(runtime, _PRECISION_FALLBACK.get(precision, "fp16"), batch)
        if alt in bands:
            # a precision no fit measures on this GPU: a table no fit reads may have measured it
            unfitted = out_of_sample_band(target, runtime, precision, batch) if target.kind != "cpu" else None
            if unfitted is not None:
                return unfitted
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


def out_of_sample_band(target: TargetProfile, runtime: str, precision: str, batch: int) -> dict[str, Any] | None:
    """The band of a regime whose precision no fit measures on a GPU but tables no fit reads do
    (``OUT_OF_SAMPLE``; ``error_band`` asks only then, and not for a CPU): their error, this
    built-in target's rows where it has some (:func:`out_of_sample`), else those of the other GPUs
    (the first by name; ``transfer`` says the device was left out); of the sources measured there,
    the one with the most models. None where no such table measured it."""
    key = regime_key(runtime, precision, batch)
    mine = target.name if _builtin(target) else None  # a user's TOML of the same name is another board
    gpu, found = mine, out_of_sample(target, runtime, precision, batch)
    if found is None:
        entries = _out_of_sample_doc().get("entries", {})
        others = sorted(w for w in entries if w.partition("/")[2] == key and w.partition("/")[0] != mine)
        if not others:
            return None
        gpu, found = others[0].partition("/")[0], entries[others[0]]
    summaries = [o for o in found if isinstance(o, dict)] if isinstance(found, list) else []
    if not summaries:
        return None
    o = max(summaries, key=lambda e: e.get("n", 0))
    sides = o.get("input_px") or ["?"]
    px = f"{sides[0]}" if sides[0] == sides[-1] else f"{sides[0]}-{sides[-1]}"
    batches = "/".join(str(b) for b in o.get("batches") or []) or "?"
    transfer = ("measured on this device, out of sample" if gpu == mine
                else f"device left out: measured on the {gpu} only, out of sample")
    return {"median_ape": o.get("median_ape"), "p80_ape": o.get("p80_ape"), "n": o.get("n", 0), "regime": key,
            "basis": (f"no fit measures this regime; {o.get('n')} {o.get('models')} measured on the {gpu} at batch "
                      f"{batches}, {px} px ({o.get('source')}, benchmarks/external_check.py), none fitted: predicted "
                      f"x{o.get('median_ratio', 0):.2f} the measured time (median)"),
            "transfer": transfer, "files": [], "families": list(o.get("families") or []),
            "out_of_sample_band": True}  # fmt: skip


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
      where there are some for this runtime, precision and batch regime (and the band is not
      already theirs, :func:`out_of_sample_band`);
    - ``caveat``: for a band measured on 32-px networks only (HELP's tables), which cannot speak for
      such a model, a warning that says so and points to what was measured out of sample instead:
      this GPU's figures, else, per source, the range of the per-GPU median ratios over the GPUs
      whose band in this regime was measured on 32-px networks only.
    """
    if input_px < 64 or band.get("out_of_sample_band"):
        return {}
    out: dict[str, Any] = {}
    mine = out_of_sample(target, runtime, precision, batch)
    if mine is not None:
        out["out_of_sample"] = mine
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
