"""What a CPU profile without a table of its own is predicted to within: five CPUs no fit reads.

A CPU profile of a user's without a calibration is predicted from its datasheet: the all-device
constants (fitted on GPU tables alone), unit scales. Its error is measured the same way on every CPU
with a measured table, each described by a profile built from its datasheet:

* HELP's NAS-Bench-201 and FBNet tables (``../shared/data/latency/help-*-latency.csv``; HayeonLee/HELP,
  MIT) time every architecture at batch 1 on four Intel Xeons (columns ``gold_6226_ms``,
  ``gold_6240_ms``, ``silver_4114_ms``, ``silver_4210r_ms``; the runtime is undocumented, read as
  eager PyTorch fp32 like HELP's GPU columns; 32-px networks); profiles ``data/cpus/<name>.toml``,
  citing ark.intel.com;
* this project's development VM: its ONNX Runtime and eager PyTorch tables of 61 timm models at
  96-256 px (``data/cpu-*-fp32-b1-devvm.csv``, ``benchmarks/cpu_table.py``), described by the shipped
  ``cpu`` profile. They calibrate the ``cpu`` target, but no fit of the all-device constants reads
  them, so for any other CPU this VM is a device left out too.

The error over them, devices weighted equally, is the ``cpu`` kind's device-left-out band per regime
(``_all_devices.json``'s ``transfer_bands["cpu"]``), which such a profile prints instead of
"unvalidated": eager PyTorch over five CPUs, ONNX Runtime over the one CPU measured in it (its band
says the 96-256 px it was measured at). ``benchmarks/cpu_transfer.py`` prints the per-CPU figures.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..profilers.roofline import Constants
from ..targets.profile import TargetProfile, get_target, load_target_file
from .fit import predict
from .holdout import bands
from .problem import Problem, build_problem
from .tables import (
    BUNDLED_DIR,
    DEFAULT_DATA_DIR,
    HELP_TABLES,
    NAS_SAMPLE,
    MeasuredRow,
    read_help,
    read_timm_table,
    timm_spec_parts,
)

CPU_PROFILES_DIR = BUNDLED_DIR / "cpus"
# HELP's CPU columns -> the profile (``CPU_PROFILES_DIR/<name>.toml``) that describes each
HELP_CPUS = {"gold_6226": "xeon-gold-6226", "gold_6240": "xeon-gold-6240",
             "silver_4114": "xeon-silver-4114", "silver_4210r": "xeon-silver-4210r"}
# the development VM's own tables (``benchmarks/cpu_table.py``) -> runtime; its profile is the shipped ``cpu`` one
DEV_VM = "kd-compile-dev-vm"
DEV_VM_TABLES = {"cpu-onnxruntime-fp32-b1-devvm.csv": "onnxruntime", "cpu-torch-fp32-b1-devvm.csv": "torch"}
TRANSFER = "CPUs: none enters the all-device fit"


def cpu_profiles() -> dict[str, TargetProfile]:
    """The profiles of the CPUs measured, by name: HELP's Xeons and the development VM."""
    out = {name: load_target_file(CPU_PROFILES_DIR / f"{name}.toml") for name in HELP_CPUS.values()}
    vm = get_target("cpu")  # the VM's datasheet profile, under a name of its own (it is not "this machine")
    out[DEV_VM] = dataclasses.replace(vm, name=DEV_VM, local=False, calibration={})
    return out


def read_dev_vm() -> list[MeasuredRow]:
    """The development VM's ONNX Runtime and eager PyTorch rows (fp32, batch 1, 96-256 px)."""
    return [r for f, rt in DEV_VM_TABLES.items() if (BUNDLED_DIR / f).is_file()
            for r in read_timm_table(BUNDLED_DIR / f, DEV_VM, rt, "fp32")]


def read_help_cpus(data_dir: Path | None = None, n: int = NAS_SAMPLE) -> list[MeasuredRow]:
    """HELP's batch-1 CPU rows of the ``n`` architectures per table that the GPU fits sample (the same
    seed, so the op-count cache holds them): eager PyTorch fp32, seconds per batch."""
    d = Path(data_dir or os.environ.get("KD_LATENCY_DATA") or DEFAULT_DATA_DIR)
    return [r for fname, space in HELP_TABLES.items() if (d / fname).is_file()
            for r in read_help(d / fname, space, n, devices=HELP_CPUS)]


def cpu_problem(data_dir: Path | None = None, n: int = NAS_SAMPLE) -> Problem | None:
    """Every measured CPU's rows with their kernels (None when no table is found)."""
    rows = read_help_cpus(data_dir, n) + read_dev_vm()
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
    for key, band in out.items():
        n = len(band["devices"])
        what = f"{n} CPUs predicted from their datasheets" if n > 1 else "1 CPU predicted from its datasheet"
        band["basis"] = band["basis"].replace("leave-one-device-out over",
                                              f"{what} alone (all-device constants, unit scales):", 1)
        band["transfer"] = TRANSFER
        px = [timm_spec_parts(r.spec)[1] for r in problem.rows
              if r.spec.startswith("timm:") and key == f"{r.runtime}/{r.precision}/batch1"]
        if px and len(px) == band["n"]:  # a band of timm models only: the sizes it was measured at
            band["input_px"] = [min(px), max(px)]
    return out
