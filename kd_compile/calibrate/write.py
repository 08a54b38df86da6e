"""The entry points that write ``calibration/<target>.json``: :func:`calibrate_all` (every GPU
target, from the shared tables) and :func:`calibrate` (one target, from a user's timm tables)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..paths import cache_dir
from ..profilers.error_bands import left_out_bands, left_out_note, shipped_calibration
from ..profilers.roofline import (
    CALIBRATION_DIR,
    RUNTIME_RULES,
    SHARED_FIT,
    Constants,
    DeviceScales,
    batch_regime,
    check_predictable,
    load_calibration,
    read_calibration,
)
from ..targets.profile import PRECISIONS, TargetProfile, get_target, list_targets
from .cpus import cpu_transfer_bands
from .fit import CPU_FITTED, RIDGE, device_scales, fit_cpu, fit_on, quality
from .holdout import bands, check_bands, family_ridge, kfold_on_device, leave_one_device_out, transfer_bands
from .problem import Problem, build_problem
from .tables import MeasuredRow, load_check_rows, load_measurements, read_timm_table, select_timm, timm_spec_parts


def gpu_targets() -> list[str]:
    """Built-in targets that are GPUs (discrete or Jetson)."""
    return [n for n in list_targets() if get_target(n).kind != "cpu"]


def _rounded(c: Constants) -> dict[str, float]:
    return {k: float(f"{v:.5g}") for k, v in c.to_dict().items()}


def calibrate_all(
    data_dir: Path | None = None, out_dir: Path = CALIBRATION_DIR, verbose: bool = False,
    problem: Problem | None = None, lodo: tuple[np.ndarray, dict[str, Constants]] | None = None,
    lofo: np.ndarray | None = None, ridge: tuple[float, dict[float, float]] | None = None,
) -> dict[str, Any]:
    """Fit on every measured table and write ``<target>.json`` for every GPU target (module docstring).

    Args:
        data_dir: the measured tables (default ``KD_LATENCY_DATA`` or ``../shared/data/latency``).
        out_dir: where the calibration files go.
        verbose: print progress.
        problem, lodo: reuse an already built problem / leave-one-device-out result.
        lofo: leave-one-family-out predictions of every row (``holdout.leave_one_family_out``):
            each measured device's bands then also carry the error on a family its tables lack
            (``family_left_out``), which a random fold over its models does not show.
        ridge: reuse an already chosen device scales' ridge and its scores (``holdout.family_ridge``
            on every row with the constants fitted on all devices).

    Returns:
        ``{"constants": ..., "targets": {name: {"transfer": ..., "error_bands": ...}}}``.
    """
    t_start = time.perf_counter()
    problem = problem or build_problem(load_measurements(data_dir), verbose=verbose)
    files = sorted({r.file for r in problem.rows})
    everything = np.ones(len(problem.rows), bool)
    c_all = fit_on(problem, everything)
    if verbose:
        print(f"  fit on all devices: {time.perf_counter() - t_start:.0f}s", flush=True)
    pred_lodo, lodo_fits = lodo or leave_one_device_out(problem, verbose=verbose)
    ridge, ridge_scores = ridge or family_ridge(problem, everything, c_all)
    if verbose:
        print(f"  device scales' ridge {ridge:g} (leave-one-family-out scores "
              + ", ".join(f"{k:g}: {v:.4f}" for k, v in ridge_scores.items()) + ")", flush=True)
    measured = sorted({r.device for r in problem.rows})
    transfer = transfer_bands(problem, pred_lodo)
    # a CPU profile without a table of its own: every measured CPU (HELP's Xeons, this VM), predicted from its datasheet
    cpu = cpu_transfer_bands(c_all, data_dir=data_dir)
    if cpu:
        transfer["cpu"] = cpu
    # torch.compile: s_compile is fitted on the one table that measures it, which no other fit reads,
    # and its regimes carry that table's cross-validated error
    # each measured device's own scales, fitted once: s_compile's own-calibration band and the device's file use them
    # (s_compile reaches no row of these tables, so fitting them before it is set changes nothing)
    own_scales = {d: device_scales(problem, problem.mask(lambda r, d=d: r.device == d) & problem.fit_mask,
                                   lodo_fits[d], ridge=ridge)[d] for d in measured}
    s_compile, check, check_own = check_bands(load_check_rows({r.spec for r in problem.rows}), lodo_fits, own_scales)
    c_all = dataclasses.replace(c_all, s_compile=s_compile)
    lodo_fits = {d: dataclasses.replace(c, s_compile=s_compile) for d, c in lodo_fits.items()}
    for kind, extra in check.items():
        for key, band in extra.items():
            transfer.setdefault(kind, {}).setdefault(key, band)
    shared = {
        "about": "Latency predictor constants fitted on every measured device together, and the "
                 "leave-one-device-out error bands used for devices without measurements. Written by "
                 "kd_compile.calibrate.calibrate_all.",
        "predictor": "roofline v2 (kd_compile/profilers/roofline.py)",
        "constants": _rounded(c_all),
        "constants_basis": f"fitted on all measured devices: {', '.join(measured)}",
        "fitted_on": files,
        "transfer_bands": transfer,
        "device_scales_ridge": {
            "value": ridge,
            "basis": "the candidate whose device scales best predict an architecture family they were not "
                     "fitted on (kd_compile.calibrate.holdout.family_ridge, constants fitted on all devices): "
                     "mean over (device, runtime, batch regime, table) of the median absolute log error",
            "scores": {f"{k:g}": round(v, 5) for k, v in ridge_scores.items()},
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SHARED_FIT.name).write_text(json.dumps(shared, indent=1) + "\n", encoding="utf-8")
    summary: dict[str, Any] = {"constants": shared["constants"], "targets": {}}
    for name in gpu_targets():
        if name in measured:
            c = lodo_fits[name]
            own = problem.mask(lambda r, n=name: r.device == n)
            scales = own_scales[name]
            held = kfold_on_device(problem, name, c, ridge=ridge)
            own_bands = bands(problem, held, own, "fitted on this device", per_device_weight=False)
            if lofo is not None:
                _add_family_bands(problem, lofo, own, own_bands)
            # torch.compile on a GPU whose own eager tables (same precision, large batch) calibrate it:
            # s_compile's error on its device's own calibration
            eager = {(r.precision, batch_regime(r.batch)) for r, m in zip(problem.rows, own, strict=True)
                     if m and r.runtime == "torch"}
            own_bands.update({key: band for key, band in check_own.items()
                              if (key.split("/")[1], key.split("/")[2]) in eager})
            # regimes the device was not measured in: the transfer band (its scales still apply)
            kind = get_target(name).kind
            eb = {**{k: v for k, v in transfer[kind].items() if k not in own_bands}, **own_bands}
            doc = {
                "target": name,
                "predictor": shared["predictor"],
                "constants": _rounded(c),
                "constants_basis": f"fitted without {name} (leave-one-device-out) on: "
                                   f"{', '.join(d for d in measured if d != name)}",
                "device_scales": scales.to_dict(),
                "device_scales_fitted_on": sorted({r.file for r, m in zip(problem.rows, own, strict=True) if m}),
                "device_scales_ridge": ridge,
                "fitted_on": files,
                "error_bands": eb,
            }
        else:
            doc = {
                "target": name,
                "predictor": shared["predictor"],
                "constants": shared["constants"],
                "constants_basis": shared["constants_basis"],
                "device_scales": DeviceScales().to_dict(),
                "device_scales_fitted_on": [],
                "fitted_on": files,
                "error_bands": transfer[get_target(name).kind],
            }
        (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        summary["targets"][name] = {"measured": name in measured, "error_bands": doc["error_bands"]}
    if verbose:
        print(f"  calibration written to {out_dir} in {time.perf_counter() - t_start:.0f}s")
    return summary


def _add_family_bands(problem: Problem, lofo: np.ndarray, own: np.ndarray, own_bands: dict[str, Any]) -> None:
    """Add to each of a device's own regime bands the error of its rows predicted with their
    family left out (constants, device scales and their ridge fitted without the family)."""
    fam = bands(problem, lofo, own, "family left out", per_device_weight=False)
    for key, band in own_bands.items():
        if key in fam:
            band["family_left_out"] = {"median_ape": fam[key]["median_ape"], "p80_ape": fam[key]["p80_ape"],
                                       "n": fam[key]["n"], "families": len(fam[key]["families"])}


def shipped_ridge() -> float:
    """The device scales' ridge the shipped calibration chose (``_all_devices.json``), else
    ``fit.RIDGE``."""
    doc = read_calibration(SHARED_FIT.stem) or {}
    value = (doc.get("device_scales_ridge") or {}).get("value")
    return float(value) if isinstance(value, (int, float)) and value > 0 else RIDGE


def scales_ridge(prof: TargetProfile) -> float:
    """The pull toward 1 of a device's scales fitted on its own table (:func:`calibrate`).

    A GPU's unit scales are the all-device fit's prediction from its datasheet, whose error on a
    device left out is measured, and the shipped calibration chose how strongly a GPU's own rows
    pull away from it (:func:`shipped_ridge`, chosen on devices of 600 rows and more). No CPU is in
    that fit: a CPU's unit scales are GPU constants applied to a CPU's datasheet, a prior with no
    measured basis (on the ``cpu`` target's table they predict x1.46 the measured time), so a
    CPU's own rows take only the default pull (``fit.RIDGE``), there to keep a short table's scales
    finite."""
    return RIDGE if prof.kind == "cpu" else shipped_ridge()


def calibration_path(name: str, out: Path | str | None) -> Path:
    """Where ``calibrate`` writes target ``name`` 's fit: ``out`` (``out/<name>.json`` when it is
    a folder), else ``<cache>/calibration/<name>.json`` (``kd_compile.paths.cache_dir``), never
    the installed package, whose files are data shipped with it.

    Raises:
        UsageError: ``name`` is not one plain file name (a target's name is data from a file).
    """
    if not name or Path(name).name != name or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"target name {name!r} cannot be a file name")
    if out is None:
        return cache_dir("calibration") / f"{name}.json"
    out = Path(out)
    return out / f"{name}.json" if out.is_dir() else out


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UsageError(f"cannot write the calibration to {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write the calibration to {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _left_out_bands(prof: TargetProfile) -> dict[str, Any]:
    """A device without a shipped calibration (a user's own TOML): the bands its regimes carry
    before any fit of its own, the device-left-out bands of its kind, which a fit keeps beside the
    regime it measured."""
    note = left_out_note(prof)
    return {"error_bands": {k: {**v, "transfer": f"{note}; {v.get('transfer', '')}"}
                            for k, v in left_out_bands(prof).items()}}


def merged_scales(old: dict[str, Any] | None, new: DeviceScales) -> DeviceScales:
    """A calibration file's device scales with the runtimes of ``new`` (one fit's) replaced and every
    other runtime's kept: a user's table of one runtime must not reset the scales another runtime's
    table set (a T4's TensorRT scales, when the user calibrates eager PyTorch on it)."""
    if not old:
        return new
    prev = DeviceScales.from_dict(old)
    # in name order: a set's order moves with the interpreter's hash seed, and the file would with it
    by_rt = {rt: prev.roofline_for(rt) for rt in sorted({*prev.fixed, *prev.roofline_by_runtime})}
    by_rt.update({rt: new.roofline_for(rt) for rt in sorted({*new.fixed, *new.roofline_by_runtime})})
    mem = {**prev.memory_by_runtime, **new.memory_by_runtime}

    def geomean(d: dict[str, float]) -> float:
        return round(math.exp(sum(math.log(v) for v in d.values()) / len(d)), 5)

    return DeviceScales(geomean(by_rt) if by_rt else new.roofline, {**prev.fixed, **new.fixed}, by_rt,
                        geomean(mem) if mem else None, mem)


def _constants_in_use(doc: dict[str, Any], prof: TargetProfile, runtime: str) -> Constants | None:
    """A CPU calibration's constants where a band of another runtime's own table was measured with
    them (``fit_own_table`` 's ``keep``); ``None`` where no such band stands and they may be refitted."""
    if prof.kind != "cpu" or not isinstance(doc.get("constants"), dict):
        return None
    others = [k for k, v in (doc.get("error_bands") or {}).items()
              if isinstance(v, dict) and v.get("transfer") == "fitted on this device" and k.split("/")[0] != runtime]
    return Constants.from_dict(doc["constants"]) if others else None


def fit_own_table(
    problem: Problem, prof: TargetProfile, ridge: float, keep: Constants | None = None
) -> tuple[Constants, DeviceScales, np.ndarray, dict[str, Any]]:
    """What :func:`calibrate` fits on one device's own table (``problem``, every row the device's):
    the constants to predict it with, its scales, each row's prediction held out 5-fold over the
    models, and where the constants came from (``load_calibration`` 's source).

    A GPU keeps the constants of its calibration (or the all-device fit) and fits its scales. A CPU
    fits ``fit.CPU_FITTED`` as well, from the all-device fit's constants (never from an earlier CPU
    fit, so a refit of the same table gives the same file), refitted in every fold. ``keep`` (a CPU
    whose calibration already holds the band of another runtime's own table, measured with the
    constants fitted there) holds those constants and fits the scales alone, as a GPU's, so that
    band stays exact."""
    constants, _, source = load_calibration(prof)
    own = np.ones(len(problem.rows), bool)
    if keep is not None:
        constants = keep
    if prof.kind != "cpu" or keep is not None:
        scales = device_scales(problem, own, constants, ridge=ridge)[prof.name]
        return constants, scales, kfold_on_device(problem, prof.name, constants, ridge=ridge), source
    shared = read_calibration(SHARED_FIT.stem)
    if shared is not None and "constants" in shared:
        constants = Constants.from_dict(shared["constants"])
        source = {"constants_basis": f"{shared.get('constants_basis', SHARED_FIT.name)}; "
                                     f"{', '.join(CPU_FITTED)} fitted on this CPU's table"}
    base = constants  # every fold starts here, not from the fit on all rows

    def fit(train: np.ndarray) -> tuple[Constants, dict[str, DeviceScales]]:
        return fit_cpu(problem, train, base, prof.name, ridge=ridge)

    fitted, scales = fit(own)
    return fitted, scales[prof.name], kfold_on_device(problem, prof.name, base, ridge=ridge, fit=fit), source


def calibrate(
    target: str,
    tables: list[Path],
    runtime: str = "torch",
    precision: str = "fp16",
    models: int | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Fit ``target`` 's device scales to the user's measured timm-format tables.

    The constants stay those of the target's calibration (or the all-device fit); the GPU and
    host scales of the device are fitted on the tables (pulled toward 1 as :func:`scales_ridge`
    says), and the error band of the regime is the 5-fold held-out error over the tables' models.
    Written into ``out`` (default ``<cache>/calibration/<target>.json``, see
    :func:`calibration_path`; the installed package is never written), keeping the file's other
    bands (or those of the target's shipped calibration when the file is new).

    Args:
        target: target name or TOML path (peaks and bandwidth come from its profile).
        tables: timm ``benchmark-infer-*.csv`` files measured on that device.
        runtime: runtime the tables were measured with (default ``torch``, timm's eager benchmark).
        precision: precision of the tables (default ``fp16``, timm's AMP runs).
        models: use at most this many curated models (default: all in the tables).
        out: calibration JSON (or folder) to write/merge into.

    Returns:
        ``target``, ``runtime``, ``precision``, ``constants``, ``device_scales``, ``fitted_on``
        (file names), ``models``, ``quality`` (n, spearman, median_ape, p80_ape, ...: held-out,
        fractions), ``error_band`` and ``written`` (the file's path).
    """
    for name, v in (("target", target), ("runtime", runtime), ("precision", precision)):
        if not isinstance(v, (str, Path) if name == "target" else str):
            raise UsageError(f"{name} must be a string, got {v!r}")
    if runtime not in RUNTIME_RULES:
        raise UsageError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIME_RULES)})")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    if isinstance(tables, (str, Path)):  # one table given as itself, not a list of one
        tables = [tables]
    if not isinstance(tables, (list, tuple)) or not all(isinstance(t, (str, Path)) for t in tables):
        raise UsageError(f"tables must be a list of CSV paths, got {tables!r}")
    if not tables:
        raise UsageError("calibrate needs at least one measured table")
    if out is not None and not isinstance(out, (str, Path)):
        raise UsageError(f"out must be a path, got {out!r}")
    out = None if out is None else Path(out)
    if models is not None and (isinstance(models, bool) or not isinstance(models, int) or models < 1):
        raise UsageError(f"--models must be a whole number >= 1, got {models!r}")
    prof = get_target(target)
    # a table of what the target cannot run (TensorRT on the CPU, bf16 on a Jetson Nano) calibrates nothing
    check_predictable(prof, runtime, precision)
    path = calibration_path(prof.name, out)
    rows: list[MeasuredRow] = []
    for t in tables:
        rows += read_timm_table(Path(t), prof.name, runtime, precision)
    rows = select_timm(rows, tables=1)
    first: dict[str, MeasuredRow] = {}
    for r in rows:
        first.setdefault(r.spec, r)
    rows = list(first.values())[: models or None]
    # the models' op counts kept in the user's cache, not in the package (seeded from its file)
    problem = build_problem(rows, profiles={prof.name: prof}, counts=cache_dir("calibration") / "layer_costs.json")
    if len(problem.rows) < 10:
        raise UsageError(f"only {len(problem.rows)} usable models in {', '.join(map(str, tables))}; need at least 10")
    # a deep copy: the shipped document is cached in memory (``read_calibration``), and updating
    # its bands in place would hand this fit's bands to every later reader of the shipped file
    doc: dict[str, Any] = copy.deepcopy(shipped_calibration(prof) or _left_out_bands(prof)) if out is None else {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            why = str(exc).splitlines()[0]
            hint = "choose another --out"
            raise UsageError(f"{path} exists and is not a calibration JSON ({why})", hint=hint) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("error_bands", {}), dict):
            raise UsageError(f"{path} exists and is not a calibration JSON", hint="choose another --out")
    ridge = scales_ridge(prof)
    constants, scales, held, source = fit_own_table(problem, prof, ridge, keep=_constants_in_use(doc, prof, runtime))
    own = np.ones(len(problem.rows), bool)
    q = quality(held, problem.seconds)
    band = bands(problem, held, own, "fitted on this device", per_device_weight=False)
    px = [timm_spec_parts(r.spec)[1] for r in problem.rows]
    for b in band.values():  # the input sizes it was measured at: a prediction outside them says so
        b["input_px"] = [min(px), max(px)]
    fitted_on = list(dict.fromkeys([*doc.get("device_scales_fitted_on", []), *(Path(t).name for t in tables)]))
    doc.update(target=prof.name, constants=_rounded(constants),
               constants_basis=source.get("constants_basis") or doc.get("constants_basis") or source["calibration"],
               device_scales=merged_scales(doc.get("device_scales"), scales).to_dict(),
               device_scales_fitted_on=fitted_on, device_scales_ridge=ridge)
    doc.setdefault("error_bands", {}).update(band)
    _write_json_atomic(path, doc)
    return {
        "target": prof.name,
        "runtime": runtime,
        "precision": precision,
        "constants": _rounded(constants),
        "device_scales": scales.to_dict(),
        "fitted_on": [Path(t).name for t in tables],
        "models": [r.spec for r in problem.rows],
        "quality": {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in q.items()},
        "error_band": next(iter(band.values()), None),
        "written": str(path),
    }
