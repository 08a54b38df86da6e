"""Fit the latency predictor to published measurements and measure its error where it was not fitted.

Measured tables (``shared/data/latency``, read at calibration time, never copied into code; see
that folder's README for each file's source) become :class:`MeasuredRow` s: one model (an
architecture spec), one device, runtime, precision and batch, seconds per batch:

* timm ``benchmark-infer-amp-*`` (RTX 3090/4090): eager PyTorch, AMP fp16, batch 256-1024;
* super-gradients (T4, Jetson Xavier NX): TensorRT fp16, batch 1, ``*_hw_ms`` columns;
* torch2trt (Jetson AGX Xavier): TensorRT fp16 and eager PyTorch fp16, batch 1;
* HELP NAS-Bench-201 and FBNet (GTX 1080 Ti, RTX 2080 Ti, Titan X/Xp/RTX): eager fp32 at batch
  1, 32, 256 (FBNet 1, 32, 64) -- the runtime is undocumented; the data behave like eager PyTorch;
* Accel-NASBench (RTX 3090, A100): eager AMP fp16 channels_last, batch 128.

Each model is counted once at batch 1 on the ``meta`` device (no weights, no real compute) and
the counts are cached in ``kd_compile/targets/calibration/layer_costs.json`` (committed data), so
fitting and benchmarks build no model. NAS spaces are sampled (``NAS_SAMPLE`` architectures per
space, seed 0): fits use the first ``NAS_FIT`` of them, evaluations all.

:func:`fit_constants` fits the 10 device-independent :class:`Constants` on every device's rows at
once (robust least squares on log latency, every (device, runtime, batch, table) group weighted
equally); :func:`fit_scales` fits a device's two scales with the constants fixed.
:func:`calibrate_all` writes ``calibration/<target>.json`` for every GPU target:

* a device with measurements: constants fitted *without* it (leave-one-device-out) plus its own
  scales; its error band per regime is the held-out error of 5-fold cross-validation over its
  models (scales refitted on four folds, the fifth predicted) -- ``"fitted on this device"``;
* a device without: the constants fitted on all devices, unit scales; its error band per regime
  is the pooled leave-one-device-out error over the measured devices -- ``"device left out"``.

``calibration/_all_devices.json`` holds the all-device fit and the transfer bands, for user
TOMLs. :func:`calibrate` (the ``kd-compile calibrate --table`` entry point) fits one target's
scales to a user's timm-format table.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .profilers.counting import OpRecord
from .profilers.roofline import (
    CALIBRATION_DIR,
    CONSTANT_NAMES,
    DEFAULT_CONSTANTS,
    RUNTIME_RULES,
    SHARED_FIT,
    Constants,
    DeviceScales,
    DeviceTerms,
    KernelTable,
    batch_regime,
    fuse,
    kernel_rows,
    load_calibration,
    read_calibration,
    regime_key,
    row_seconds,
)
from .targets.profile import PRECISIONS, get_target, list_targets

LAYER_COSTS = CALIBRATION_DIR / "layer_costs.json"
# ``shared/data/latency`` next to the repository (``KD_LATENCY_DATA`` overrides).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "latency"
NAS_SAMPLE = 200  # architectures per NAS space counted and evaluated (seed 0)
NAS_FIT = 100  # of which the fits use the first ones (fit time grows with kernels)
KFOLD = 5

TIMM_TABLES = {
    "benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv": "rtx3090",
    "benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv": "rtx4090",
}
SUPERGRADIENTS = "supergradients_T4_trt_fp16_bs1_classification.csv"
TORCH2TRT = "torch2trt-jetson-xavier-trt-fp16-bs1.csv"
HELP_TABLES = {"help-nb201-latency.csv": "nb201", "help-fbnet-latency.csv": "fbnet"}
ACCEL_NASBENCH = "accel-nasbench-mbconv.csv"
# HELP column prefix -> target name (titanx: the Pascal TITAN X, see titan-x.toml)
HELP_DEVICES = {"1080ti": "1080ti", "2080ti": "2080ti", "titan_rtx": "titan-rtx", "titanx": "titan-x",
                "titanxp": "titan-xp"}
# super-gradients model name -> timm model (same architecture; ViTs use patch 16)
SG_TO_TIMM = {
    "vit_base": "vit_base_patch16_224", "vit_large": "vit_large_patch16_224", "efficientnet_b0": "efficientnet_b0",
    "regnetY200": "regnety_002", "regnetY400": "regnety_004", "regnetY600": "regnety_006",
    "regnetY800": "regnety_008", "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
    "mobilenet_v3_large": "mobilenetv3_large_100", "mobilenet_v3_small": "mobilenetv3_small_100",
    "mobilenet_v2": "mobilenetv2_100",
}

# A diverse set of timm architectures (convnets, mobile nets, EfficientNets, ResNets, RegNets,
# ViTs/DeiTs, Swin, ConvNeXt, hybrids), small to large. Only those present in every table are
# used; the order is the order of preference when ``models`` limits the count.
CURATED = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet26", "resnet50d",
    "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "seresnet50", "ecaresnet50d",
    "resnetrs50", "resnet10t", "resnet14t", "skresnet18", "dla34", "dla60", "densenet121",
    "densenet169", "vgg11", "vgg16", "vgg19_bn", "inception_v3", "inception_v4", "xception41",
    "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140", "mobilenetv3_small_100",
    "mobilenetv3_large_100", "mobilenetv3_small_050", "mobilenetv3_large_075", "mnasnet_100",
    "mnasnet_small", "fbnetc_100", "spnasnet_100", "lcnet_050", "lcnet_100", "tinynet_a",
    "tinynet_c", "tinynet_e", "ghostnet_100", "efficientnet_b0", "efficientnet_b1",
    "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_lite0",
    "efficientnetv2_rw_s", "efficientnetv2_rw_m", "tf_efficientnetv2_s", "mixnet_s", "mixnet_l",
    "rexnet_100", "rexnet_150", "regnetx_002", "regnetx_004", "regnetx_016", "regnetx_032",
    "regnety_002", "regnety_004", "regnety_008", "regnety_016", "regnety_032", "regnety_040",
    "regnetz_b16", "hrnet_w18_small", "dpn68", "res2net50_26w_4s", "cspresnet50",
    "cspdarknet53", "darknet53", "repvgg_a2", "repvgg_b1", "gernet_s", "gernet_l",
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny",
    "convnext_small", "convnext_base", "convnextv2_tiny", "vit_tiny_patch16_224",
    "vit_small_patch16_224", "vit_small_patch32_224", "vit_base_patch16_224",
    "vit_base_patch32_224", "vit_large_patch16_224", "deit_tiny_patch16_224",
    "deit_small_patch16_224", "deit_base_patch16_224", "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224", "swin_base_patch4_window7_224", "beit_base_patch16_224",
    "cait_xxs24_224", "levit_128", "levit_256", "mobilevit_s", "mobilevit_xs", "edgenext_small",
    "efficientformer_l1", "poolformer_s12", "mixer_b16_224", "resmlp_12_224", "pit_s_224",
    "coat_lite_tiny", "crossvit_small_240", "twins_svt_small", "xcit_tiny12_p16_224",
    "maxvit_tiny_tf_224", "coatnet_0_rw_224", "fastvit_t8", "repvit_m1", "tiny_vit_5m_224",
    "efficientvit_b0", "mobileone_s0", "hgnet_tiny", "nfnet_l0", "dm_nfnet_f0",
)

# Architecture families for leave-one-family-out (first matching pattern wins).
FAMILIES: tuple[tuple[str, str], ...] = (
    ("nb201", r"^nb201:"), ("fbnet", r"^fbnet:"), ("anb", r"^anb:"),
    ("vit", r"(vit_|deit|beit|cait|pit_|crossvit|twins|xcit|levit|mixer|resmlp|swin|maxvit|coat|"
            r"efficientformer|poolformer|mobilevit|edgenext|efficientvit|tiny_vit|fastvit)"),
    ("regnet", r"regnet"), ("efficientnet", r"efficientnet"),
    ("mobilenet", r"(mobilenet|mnasnet|fbnetc|spnasnet|lcnet|tinynet|ghostnet|rexnet|mixnet|repvit|mobileone|"
                  r"shufflenet|squeezenet)"),
    ("convnext", r"convnext"), ("densenet", r"densenet"), ("vgg", r"(vgg|alexnet|repvgg)"),
    ("resnet", r"(resnet|resnext|res2net|dla|dpn|darknet|gernet|inception|xception|hrnet|hgnet|nfnet)"),
)


def family_of(spec: str) -> str:
    """The architecture family of a spec (``FAMILIES``), ``other`` when none matches."""
    for name, pat in FAMILIES:
        if re.search(pat, spec):
            return name
    return "other"


@dataclass(frozen=True)
class MeasuredRow:
    """One published measurement.

    Attributes:
        spec: the architecture (``timm:<name>@<size>``, ``torchvision:<name>``, ``nb201:...``,
            ``fbnet:...``, ``anb:...``).
        device: target name.
        runtime: ``torch`` (eager) or ``tensorrt``.
        precision: ``fp32`` or ``fp16``.
        batch: batch size.
        seconds: time per batch.
        file: name of the measured table.
    """

    spec: str
    device: str
    runtime: str
    precision: str
    batch: int
    seconds: float
    file: str

    @property
    def family(self) -> str:
        return family_of(self.spec)

    @property
    def group(self) -> tuple[str, str, int, str]:
        """(device, runtime, batch, file): the unit a Spearman correlation is computed over."""
        return (self.device, self.runtime, self.batch, self.file)


# -- readers ---------------------------------------------------------------------------------


def _dict_rows(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def read_timm_table(path: Path, device: str = "", runtime: str = "torch", precision: str = "fp16") -> list[MeasuredRow]:
    """Rows of a timm ``benchmark-infer-*.csv`` (columns documented in the data README).

    Raises:
        UsageError: no row has model, image size, batch and step time.
    """
    rows: list[MeasuredRow] = []
    for r in _dict_rows(path):
        try:
            rows.append(MeasuredRow(f"timm:{r['model']}@{int(r['infer_img_size'])}", device, runtime, precision,
                                    int(r["infer_batch_size"]), float(r["infer_step_time"]) * 1e-3, Path(path).name))
        except (KeyError, ValueError):
            continue
    if not rows:
        raise UsageError(
            f"{path}: no timm benchmark rows (need model, infer_img_size, infer_batch_size, infer_step_time)"
        )
    return rows


def read_supergradients(path: Path) -> list[MeasuredRow]:
    """T4 and Xavier NX TensorRT fp16 batch-1 rows (``*_hw_ms``: without I/O)."""
    out = []
    for r in _dict_rows(path):
        name = SG_TO_TIMM.get(r.get("sg_model_name", ""))
        if name is None:
            continue
        for col, dev in (("t4_hw_ms", "t4"), ("xaviernx_hw_ms", "jetson-xavier-nx")):
            if r.get(col):
                out.append(MeasuredRow(f"timm:{name}@{int(r['resolution'])}", dev, "tensorrt", "fp16", 1,
                                       float(r[col]) * 1e-3, Path(path).name))
    return out


def read_torch2trt(path: Path) -> list[MeasuredRow]:
    """Jetson AGX Xavier rows: TensorRT fp16 and eager PyTorch fp16, batch 1, 224 px."""
    out = []
    for r in _dict_rows(path):
        spec = f"torchvision:{r['torchvision_model']}"
        for col, rt in (("latency_tensorrt_ms", "tensorrt"), ("latency_pytorch_ms", "torch")):
            if r.get(col):
                out.append(MeasuredRow(spec, "jetson-agx-xavier", rt, "fp16", 1, float(r[col]) * 1e-3, Path(path).name))
    return out


def _sample(keys: Sequence[str], n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    keys = sorted(set(keys))
    return [keys[i] for i in rng.permutation(len(keys))[:n]]


def read_help(path: Path, space: str, n: int = NAS_SAMPLE) -> list[MeasuredRow]:
    """HELP NAS-Bench-201/FBNet rows of ``n`` sampled architectures on the five desktop GPUs."""
    recs = {f"{space}:{r['arch_str']}": r for r in _dict_rows(path)}
    col = re.compile(r"^(1080ti|2080ti|titan_rtx|titanx|titanxp)_(\d+)_ms$")
    out = []
    for spec in _sample(list(recs), n):
        for c, v in recs[spec].items():
            m = col.match(c)
            if m and v:
                out.append(MeasuredRow(spec, HELP_DEVICES[m.group(1)], "torch", "fp32", int(m.group(2)),
                                       float(v) * 1e-3, Path(path).name))
    return out


def read_accel_nasbench(path: Path, n: int = NAS_SAMPLE) -> list[MeasuredRow]:
    """Accel-NASBench rows of ``n`` sampled architectures: RTX 3090 and A100, batch 128."""
    from .students.anb import anb_spec_from_row

    recs: dict[str, dict[str, str]] = {}
    for r in _dict_rows(path):
        if r.get("3090_ms_per_batch128") and r.get("a100_ms_per_batch128"):
            recs.setdefault(f"anb:{anb_spec_from_row(r)}", r)
    out = []
    for spec in _sample(list(recs), n):
        for col, dev in (("3090_ms_per_batch128", "rtx3090"), ("a100_ms_per_batch128", "a100")):
            out.append(MeasuredRow(spec, dev, "torch", "fp16", 128, float(recs[spec][col]) * 1e-3, Path(path).name))
    return out


def select_timm(rows: Sequence[MeasuredRow], tables: int = 2) -> list[MeasuredRow]:
    """Rows of curated timm models measured in every timm table, at the smallest common size."""
    by_model: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in rows:
        name, size = r.spec[5:].rsplit("@", 1)
        by_model[name][int(size)].add(r.file)
    keep = set()
    for name in CURATED:
        sizes = sorted(s for s, files in by_model.get(name, {}).items() if len(files) >= tables)
        if sizes:
            keep.add(f"timm:{name}@{sizes[0]}")
    return [r for r in rows if r.spec in keep]


def load_measurements(data_dir: Path | None = None, nas: int = NAS_SAMPLE) -> list[MeasuredRow]:
    """Every usable row of the shared measured tables (see the module docstring).

    Raises:
        UsageError: the folder does not exist.
    """
    d = Path(data_dir or os.environ.get("KD_LATENCY_DATA") or DEFAULT_DATA_DIR)
    if not d.is_dir():
        raise UsageError(f"measured latency tables not found in {d}", hint="set KD_LATENCY_DATA or pass data_dir")
    timm_rows = [r for f, dev in TIMM_TABLES.items() if (d / f).is_file() for r in read_timm_table(d / f, dev)]
    rows = select_timm(timm_rows, tables=sum((d / f).is_file() for f in TIMM_TABLES))
    if (d / SUPERGRADIENTS).is_file():
        rows += read_supergradients(d / SUPERGRADIENTS)
    if (d / TORCH2TRT).is_file():
        rows += read_torch2trt(d / TORCH2TRT)
    for f, space in HELP_TABLES.items():
        if (d / f).is_file():
            rows += read_help(d / f, space, nas)
    if (d / ACCEL_NASBENCH).is_file():
        rows += read_accel_nasbench(d / ACCEL_NASBENCH, nas)
    return rows


# -- op counts (cached) ----------------------------------------------------------------------


def _build(spec: str) -> tuple[Any, tuple[int, int, int]]:
    """Model (on the meta device) and input shape of a spec; ``timm:<name>@<size>`` sets the size."""
    import torch

    with torch.device("meta"):
        if spec.startswith("timm:") and "@" in spec:
            import timm

            name, size = spec[5:].rsplit("@", 1)
            last: Exception | None = None
            for kw in ({}, {"img_size": int(size)}):
                try:
                    return timm.create_model(name, pretrained=False, **kw), (3, int(size), int(size))
                except Exception as exc:  # noqa: BLE001 - some timm models need img_size at build
                    last = exc
            raise RuntimeError(f"cannot build {spec}: {last}")
        from .students.specs import build_spec

        return build_spec(spec)


def _count(spec: str) -> dict[str, Any]:
    from .profilers.counting import trace_ops

    model, shape = _build(spec)
    tr = trace_ops(model, shape)
    return {"params": tr.params, "flops": tr.total_flops, "ops": [r.to_list()[1:] for r in tr.ops]}


def layer_costs(
    specs: Iterable[str], cache: Path | None = LAYER_COSTS, verbose: bool = False
) -> dict[str, tuple[list[OpRecord], int]]:
    """(op records at batch 1 in fp32, parameter count) per spec, from the cache or counted.

    The cache stores each distinct op record once (``ops``) and each model as indices into it
    (``seq``); module names are not kept. Models that cannot be built are left out (and
    reported when ``verbose``).
    """
    specs = list(specs)
    ops_table: list[list[Any]] = []
    entries: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        doc = json.loads(cache.read_text(encoding="utf-8"))
        if doc.get("format") == 2:
            ops_table, entries = doc["ops"], doc["entries"]
    index = {tuple(o): i for i, o in enumerate(ops_table)}
    changed = False
    for spec in dict.fromkeys(specs):
        if spec in entries:
            continue
        t0 = time.perf_counter()
        try:
            c = _count(spec)
        except Exception as exc:  # noqa: BLE001 - one unbuildable model must not stop calibration
            if verbose:
                print(f"  skip {spec}: {str(exc)[:120]}")
            entries[spec] = {"error": str(exc)[:200]}  # remembered: not tried again
            changed = True
            continue
        seq = []
        for o in c["ops"]:
            k = tuple(o)
            if k not in index:
                index[k] = len(ops_table)
                ops_table.append(list(o))
            seq.append(index[k])
        entries[spec] = {"params": c["params"], "flops": c["flops"], "seq": seq}
        changed = True
        if verbose:
            print(f"  counted {spec[:70]} in {time.perf_counter() - t0:.1f}s", flush=True)
    if changed and cache is not None:
        doc = {
            "about": "Per-op costs at batch 1, fp32, of the models in the measured latency tables, counted by "
            "kd_compile.profilers.counting on the meta device. 'ops': distinct records [op class, flops, "
            "weight_bytes, in_bytes, out_bytes, ch]; 'entries': spec -> params, total flops, 'seq' (indices "
            "into 'ops' in execution order), or 'error' for a model that could not be built. Written by "
            "kd_compile.calibrate.layer_costs.",
            "format": 2,
            "ops": ops_table,
            "entries": {k: entries[k] for k in sorted(entries)},
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    recs = [OpRecord("", o[0], int(o[1]), int(o[2]), int(o[3]), int(o[4]), int(o[5])) for o in ops_table]
    wanted = set(specs)
    return {k: ([recs[i] for i in e["seq"]], int(e["params"])) for k, e in entries.items()
            if k in wanted and "seq" in e}


# -- tables and fits -------------------------------------------------------------------------


@dataclass
class Problem:
    """Measured rows with their kernel table, ready to fit and evaluate.

    Attributes:
        rows: the measurements.
        table: their kernels (device scales 1).
        seconds: measured seconds per batch, shape (M,).
        flops: FLOPs per sample of each row's model.
        params: parameters of each row's model.
        fit_mask: rows a fit may use (all but the NAS architectures beyond ``NAS_FIT``).
    """

    rows: list[MeasuredRow]
    table: KernelTable
    seconds: np.ndarray
    flops: np.ndarray
    params: np.ndarray
    fit_mask: np.ndarray

    def mask(self, pred: Callable[[MeasuredRow], bool]) -> np.ndarray:
        return np.array([pred(r) for r in self.rows], dtype=bool)


def build_problem(rows: Sequence[MeasuredRow], verbose: bool = False, nas_fit: int = NAS_FIT) -> Problem:
    """Count (or load) every row's model and build the kernel table."""
    costs = layer_costs({r.spec for r in rows}, verbose=verbose)
    rows = [r for r in rows if r.spec in costs]
    kern: dict[tuple[str, str], np.ndarray] = {}
    devs: dict[tuple[str, str, str], DeviceTerms] = {}
    ks, ds = [], []
    for r in rows:
        if (r.spec, r.runtime) not in kern:
            kern[(r.spec, r.runtime)] = kernel_rows(fuse(costs[r.spec][0], r.runtime))
        if (r.device, r.precision, r.runtime) not in devs:
            devs[(r.device, r.precision, r.runtime)] = DeviceTerms.of(get_target(r.device), r.precision, r.runtime)
        ks.append(kern[(r.spec, r.runtime)])
        ds.append(devs[(r.device, r.precision, r.runtime)])
    table = KernelTable.build(ks, [r.batch for r in rows], ds)
    nas_rank: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        fam = r.spec.split(":", 1)[0]
        if fam in ("nb201", "fbnet", "anb"):
            nas_rank[(fam + r.file)].setdefault(r.spec, len(nas_rank[fam + r.file]))
    fit_mask = np.array([r.spec.split(":", 1)[0] not in ("nb201", "fbnet", "anb")
                         or nas_rank[r.spec.split(":", 1)[0] + r.file][r.spec] < nas_fit for r in rows])
    return Problem(rows, table, np.array([r.seconds for r in rows]),
                   np.array([sum(o.flops for o in costs[r.spec][0]) for r in rows], float),
                   np.array([costs[r.spec][1] for r in rows], float), fit_mask)


def group_weights(rows: Sequence[MeasuredRow]) -> np.ndarray:
    """Weights giving each (device, runtime, batch regime, table) group the same total weight."""
    groups: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r.device, r.runtime, batch_regime(r.batch), r.file)].append(i)
    w = np.zeros(len(rows))
    for ix in groups.values():
        w[ix] = 1.0 / len(ix)
    return w / w.mean() if len(w) else w


# Bounds of the fitted constants (physical ranges; the fit runs in log space).
_LOWER = {"e_tc": 1e-3, "e_cuda": 1e-3, "e_dw": 1e-4, "e_mem": 0.05, "c_half": 0.01, "t0_us": 0.01,
          "h_lib_us": 0.1, "h_pw_us": 0.1, "h_kernel_us": 0.1, "edge": 0.3}
_UPPER = {"e_tc": 1.0, "e_cuda": 1.0, "e_dw": 1.0, "e_mem": 1.0, "c_half": 4096.0, "t0_us": 100.0,
          "h_lib_us": 1000.0, "h_pw_us": 1000.0, "h_kernel_us": 100.0, "edge": 30.0}


def quality(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """n, Spearman rank correlation, median / 80th-percentile / mean absolute % error (fractions),
    share within 35%, RMSE of log ratio."""
    from scipy.stats import spearmanr

    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    ape = np.abs(pred / meas - 1.0)
    return {
        "n": len(meas),
        "spearman": float(spearmanr(pred, meas).statistic) if len(meas) > 2 else float("nan"),
        "median_ape": float(np.median(ape)) if len(ape) else float("nan"),
        "p80_ape": float(np.percentile(ape, 80)) if len(ape) else float("nan"),
        "mean_ape": float(np.mean(ape)) if len(ape) else float("nan"),
        "within_35": float(np.mean(ape <= 0.35)) if len(ape) else float("nan"),
        "rmse_log": float(np.sqrt(np.mean(np.log(pred / meas) ** 2))) if len(ape) else float("nan"),
    }


def fit_constants(
    table: KernelTable,
    measured_s: np.ndarray,
    weights: np.ndarray | None = None,
    x0: Constants | None = None,
    fixed: Sequence[str] = (),
    max_nfev: int = 300,
) -> tuple[Constants, dict[str, float]]:
    """Robust least-squares fit of the constants on log latency (parameters in log space).

    Args:
        table: kernels of M rows (with their device terms and scales).
        measured_s: measured seconds per batch, shape (M,).
        weights: per-row weights (default 1).
        x0: starting point (default :data:`DEFAULT_CONSTANTS`).
        fixed: names of constants held at ``x0``.
        max_nfev: evaluation budget.

    Returns:
        The fitted constants and the fit quality on the fitting rows. A constant the rows cannot
        identify (no tensor-core, CUDA-core, depthwise, eager or graph-runtime or Jetson rows) is
        held at ``x0``.
    """
    from scipy.optimize import least_squares

    start = (x0 or DEFAULT_CONSTANTS).vector()
    dev = table.dev[table.row]
    gemm = np.isin(table.cls, (0, 2, 3)) & (table.flops > 0)
    present = {
        "e_tc": bool(np.any(gemm & (dev[:, 2] > 0))),
        "e_cuda": bool(np.any(gemm & (dev[:, 2] == 0))),
        "e_dw": bool(np.any((table.cls == 1) & (table.flops > 0))),
        "h_lib_us": bool(np.any(table.dev[:, 6] > 0)),
        "h_pw_us": bool(np.any(table.dev[:, 6] > 0)),
        "h_kernel_us": bool(np.any(table.dev[:, 6] == 0)),
        "edge": bool(np.any(table.dev[:, 5] > 0)) and bool(np.any(table.dev[:, 5] == 0)),
    }
    free = [i for i, n in enumerate(CONSTANT_NAMES) if n not in fixed and present.get(n, True)]
    lo = np.log([_LOWER[CONSTANT_NAMES[i]] for i in free])
    hi = np.log([_UPPER[CONSTANT_NAMES[i]] for i in free])
    y = np.log(np.asarray(measured_s, float))
    sw = np.sqrt(np.ones_like(y) if weights is None else np.asarray(weights, float))

    def full(z: np.ndarray) -> np.ndarray:
        v = start.copy()
        v[free] = np.exp(z)
        return v

    def resid(z: np.ndarray) -> np.ndarray:
        return sw * (np.log(row_seconds(table, full(z))) - y)

    z0 = np.clip(np.log(start[free]), lo + 1e-6, hi - 1e-6)
    r = least_squares(resid, z0, bounds=(lo, hi), diff_step=1e-3, max_nfev=max_nfev, loss="soft_l1", f_scale=0.3)
    c = Constants.from_vector(full(r.x))
    return c, quality(row_seconds(table, c), np.asarray(measured_s, float))


def _scale_columns(rows: Sequence[MeasuredRow], scales: dict[str, DeviceScales]) -> tuple[np.ndarray, np.ndarray]:
    s = [scales.get(r.device, DeviceScales()) for r in rows]
    return np.array([x.roofline for x in s]), np.array([x.fixed_for(r.runtime) for x, r in zip(s, rows, strict=True)])


def fit_scales(
    table: KernelTable, measured_s: np.ndarray, rows: Sequence[MeasuredRow], constants: Constants,
    ridge: float = 0.1,
) -> DeviceScales:
    """One device's scales (roofline, and fixed costs per runtime) with the constants fixed.

    Robust least squares on log latency with a weak pull of log(scale) toward 0 (``ridge``), so a
    handful of rows cannot run a scale away.
    """
    from scipy.optimize import least_squares

    runtimes = sorted({r.runtime for r in rows})
    y = np.log(np.asarray(measured_s, float))
    rt_idx = np.array([runtimes.index(r.runtime) for r in rows])
    sw = np.sqrt(group_weights(rows))

    def scaled(z: np.ndarray) -> KernelTable:
        return table.with_scales(np.full(len(rows), math.exp(z[0])), np.exp(z[1:])[rt_idx])

    def resid(z: np.ndarray) -> np.ndarray:
        return np.concatenate([sw * (np.log(row_seconds(scaled(z), constants)) - y), ridge * z])

    r = least_squares(resid, np.zeros(1 + len(runtimes)), bounds=(np.log(0.05), np.log(20.0)), diff_step=1e-3,
                      loss="soft_l1", f_scale=0.3)
    fixed = {rt: round(math.exp(v), 5) for rt, v in zip(runtimes, r.x[1:], strict=True)}
    return DeviceScales(round(math.exp(r.x[0]), 5), fixed)


def predict(problem: Problem, mask: np.ndarray, constants: Constants,
            scales: dict[str, DeviceScales] | None = None) -> np.ndarray:
    """Predicted seconds of the rows in ``mask``, with per-device scales (default 1)."""
    rows = [r for r, m in zip(problem.rows, mask, strict=True) if m]
    g, h = _scale_columns(rows, scales or {})
    return row_seconds(problem.table.subset(mask).with_scales(g, h), constants)


def fit_on(problem: Problem, train: np.ndarray, x0: Constants | None = None, max_nfev: int = 300) -> Constants:
    """Constants fitted on the rows in ``train`` (and in ``problem.fit_mask``), unit scales."""
    m = train & problem.fit_mask
    rows = [r for r, k in zip(problem.rows, m, strict=True) if k]
    c, _ = fit_constants(problem.table.subset(m), problem.seconds[m], group_weights(rows), x0=x0, max_nfev=max_nfev)
    return c


def device_scales(problem: Problem, train: np.ndarray, constants: Constants) -> dict[str, DeviceScales]:
    """Scales of every device with rows in ``train``, fitted on those rows with ``constants``."""
    out = {}
    for dev in sorted({r.device for r, k in zip(problem.rows, train, strict=True) if k}):
        m = train & problem.mask(lambda r, d=dev: r.device == d)
        rows = [r for r, k in zip(problem.rows, m, strict=True) if k]
        out[dev] = fit_scales(problem.table.subset(m), problem.seconds[m], rows, constants)
    return out


# -- held-out evaluation ---------------------------------------------------------------------


def leave_one_device_out(problem: Problem, x0: Constants | None = None, verbose: bool = False
                         ) -> tuple[np.ndarray, dict[str, Constants]]:
    """Predictions of every row by constants fitted without its device (unit scales).

    ``x0`` is the fits' starting point (default :data:`DEFAULT_CONSTANTS`); starting from a fit
    that saw the held-out device would let it leak in, so callers should not.

    Returns:
        (predicted seconds per row, the constants fitted without each device).
    """
    pred = np.full(len(problem.rows), np.nan)
    fits = {}
    for dev in sorted({r.device for r in problem.rows}):
        t0 = time.perf_counter()
        held = problem.mask(lambda r, d=dev: r.device == d)
        fits[dev] = fit_on(problem, ~held, x0)
        pred[held] = predict(problem, held, fits[dev])
        if verbose:
            print(f"  fit without {dev}: {time.perf_counter() - t0:.0f}s", flush=True)
    return pred, fits


def leave_one_family_out(problem: Problem, x0: Constants | None = None, verbose: bool = False
                         ) -> tuple[np.ndarray, dict[str, Constants], dict[str, dict[str, DeviceScales]]]:
    """Predictions of every row by constants and device scales fitted without its family.

    Returns:
        (predicted seconds per row, constants per left-out family, device scales per family).
    """
    pred = np.full(len(problem.rows), np.nan)
    fits, scales = {}, {}
    for fam in sorted({r.family for r in problem.rows}):
        t0 = time.perf_counter()
        held = problem.mask(lambda r, f=fam: r.family == f)
        fits[fam] = fit_on(problem, ~held, x0)
        scales[fam] = device_scales(problem, ~held & problem.fit_mask, fits[fam])
        pred[held] = predict(problem, held, fits[fam], scales[fam])
        if verbose:
            print(f"  fit without family {fam}: {time.perf_counter() - t0:.0f}s", flush=True)
    return pred, fits, scales


def kfold_on_device(problem: Problem, device: str, constants: Constants, k: int = KFOLD) -> np.ndarray:
    """Held-out predictions of ``device`` 's rows: its scales fitted on k-1 folds of its models
    (``constants`` fixed, fitted without the device), the remaining fold predicted."""
    on = problem.mask(lambda r: r.device == device)
    specs = sorted({r.spec for r, m in zip(problem.rows, on, strict=True) if m})
    rng = np.random.default_rng(0)
    fold_of = {s: i % k for i, s in enumerate(rng.permutation(specs))}
    pred = np.full(len(problem.rows), np.nan)
    for f in range(min(k, len(specs))):
        test = on & problem.mask(lambda r, f=f: fold_of.get(r.spec) == f)
        train = on & ~test & problem.fit_mask
        s = device_scales(problem, train, constants)
        pred[test] = predict(problem, test, constants, s)
    return pred


def _band(ape: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted median and 80th percentile of absolute percentage errors."""
    o = np.argsort(ape)
    a, c = ape[o], np.cumsum(w[o]) / w.sum()
    return float(a[np.searchsorted(c, 0.5)]), float(a[min(len(a) - 1, np.searchsorted(c, 0.8))])


def bands(problem: Problem, pred: np.ndarray, mask: np.ndarray, transfer: str, per_device_weight: bool = True
          ) -> dict[str, dict[str, Any]]:
    """Error bands per regime (``runtime/precision/batch-regime``) of the rows in ``mask``.

    With ``per_device_weight`` every device counts equally in the pooled percentiles.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(problem.rows):
        if mask[i] and np.isfinite(pred[i]):
            groups[regime_key(r.runtime, r.precision, r.batch)].append(i)
    out = {}
    for key, ix in sorted(groups.items()):
        rows = [problem.rows[i] for i in ix]
        ape = np.abs(pred[ix] / problem.seconds[ix] - 1)
        devs = [r.device for r in rows]
        w = np.array([1.0 / devs.count(d) for d in devs]) if per_device_weight else np.ones(len(ix))
        med, p80 = _band(ape, w)
        dev_set, files = sorted(set(devs)), sorted({r.file for r in rows})
        batches = sorted({r.batch for r in rows})
        n_models = len({r.spec for r in rows})
        what = "held-out" if transfer == "fitted on this device" else "leave-one-device-out over"
        out[key] = {
            "median_ape": round(med, 4), "p80_ape": round(p80, 4), "n": len(ix),
            "basis": f"{what} {', '.join(dev_set)} ({n_models} models, batch {'/'.join(map(str, batches))}"
                     + (", 5-fold over models" if transfer == "fitted on this device" else ", devices weighted equally")
                     + ")",
            "transfer": transfer, "files": files, "devices": dev_set, "batches": batches,
        }
    return out


def _proxy_bands(b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add bands for regimes without measurements from the closest measured regime, marked proxy.

    TensorRT at large batch: no table measures it; the eager large-batch band stands for it
    (kernels are compute/memory-bound there; fusion differences are not covered). Eager fp16 at
    batch 1 without a device's own rows: the eager fp32 batch-1 band (host-bound either way).
    """
    out = dict(b)
    for prec in ("fp16", "fp32"):
        src = b.get(f"torch/{prec}/large") or b.get(f"torch/{'fp32' if prec == 'fp16' else 'fp16'}/large")
        if f"tensorrt/{prec}/large" not in out and src:
            out[f"tensorrt/{prec}/large"] = {**src, "transfer": f"proxy: no TensorRT large-batch tables; eager "
                                             f"large-batch band; {src['transfer']}"}
        src1 = b.get(f"torch/{'fp32' if prec == 'fp16' else 'fp16'}/batch1")
        if f"torch/{prec}/batch1" not in out and src1:
            out[f"torch/{prec}/batch1"] = {**src1, "transfer": f"proxy: no eager {prec} batch-1 tables for this "
                                           f"device; {src1['transfer']}"}
    return out


def transfer_bands(problem: Problem, pred_lodo: np.ndarray) -> dict[str, dict[str, dict[str, Any]]]:
    """Leave-one-device-out bands per device kind (``gpu``: discrete, ``edge-gpu``: Jetson).

    A kind's band in a regime comes from that kind's held-out devices; a regime the kind has no
    measurements in takes the closest measured regime of the same kind (``_proxy_bands``), then
    the band pooled over all devices, each marked in ``transfer``.
    """
    kinds = {d: get_target(d).kind for d in {r.device for r in problem.rows}}
    everything = bands(problem, pred_lodo, np.ones(len(problem.rows), bool), "device left out")
    out = {}
    for kind in ("gpu", "edge-gpu"):
        own = _proxy_bands(bands(problem, pred_lodo, problem.mask(lambda r, k=kind: kinds[r.device] == k),
                                 "device left out"))
        for key, band in everything.items():
            if key not in own:
                own[key] = {**band, "transfer": f"device left out (no {kind} device measured in this regime: "
                                                f"pooled over all devices)"}
        out[kind] = _proxy_bands(own)
    return out


# -- entry points ----------------------------------------------------------------------------


def gpu_targets() -> list[str]:
    """Built-in targets that are GPUs (discrete or Jetson)."""
    return [n for n in list_targets() if get_target(n).kind != "cpu"]


def _rounded(c: Constants) -> dict[str, float]:
    return {k: float(f"{v:.5g}") for k, v in c.to_dict().items()}


def calibrate_all(
    data_dir: Path | None = None, out_dir: Path = CALIBRATION_DIR, verbose: bool = False,
    problem: Problem | None = None, lodo: tuple[np.ndarray, dict[str, Constants]] | None = None,
) -> dict[str, Any]:
    """Fit on every measured table and write ``<target>.json`` for every GPU target (module docstring).

    Args:
        data_dir: the measured tables (default ``KD_LATENCY_DATA`` or ``../shared/data/latency``).
        out_dir: where the calibration files go.
        verbose: print progress.
        problem, lodo: reuse an already built problem / leave-one-device-out result.

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
    measured = sorted({r.device for r in problem.rows})
    transfer = transfer_bands(problem, pred_lodo)
    shared = {
        "about": "Latency predictor constants fitted on every measured device together, and the "
                 "leave-one-device-out error bands used for devices without measurements. Written by "
                 "kd_compile.calibrate.calibrate_all.",
        "predictor": "roofline v2 (kd_compile/profilers/roofline.py)",
        "constants": _rounded(c_all),
        "constants_basis": f"fitted on all measured devices: {', '.join(measured)}",
        "fitted_on": files,
        "transfer_bands": transfer,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SHARED_FIT.name).write_text(json.dumps(shared, indent=1) + "\n", encoding="utf-8")
    summary: dict[str, Any] = {"constants": shared["constants"], "targets": {}}
    for name in gpu_targets():
        if name in measured:
            c = lodo_fits[name]
            own = problem.mask(lambda r, n=name: r.device == n)
            scales = device_scales(problem, own & problem.fit_mask, c)[name]
            held = kfold_on_device(problem, name, c)
            own_bands = bands(problem, held, own, "fitted on this device", per_device_weight=False)
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


def calibrate(
    target: str,
    tables: list[Path],
    runtime: str,
    precision: str,
    models: int | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Fit ``target`` 's device scales to the user's measured timm-format tables.

    The constants stay those of the target's calibration (or the all-device fit); the GPU and
    host scales of the device are fitted on the tables, and the error band of the regime is the
    5-fold held-out error over the tables' models. Written into ``out`` (default
    ``kd_compile/targets/calibration/<target>.json``), keeping the file's other bands.

    Args:
        target: target name or TOML path (peaks and bandwidth come from its profile).
        tables: timm ``benchmark-infer-*.csv`` files measured on that device.
        runtime: runtime the tables were measured with (``torch`` for timm's eager benchmark).
        precision: precision of the tables (``fp16`` for timm's AMP runs).
        models: use at most this many curated models (default: all in the tables).
        out: calibration JSON to write/merge into.

    Returns:
        ``target``, ``runtime``, ``precision``, ``constants``, ``device_scales``, ``fitted_on``
        (file names), ``models``, ``quality`` (n, spearman, median_ape, p80_ape, ...: held-out,
        fractions) and ``error_band``.
    """
    if runtime not in RUNTIME_RULES:
        raise UsageError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIME_RULES)})")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    if not tables:
        raise UsageError("calibrate needs at least one measured table")
    prof = get_target(target)
    rows: list[MeasuredRow] = []
    for t in tables:
        rows += read_timm_table(Path(t), prof.name, runtime, precision)
    rows = select_timm(rows, tables=1)
    first: dict[str, MeasuredRow] = {}
    for r in rows:
        first.setdefault(r.spec, r)
    rows = list(first.values())[: models or None]
    problem = build_problem(rows)
    if len(problem.rows) < 10:
        raise UsageError(f"only {len(problem.rows)} usable models in {', '.join(map(str, tables))}; need at least 10")
    constants, _, _ = load_calibration(prof)
    own = np.ones(len(problem.rows), bool)
    scales = device_scales(problem, own, constants)[prof.name]
    held = kfold_on_device(problem, prof.name, constants)
    q = quality(held, problem.seconds)
    band = bands(problem, held, own, "fitted on this device", per_device_weight=False)
    path = out or CALIBRATION_DIR / f"{prof.name}.json"
    doc: dict[str, Any] = dict(read_calibration(prof.name) or {}) if out is None else {}
    if path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
    doc.update(target=prof.name, constants=_rounded(constants),
               constants_basis=doc.get("constants_basis", "the target's calibration"),
               device_scales=scales.to_dict(), device_scales_fitted_on=[Path(t).name for t in tables])
    doc.setdefault("error_bands", {}).update(band)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
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
    }


def synthetic_problem(
    true: Constants, n_models: int = 80, seed: int = 0
) -> tuple[KernelTable, np.ndarray, np.ndarray]:
    """Random models on a mix of devices/runtimes whose latencies follow the model exactly.

    Kernels span compute-, memory- and host-bound regimes of every class, tensor-core and
    CUDA-core GPUs, a Jetson, eager and TensorRT, batch 1..256, so every constant is identifiable.

    Returns:
        (table, seconds per row, weights).
    """
    from .profilers.fusion import KERNEL_CLASSES, Kernel

    rng = np.random.default_rng(seed)
    setups = [("rtx3090", "fp16", "torch"), ("1080ti", "fp32", "torch"), ("t4", "fp16", "tensorrt"),
              ("jetson-agx-xavier", "fp16", "tensorrt"), ("jetson-agx-xavier", "fp16", "torch"),
              ("2080ti", "fp32", "torch")]
    terms = [DeviceTerms.of(get_target(t), p, r) for t, p, r in setups]
    ks, batches, devs = [], [], []
    for _ in range(n_models):
        kern = []
        for _ in range(int(rng.integers(8, 40))):
            op = KERNEL_CLASSES[int(rng.integers(0, len(KERNEL_CLASSES)))]
            act = float(10 ** rng.uniform(3, 7))
            flops = 0.0 if op == "elementwise" else act * float(10 ** rng.uniform(-1, 3))
            n = int(rng.integers(1, 4))
            kern.append(Kernel("k", op, int(flops), int(act), int(10 ** rng.uniform(2, 6)),
                               int(2 ** rng.integers(2, 10)), n, int(rng.integers(0, n + 1))))
        rows = kernel_rows(kern)
        for d in terms:
            ks.append(rows)
            batches.append(int(2 ** rng.integers(0, 9)))
            devs.append(d)
    table = KernelTable.build(ks, batches, devs)
    return table, row_seconds(table, true), np.ones(len(ks))
