"""Fit the latency predictor to published measurements and measure its error where it was not fitted.

Measured tables (``shared/data/latency``, read at calibration time, never copied into code; see
that folder's README for each file's source) become :class:`MeasuredRow` s: one model (an
architecture spec), one device, runtime, precision and batch, seconds per batch:

* timm ``benchmark-infer-amp-*`` (RTX 3090/4090): eager PyTorch, AMP fp16, batch 256-1024;
* super-gradients (T4, Jetson Xavier NX): TensorRT fp16, batch 1, ``*_hw_ms`` columns;
* torch2trt (Jetson AGX Xavier; Jetson Nano, a table shipped in ``kd_compile/calibrate/data``
  because the shared folder lacks it): TensorRT fp16 and eager PyTorch fp16, batch 1;
* HELP NAS-Bench-201 and FBNet (GTX 1080 Ti, RTX 2080 Ti, Titan X/Xp/RTX): eager fp32 at batch
  1, 32, 256 (FBNet 1, 32, 64) -- the runtime is undocumented; the data behave like eager PyTorch;
* Accel-NASBench (RTX 3090, A100): eager AMP fp16 channels_last, batch 128;
* HELP's Once-for-All MobileNetV3 subnets (128-224 px; a table shipped in ``kd_compile/calibrate/data``):
  eager fp32 at batch 1, 32, 64 on the RTX 2080 Ti, Titan RTX and Titan Xp (its V100 column is a test
  no fit reads).

Each model is counted once at batch 1 on the ``meta`` device (no weights, no real compute) and
the counts are cached in ``kd_compile/targets/calibration/layer_costs.json`` (committed data), so
fitting and benchmarks build no model. NAS spaces are sampled (``NAS_SAMPLE`` architectures per
space, seed 0): fits use the first ``NAS_FIT`` of them, evaluations all.

:func:`fit_on` fits the device-independent :class:`Constants` (9 of them; the ``HELD`` ones keep
their default, the ``TIED`` one takes another's value) on every device's rows at once (robust
least squares on log latency, every (device, runtime, batch, table) group weighted equally);
:func:`fit_scales` fits a device's compute, memory and fixed-cost scales, each per runtime, with
the constants fixed and a pull toward 1 whose strength :func:`family_ridge` chooses by how well
the scales predict an architecture family they were not fitted on.
:func:`calibrate_all` writes ``calibration/<target>.json`` for every GPU target:

* a device with measurements: constants fitted *without* it (leave-one-device-out) plus its own
  scales; its error band per regime is the held-out error of 5-fold cross-validation over its
  models (scales refitted on four folds, the fifth predicted) -- ``"fitted on this device"``;
* a device without: the constants fitted on all devices, unit scales; its error band per regime
  is the pooled leave-one-device-out error over the measured devices -- ``"device left out"``;
* ``torch.compile`` (runtime ``inductor``), which no fitted table measures: one more constant,
  ``s_compile``, is fitted afterwards on the shipped ``torch.compile`` table alone
  (``tables.CHECK_TABLES``, :func:`~.holdout.fit_compile_scale`), and its bands are that table's
  error 5-fold over its models (:func:`~.holdout.check_bands`): on a device's own eager
  calibration where its eager tables of that precision give one, else with the device left out.

``calibration/_all_devices.json`` holds the all-device fit and the transfer bands, for user
TOMLs; a CPU's (kind ``cpu``) is the error on HELP's four Xeons, which no fit reads, each predicted
from its datasheet alone (:mod:`.cpus`). :func:`calibrate` (the ``kd-compile calibrate --table``
entry point) fits one target's scales to a user's timm-format table.

The parts: :mod:`.tables` (reading the measured tables), :mod:`.counts` (the op-count cache),
:mod:`.problem` (rows joined with their kernels), :mod:`.fit` (the least-squares fits),
:mod:`.holdout` (held-out evaluation and error bands), :mod:`.cpus` (the band of a CPU without a
table), :mod:`.write` (the entry points that write the calibration files) and :mod:`.synthetic` (a
synthetic problem for tests).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .counts import LAYER_COSTS, layer_costs
from .fit import (
    HELD,
    SEPARATE_MEMORY,
    TIED,
    device_scales,
    fit_constants,
    fit_on,
    fit_scales,
    group_weights,
    predict,
    quality,
)
from .holdout import (
    KFOLD,
    RIDGES,
    bands,
    family_ridge,
    kfold_on_device,
    leave_one_device_out,
    leave_one_family_out,
    transfer_bands,
)
from .problem import Problem, build_problem
from .synthetic import synthetic_problem
from .tables import (
    ACCEL_NASBENCH,
    CURATED,
    DEFAULT_DATA_DIR,
    FAMILIES,
    HELP_DEVICES,
    HELP_OFA,
    HELP_TABLES,
    NAS_FIT,
    NAS_SAMPLE,
    SG_TO_TIMM,
    SUPERGRADIENTS,
    TIMM_TABLES,
    TORCH2TRT,
    MeasuredRow,
    family_of,
    load_measurements,
    read_accel_nasbench,
    read_help,
    read_help_ofa,
    read_supergradients,
    read_timm_table,
    read_torch2trt,
    select_timm,
)
from .write import calibrate, calibrate_all, gpu_targets

__all__ = [
    "ACCEL_NASBENCH", "CURATED", "DEFAULT_DATA_DIR", "FAMILIES", "HELD", "HELP_DEVICES", "HELP_OFA", "HELP_TABLES",
    "KFOLD", "LAYER_COSTS", "NAS_FIT", "NAS_SAMPLE", "SEPARATE_MEMORY", "SG_TO_TIMM", "SUPERGRADIENTS", "TIED",
    "TIMM_TABLES", "TORCH2TRT",
    "MeasuredRow", "Problem", "RIDGES", "bands", "build_problem", "calibrate", "calibrate_all", "device_scales",
    "family_of", "family_ridge", "fit_constants", "fit_on", "fit_scales", "gpu_targets", "group_weights",
    "kfold_on_device", "layer_costs", "leave_one_device_out", "leave_one_family_out", "load_measurements", "predict",
    "quality", "read_accel_nasbench", "read_help", "read_help_ofa", "read_supergradients", "read_timm_table",
    "read_torch2trt", "select_timm", "synthetic_problem", "transfer_bands",
]


class _CallablePackage(types.ModuleType):
    """``kd_compile.calibrate`` names both this package and the public function ``kd_compile.calibrate()``
    (``api.calibrate``, lazily re-exported). Python sets a loaded subpackage on its parent, so once
    anything imported this package, ``kd_compile.calibrate`` was the package and calling it raised
    ``TypeError: 'module' object is not callable``. Calling the package is calling the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return calibrate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
