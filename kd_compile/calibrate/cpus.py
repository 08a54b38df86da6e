"""What a CPU profile without a table of its own is predicted to within: HELP's four Xeon CPUs.

HELP's NAS-Bench-201 and FBNet tables (``../shared/data/latency/help-*-latency.csv``; HayeonLee/HELP,
MIT) also time every architecture at batch 1 on four Intel Xeon CPUs (columns ``gold_6226_ms``,
``gold_6240_ms``, ``silver_4114_ms``, ``silver_4210r_ms``; the runtime is undocumented, read as eager
PyTorch fp32 like HELP's GPU columns). No fit reads them. Each CPU is described by a profile built
from its datasheet alone (``data/cpus/<name>.toml``, citing ark.intel.com) and predicted exactly as a
user's CPU profile without a calibration is: the all-device constants, unit scales. The error over
the four, devices weighted equally, is the ``cpu`` kind's device-left-out band for eager PyTorch at
batch 1 (``_all_devices.json``'s ``transfer_bands["cpu"]``), which such a profile prints instead of
"unvalidated". Its networks are 32-px ones: for a model of 64 px or more the band carries a caveat
(``profilers.error_bands.large_input_notes``). ``benchmarks/cpu_transfer.py`` prints the per-CPU,
per-family figures behind it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..profilers.roofline import Constants
from ..targets.profile import TargetProfile, load_target_file
from .fit import predict
from .holdout import bands
from .problem import Problem, build_problem
from .tables import BUNDLED_DIR, DEFAULT_DATA_DIR, HELP_TABLES, NAS_SAMPLE, MeasuredRow, _dict_rows, _sample

CPU_PROFILES_DIR = BUNDLED_DIR / "cpus"
# HELP's CPU columns -> the profile (``CPU_PROFILES_DIR/<name>.toml``) that describes each
HELP_CPUS = {"gold_6226": "xeon-gold-6226", "gold_6240": "xeon-gold-6240",
             "silver_4114": "xeon-silver-4114", "silver_4210r": "xeon-silver-4210r"}
TRANSFER = "CPUs: none enters any fit; each predicted from its datasheet with the all-device constants, unit scales"


def cpu_profiles() -> dict[str, TargetProfile]:
    """The profiles of HELP's CPUs, by name."""
    return {name: load_target_file(CPU_PROFILES_DIR / f"{name}.toml") for name in HELP_CPUS.values()}


def read_help_cpus(data_dir: Path | None = None, n: int = NAS_SAMPLE) -> list[MeasuredRow]:
    """HELP's batch-1 CPU rows of the ``n`` architectures per table that the GPU fits sample (the same
    seed, so the op-count cache holds them): eager PyTorch fp32, seconds per batch."""
    d = Path(data_dir or os.environ.get("KD_LATENCY_DATA") or DEFAULT_DATA_DIR)
    out = []
    for fname, space in HELP_TABLES.items():
        path = d / fname
        if not path.is_file():
            continue
        recs = {f"{space}:{r['arch_str']}": r for r in _dict_rows(path)}
        for spec in _sample(list(recs), n):
            for col, dev in HELP_CPUS.items():
                v = recs[spec].get(f"{col}_ms")
                if v:
                    out.append(MeasuredRow(spec, dev, "torch", "fp32", 1, float(v) * 1e-3, fname))
    return out


def cpu_problem(data_dir: Path | None = None, n: int = NAS_SAMPLE) -> Problem | None:
    """HELP's CPU rows with their kernels (None when the tables are missing)."""
    rows = read_help_cpus(data_dir, n)
    return build_problem(rows, profiles=cpu_profiles()) if rows else None


def datasheet_predictions(problem: Problem, constants: Constants) -> np.ndarray:
    """Every row predicted as a CPU profile without a calibration is: ``constants``, unit scales."""
    return predict(problem, np.ones(len(problem.rows), bool), constants)


def cpu_transfer_bands(constants: Constants, problem: Problem | None = None,
                       data_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The ``cpu`` kind's device-left-out bands by regime (empty without HELP's tables)."""
    problem = problem if problem is not None else cpu_problem(data_dir)
    if problem is None or not problem.rows:
        return {}
    pred = datasheet_predictions(problem, constants)
    out = bands(problem, pred, np.ones(len(problem.rows), bool), "device left out")
    for band in out.values():
        band["basis"] = band["basis"].replace(
            "leave-one-device-out over", f"{len(band['devices'])} Xeon CPUs predicted from their datasheets alone:", 1)
        band["transfer"] = TRANSFER
    return out
