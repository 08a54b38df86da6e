"""Fit the roofline predictor's efficiency constants to measured latency tables.

``calibrate(target, tables, runtime, precision)`` reads measured tables (timm benchmark CSVs:
model, image size, batch, step time per batch), counts each model's ops once with the counting
profiler (timm models built on the ``meta`` device: no weights, no real compute), groups the ops
into the runtime's kernels and fits :class:`~kd_compile.profilers.roofline.Efficiency` by
least squares on log latency (``scipy.optimize.least_squares``, parameters in log space so they
stay positive). Op counts are cached per ``model@img_size`` in
``kd_compile/targets/calibration/layer_costs.json`` (data, committed) so benchmarks and re-fits
need no model building.

The fit is stored in ``kd_compile/targets/calibration/<target>.json`` under
``fits["<runtime>/<precision>"]`` with the files it was fitted on and its quality.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .profilers.counting import OpRecord
from .profilers.roofline import (
    CALIBRATION_DIR,
    DEFAULT_EFFICIENCY,
    RUNTIME_RULES,
    DeviceTerms,
    Efficiency,
    KernelTable,
    fuse,
    model_times,
)
from .targets.profile import PRECISIONS, get_target

LAYER_COSTS = CALIBRATION_DIR / "layer_costs.json"

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


@dataclass(frozen=True)
class Row:
    """One measured model: per-batch step time in milliseconds."""

    model: str
    img_size: int
    batch: int
    step_ms: float

    @property
    def key(self) -> str:
        return f"{self.model}@{self.img_size}"


def read_timm_table(path: Path) -> list[Row]:
    """Rows of a timm ``benchmark-infer-*.csv`` (columns documented in the data README)."""
    rows: list[Row] = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            try:
                rows.append(Row(r["model"], int(r["infer_img_size"]), int(r["infer_batch_size"]),
                                float(r["infer_step_time"])))
            except (KeyError, ValueError):
                continue
    if not rows:
        raise UsageError(
            f"{path}: no timm benchmark rows (need model, infer_img_size, infer_batch_size, infer_step_time)"
        )
    return rows


def select_rows(tables: Sequence[Sequence[Row]], models: int | None = None) -> list[str]:
    """Keys ``model@size`` of curated models present in every table, one size per model.

    The size is the model's smallest measured size that every table has (timm benchmarks a
    model at its default size first).
    """
    import timm

    known = set(timm.list_models())
    per_table = [{r.key for r in t} for t in tables]
    common = set.intersection(*per_table) if per_table else set()
    keys: list[str] = []
    for name in CURATED:
        if name not in known:
            continue
        sizes = sorted(int(k.split("@")[1]) for k in common if k.split("@")[0] == name)
        if sizes:
            keys.append(f"{name}@{sizes[0]}")
    return keys[:models] if models else keys


def _build_and_trace(name: str, size: int) -> dict[str, Any]:
    import timm
    import torch

    from .profilers.counting import trace_ops

    last: Exception | None = None
    for kw in ({}, {"img_size": size}):
        try:
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False, **kw)
            tr = trace_ops(m, (3, size, size))
            return {"params": tr.params, "flops": tr.total_flops, "ops": [r.to_list() for r in tr.ops]}
        except Exception as exc:  # noqa: BLE001 - any timm model may fail on meta; try the next way
            last = exc
    raise RuntimeError(f"cannot count {name}@{size}: {last}")


def layer_costs(
    keys: Sequence[str], cache: Path | None = LAYER_COSTS, verbose: bool = False
) -> dict[str, list[OpRecord]]:
    """Op records (batch 1, fp32) per ``model@size``, from the cache or counted and cached.

    Models that cannot be built or traced are left out (and reported when ``verbose``).
    """
    data: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8")).get("entries", {})
    changed = False
    for k in keys:
        if k in data:
            continue
        name, size = k.split("@")
        t0 = time.perf_counter()
        try:
            data[k] = _build_and_trace(name, int(size))
            changed = True
        except Exception as exc:  # noqa: BLE001 - one unbuildable model must not stop calibration
            if verbose:
                print(f"  skip {k}: {str(exc)[:120]}")
            continue
        if verbose:
            print(f"  counted {k} in {time.perf_counter() - t0:.1f}s")
    if changed and cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "about": "Per-op costs (batch 1, fp32) of timm models counted by kd_compile.profilers.counting "
            "on the meta device; columns: module, op class, flops, weight_bytes, in_bytes, out_bytes, ch.",
            "entries": {k: data[k] for k in sorted(data)},
        }
        cache.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    return {k: [OpRecord.from_list(v) for v in data[k]["ops"]] for k in keys if k in data}


# -- fitting -------------------------------------------------------------------------------

_NAMES = tuple(f.name for f in fields(Efficiency))
_LOWER = {"c_half": 0.1, "launch_scale": 0.01}
_UPPER = {"c_half": 2048.0, "launch_scale": 100.0}


def quality(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation, median / mean absolute % error and RMSE of log ratio."""
    from scipy.stats import spearmanr

    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    ape = np.abs(pred / meas - 1.0) * 100.0
    return {
        "n": len(meas),
        "spearman": float(spearmanr(pred, meas).statistic) if len(meas) > 2 else float("nan"),
        "median_ape": float(np.median(ape)),
        "mean_ape": float(np.mean(ape)),
        "rmse_log": float(np.sqrt(np.mean(np.log(pred / meas) ** 2))),
    }


def fit_efficiency(
    table: KernelTable,
    measured_s: np.ndarray,
    dev: DeviceTerms,
    x0: Efficiency | None = None,
    fixed: Sequence[str] = (),
) -> tuple[Efficiency, dict[str, float]]:
    """Least-squares fit of the efficiencies on log latency.

    Args:
        table: kernels of M models.
        measured_s: measured seconds per batch, shape (M,).
        dev: target terms (peaks, bandwidth, launch cost, bytes scale).
        x0: starting point (default :data:`DEFAULT_EFFICIENCY`).
        fixed: names of constants held at ``x0``.

    Returns:
        The fitted constants and the fit quality on the fitting data.
    """
    from scipy.optimize import least_squares

    start = (x0 or DEFAULT_EFFICIENCY).vector()
    # A class with no FLOPs in the data cannot be identified: hold its efficiency at x0
    # rather than report a number the data says nothing about.
    absent = {n for i, n in enumerate(_NAMES[:4]) if not np.any((table.cls == i) & (table.flops > 0))}
    free = [i for i, n in enumerate(_NAMES) if n not in fixed and n not in absent]
    lo = np.log([_LOWER.get(_NAMES[i], 1e-4) for i in free])
    hi = np.log([_UPPER.get(_NAMES[i], 1.0) for i in free])
    y = np.log(np.asarray(measured_s, float))

    def full(z: np.ndarray) -> np.ndarray:
        v = start.copy()
        v[free] = np.exp(z)
        return v

    def resid(z: np.ndarray) -> np.ndarray:
        return np.log(model_times(table, dev, full(z))) - y

    best = None
    # Two starts: the given point and a mid-range one; max() makes the surface piecewise.
    for s in (start, np.array([0.3, 0.1, 0.3, 0.3, 0.5, 0.5, 8.0, 1.0])):
        z0 = np.clip(np.log(s[free]), lo + 1e-6, hi - 1e-6)
        r = least_squares(resid, z0, bounds=(lo, hi), x_scale=1.0, diff_step=1e-4, max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    eff = Efficiency.from_vector(full(best.x))
    return eff, quality(model_times(table, dev, eff), np.asarray(measured_s, float))


def synthetic_problem(
    true: Efficiency, dev: DeviceTerms, n_models: int = 60, seed: int = 0
) -> tuple[KernelTable, np.ndarray]:
    """Random models whose latencies follow the roofline exactly under ``true`` constants.

    Kernels span compute- and memory-bound regimes of every class, small and large channel
    counts and batch 1..64, so every constant is identifiable.
    """
    from .profilers.roofline import KERNEL_CLASSES, Kernel

    rng = np.random.default_rng(seed)
    models, batches = [], []
    for _ in range(n_models):
        ks = []
        for _ in range(int(rng.integers(8, 40))):
            op = KERNEL_CLASSES[int(rng.integers(0, len(KERNEL_CLASSES)))]
            act = float(10 ** rng.uniform(4, 7))
            flops = 0.0 if op == "elementwise" else act * float(10 ** rng.uniform(-1, 3))
            ks.append(Kernel("k", op, int(flops), int(act), int(10 ** rng.uniform(2, 6)),
                             int(2 ** rng.integers(2, 10)), 1))
        models.append(ks)
        batches.append(int(2 ** rng.integers(0, 7)))
    table = KernelTable.build(models, batches)
    return table, model_times(table, dev, true)


# -- entry point ---------------------------------------------------------------------------


def prepare(
    tables: Sequence[Path], runtime: str, models: int | None = None, verbose: bool = False
) -> tuple[list[str], list[list[Row]], dict[str, list[OpRecord]]]:
    """Read tables, select models present in all of them, load/count their op records."""
    rows = [read_timm_table(Path(t)) for t in tables]
    keys = select_rows(rows, models)
    costs = layer_costs(keys, verbose=verbose)
    keys = [k for k in keys if k in costs]
    return keys, rows, costs


def kernel_table(
    keys: Sequence[str], rows: Sequence[Row], costs: dict[str, list[OpRecord]], runtime: str
) -> tuple[KernelTable, np.ndarray]:
    """Kernel table of ``keys`` at the batches of ``rows`` and their measured seconds."""
    by_key = {r.key: r for r in rows}
    sel = [by_key[k] for k in keys]
    table = KernelTable.build([fuse(costs[k], runtime) for k in keys], [r.batch for r in sel])
    return table, np.array([r.step_ms * 1e-3 for r in sel])


def calibrate(
    target: str,
    tables: list[Path],
    runtime: str,
    precision: str,
    models: int | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Fit the roofline efficiencies of ``target`` to measured timm benchmark tables.

    Args:
        target: target name or TOML path (peaks and bandwidth come from its profile).
        tables: timm ``benchmark-infer-*.csv`` files measured on that device.
        runtime: runtime the tables were measured with (``torch`` for timm's eager benchmark).
        precision: precision of the tables (``fp16`` for timm's AMP runs).
        models: use at most this many models (default: all curated models in the tables).
        out: calibration JSON to write/merge into (default
            ``kd_compile/targets/calibration/<target>.json``).

    Returns:
        The fit entry: ``constants``, ``fitted_on`` (file names), ``models``, ``quality``
        (n, spearman, median_ape, mean_ape, rmse_log on the fitting rows), ``runtime``,
        ``precision``, ``target``.
    """
    if runtime not in RUNTIME_RULES:
        raise UsageError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIME_RULES)})")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    if not tables:
        raise UsageError("calibrate needs at least one measured table")
    prof = get_target(target)
    keys, rows, costs = prepare(tables, runtime, models)
    if len(keys) < 10:
        raise UsageError(f"only {len(keys)} usable models in {', '.join(map(str, tables))}; need at least 10")
    all_rows = [r for t in rows for r in t]
    # With several tables for one device, the first table's row of a key is used.
    first: dict[str, Row] = {}
    for r in all_rows:
        first.setdefault(r.key, r)
    table, meas = kernel_table(keys, list(first.values()), costs, runtime)
    eff, q = fit_efficiency(table, meas, DeviceTerms.of(prof, precision, runtime))
    entry = {
        "target": prof.name,
        "runtime": runtime,
        "precision": precision,
        "constants": {k: round(v, 6) for k, v in eff.to_dict().items()},
        "fitted_on": [Path(t).name for t in tables],
        "models": list(keys),
        "quality": {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in q.items()},
    }
    path = out or CALIBRATION_DIR / f"{prof.name}.json"
    doc: dict[str, Any] = {"target": prof.name, "fits": {}}
    if path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
    doc.setdefault("fits", {})[f"{runtime}/{precision}"] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return entry
