"""Benchmark: do low-fidelity KD proxies rank architectures better than CE proxies?

For every recorded low-fidelity level (data fraction x epochs) of the tabular benchmark
(``benchmarks/make_tabular.py``), prints Kendall's tau and Pearson's r between the proxy's val
accuracy and the full-fidelity accuracy (KD, all data, last epoch), for CE and KD proxies side by
side; and Kendall's tau of the search score (accuracy combined with params/FLOPs/latency, see
``kd_compile.testing.tabular``), the quantity a search actually ranks by. The papers' claim
(``/work/shared/papers/mf-nas-kd-low-fidelity.txt``): at one epoch, KD proxies reach tau 0.47
where CE proxies get 0.06.

Run::

    .venv/bin/python benchmarks/fidelity.py [--table benchmarks/data/nas_kd_glyphs.jsonl]

Writes the rows to ``benchmarks/results/fidelity.json`` (``--results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kd_compile.testing.tabular import TabularBenchmark, load_table

DEFAULT_TABLE = ROOT / "benchmarks" / "data" / "nas_kd_glyphs.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "fidelity.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the tau intervals")
    ap.add_argument("--results", type=Path, default=RESULTS, help="JSON to write the rows to")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # a proxy with every accuracy equal (all at chance) has no defined correlation: printed as nan
    warnings.filterwarnings("ignore", category=stats.ConstantInputWarning)
    warnings.filterwarnings("ignore", message="All-NaN slice")
    t0 = time.perf_counter()
    table = load_table(args.table)
    kd = TabularBenchmark(table, loss="kd")
    ce = TabularBenchmark(table, loss="ce")
    full = kd.full_level
    n_arch = len(table.archs)
    print(
        f"# {' '.join(sys.argv)}\n# {platform.node()}, {platform.machine()}; table {args.table.name}: "
        f"{n_arch} archs, {table.settings['data']}, teacher val acc {table.teacher['val_acc']:.3f}"
    )
    y = np.array([kd.accuracy(i, full) if kd.accuracy(i, full) is not None else np.nan for i in range(n_arch)])
    ys = kd.full_scores
    print(
        f"full fidelity: KD, fraction {full.fraction:g}, epoch {full.epoch}; val acc "
        f"min {np.nanmin(y):.3f} median {np.nanmedian(y):.3f} max {np.nanmax(y):.3f}"
    )
    rng = np.random.default_rng(0)
    print(
        f"\n{'loss':4} {'fraction':>8} {'epoch':>5} {'fidelity':>8} {'n':>4} {'acc med':>7} "
        f"{'tau(acc)':>8} {'95% CI':>15} {'pearson':>7} {'tau(score)':>10}"
    )
    rows = []
    kept: list[dict] = []  # what --results keeps
    for bench, loss in ((ce, "ce"), (kd, "kd")):
        for lv in bench.levels:
            if loss == "kd" and lv == full:
                continue
            x = np.array(
                [bench.accuracy(i, lv) if bench.accuracy(i, lv) is not None else np.nan for i in range(n_arch)]
            )
            xs = np.array([bench.score_at(i, lv) for i in range(n_arch)])
            m = np.isfinite(x) & np.isfinite(y)
            ms = np.isfinite(xs) & np.isfinite(ys)
            tau = stats.kendalltau(x[m], y[m]).statistic
            r = stats.pearsonr(x[m], y[m]).statistic
            tau_s = stats.kendalltau(xs[ms], ys[ms]).statistic
            idx = np.flatnonzero(m)
            boots = []
            for _ in range(args.bootstrap):
                b = rng.choice(idx, size=idx.size, replace=True)
                boots.append(stats.kendalltau(x[b], y[b]).statistic)
            lo, hi = np.nanpercentile(boots, [2.5, 97.5])
            rows.append((loss, lv, tau, r, tau_s))
            kept.append(
                {"loss": loss, "fraction": lv.fraction, "epoch": lv.epoch, "fidelity": lv.fidelity, "n": int(m.sum()),
                 "tau": float(tau), "tau_ci95": [float(lo), float(hi)], "pearson": float(r), "tau_score": float(tau_s)}
            )  # fmt: skip
            print(
                f"{loss:4} {lv.fraction:8.4f} {lv.epoch:5d} {lv.fidelity:8.4f} {int(m.sum()):4d} "
                f"{np.median(x[m]):7.3f} {tau:8.3f} [{lo:6.3f},{hi:6.3f}] {r:7.3f} {tau_s:10.3f}"
            )
    print("\nKD minus CE at equal level (tau of accuracy):")
    ce_by = {(lv.fraction, lv.epoch): tau for loss, lv, tau, _, _ in rows if loss == "ce"}
    for loss, lv, tau, _, _ in rows:
        if loss == "kd" and (lv.fraction, lv.epoch) in ce_by:
            c = ce_by[(lv.fraction, lv.epoch)]
            print(f"  fraction {lv.fraction:.4f} epoch {lv.epoch}: CE {c:.3f} -> KD {tau:.3f} ({tau - c:+.3f})")
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    full_level = {"loss": "kd", "fraction": full.fraction, "epoch": full.epoch}
    doc = {"table": args.table.name, "full": full_level, "rows": kept}
    args.results.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
