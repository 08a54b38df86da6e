"""Benchmark: every registered search strategy on the tabular NAS-with-KD benchmark.

Each strategy (``list_strategies()``; one that fails to construct or to run is skipped with the
reason printed) searches the TRADE space; ``kd_compile.testing.tabular.TabularBenchmark``
answers each proposal with the recorded results of the nearest table architecture at the
nearest recorded fidelity. Budgets are equal in *training cost*: an evaluation at fidelity f
costs f, so single-fidelity strategies get ``--budget`` full-fidelity evaluations and
multi-fidelity strategies run until they have spent the same cost. Every strategy is
constructed with ``budget=--budget``, the training budget in full-fidelity trainings, as the
compiler's search loop gives it (the loop, too, charges a trial at fidelity f with f).

Score: ``--score error`` (default) is ``1 - val accuracy`` (regret = accuracy points below the
table's best); ``--score search`` is the compiler's KD-guided score (cost term over accuracy
relative to the teacher to the 4th power). On the committed table the students sit at 3-29 %
accuracy at full fidelity (62 classes, 150 SGD steps; the teacher has 66 %), where the 4th power
turns val noise into large factors in the score, hence the default.

Printed per strategy, over ``--seeds`` seeds: the median and quartiles of the regret (the
incumbent's full-fidelity score minus the table's best; the incumbent is the best trial at the
highest fidelity evaluated) after a cost of 10, 25 and ``--budget``; the median number of
evaluations made ("evals"); the median number of distinct table architectures they mapped to
("archs"); the mean regret at ``--budget`` and the share of seeds whose incumbent is the
table's best architecture ("best"; regrets are quantised by the table, so medians often tie);
a 95 % confidence interval of the median regret at ``--budget`` over the seeds ("median CI95";
percentile bootstrap; the results rows also hold mean +- 1.96 SE as ``ci95_mean``);
the cost at which the strategy's median regret first reaches random search's median regret at
``--budget`` ("match", ">budget" when it does not); the seeds run (``--max-seconds``
may stop a slow strategy early, after ``--min-seeds``).

Repeats: proposals close to each other map to the same table architecture. A repeat of an
(architecture, level) pair already evaluated in the run costs nothing (the compiler serves a
repeated candidate from its cache), up to as many repeats as the budget; past that, and always
with ``--charge-repeats`` (the pessimistic reading that hits local strategies such as TuRBO's
trust region hardest), a repeat is charged like a new training. "evals" counts repeats,
"archs" does not.

Issue goals checked: turbo reaches random's median best at N=50 within 25 evaluations;
multi-fidelity strategies beat single-fidelity ones at equal training cost.

Replicates: where the table holds replicate trainings (``make_tabular.py --replicate-top``),
an architecture's full-fidelity value is the mean over its training seeds, so the table's best
and every regret are computed on means (a strategy still observes the recorded seed-0 run).

GP settings: ``--gp-settings shipped`` (default) creates every strategy with its own defaults,
the settings the compiler's search runs with; ``--gp-settings fast`` passes ``GP_OPTIONS``
(fewer candidates, L-BFGS iterations and MC samples) for quick looks. Measured on the committed
table, one seed of turbo at budget 50 (``--seeds 1 --only turbo``, ``OMP_NUM_THREADS=1``, this
project's 2-core machine, with another job running): 48 s with ``shipped``, 9 s with ``fast``
(the same regret, 0.006, on that seed).

Run::

    .venv/bin/python benchmarks/strategies.py [--seeds 20] [--budget 50] [--only turbo,random]
    .venv/bin/python benchmarks/strategies.py --table benchmarks/data/nas_kd_glyphs10.jsonl

Each strategy's row is merged into ``benchmarks/results/strategies.json``
(``strategies_charge_repeats.json`` with ``--charge-repeats``; ``strategies_<table>.json`` for
another ``--table``, e.g. ``strategies_glyphs10.json``; ``--results`` elsewhere), the file the
README's table is checked against (``tests/test_readme_figures.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kd_compile.errors import UsageError
from kd_compile.search import Strategy, create_strategy, list_strategies
from kd_compile.testing.tabular import OBJECTIVES, TabularBenchmark, TabularRun, run_strategy

DEFAULT_TABLE = ROOT / "benchmarks" / "data" / "nas_kd_glyphs.jsonl"
RESULTS_DIR = ROOT / "benchmarks" / "results"
# --gp-settings fast: modest GP settings so that the GP strategies run in minutes (passed where
# accepted); the default, "shipped", passes none of them: the strategies' own defaults, which are
# what the compiler's search runs with
GP_OPTIONS: dict[str, Any] = {"n_candidates": 200, "gp_maxiter": 30, "mc_samples": 16}
GP_SETTINGS: dict[str, dict[str, Any]] = {"shipped": {}, "fast": GP_OPTIONS}
BOOTSTRAP = 2000  # resamples of the bootstrap CI of the median regret


def make_strategy(
    name: str, bench: TabularBenchmark, seed: int, budget: int, gp_options: dict[str, Any] | None = None
) -> Strategy:
    """Create ``name`` with those of ``gp_options`` (default ``GP_OPTIONS``) it accepts, and the
    table's metrics as ``objectives`` if it takes them (a multi-objective strategy); an option it
    rejects by name is dropped and creation retried; any other error is raised."""
    opts = {**(GP_OPTIONS if gp_options is None else gp_options), "objectives": OBJECTIVES}
    while True:
        try:
            return create_strategy(name, bench.space, seed=seed, budget=budget, **opts)
        except (UsageError, TypeError) as exc:
            msg = str(exc)
            m = re.search(r"unknown options: (.+)$", msg) or re.search(r"unexpected keyword argument '(\w+)'", msg)
            bad = {k.strip() for k in m.group(1).split(",")} & set(opts) if m else set()
            if not bad:
                raise
            for k in bad:
                del opts[k]


def quartiles(v: list[float]) -> str:
    a = np.asarray(v, dtype=float)
    if not np.isfinite(a).any():
        return f"{'inf':>22}"
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return f"{med:7.3f} [{q1:6.3f},{q3:6.3f}]"


def ci95(v: list[float], seed: int = 0) -> dict[str, list[float]]:
    """95 % confidence intervals over seeds of the regrets ``v`` (one per strategy seed).

    ``median``: percentile bootstrap of the median (``BOOTSTRAP`` resamples, seeded, so the same
    regrets give the same interval; the outer order statistics are taken, no interpolation, so a
    seed that found nothing, regret ``inf``, widens the interval instead of making it ``nan``).
    ``mean``: mean +- 1.96 standard errors (``inf`` when a regret is; a single seed gives ``nan``
    bounds: no spread to measure)."""
    a = np.asarray(v, dtype=float)
    rng = np.random.default_rng(seed)
    meds = np.median(a[rng.integers(0, a.size, size=(BOOTSTRAP, a.size))], axis=1)
    lo, hi = np.quantile(meds, 0.025, method="lower"), np.quantile(meds, 0.975, method="higher")
    if np.isfinite(a).all() and a.size > 1:
        half = 1.96 * a.std(ddof=1) / np.sqrt(a.size)
        mean = [float(a.mean() - half), float(a.mean() + half)]
    else:
        mean = [float(a.mean()), float(a.mean())] if a.size > 1 else [math.nan, math.nan]
    return {"median": [float(lo), float(hi)], "mean": mean}


def default_results(table: Path, charge_repeats: bool) -> Path:
    """``strategies.json`` for the committed table; ``strategies_<table>.json`` for another one
    (``nas_kd_glyphs10.jsonl`` -> ``strategies_glyphs10.json``), so a second table's rows never
    replace the README's; ``_charge_repeats`` is appended with ``--charge-repeats``."""
    stem = "strategies"
    if table.resolve() != DEFAULT_TABLE.resolve():
        name = table.name.split(".")[0]
        stem += "_" + (name[len("nas_kd_") :] if name.startswith("nas_kd_") else name)
    return RESULTS_DIR / (stem + ("_charge_repeats" if charge_repeats else "") + ".json")


def median_curve(runs: list[TabularRun], grid: np.ndarray) -> np.ndarray:
    """Median over runs of the regret after each cost in ``grid``."""
    return np.median(np.array([[r.regret_at_cost(c) for c in grid] for r in runs]), axis=0)


def save_results(path: Path, settings: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    """Merge this run's per-strategy rows into ``path`` (JSON): the README's table is built from
    several ``--only`` runs, so rows of other strategies are kept when the settings are the same
    (a file written with other settings is replaced)."""
    doc: dict[str, Any] = {"settings": settings, "strategies": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("settings") == settings:
            doc["strategies"] = dict(old.get("strategies") or {})
    doc["strategies"].update(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budget", type=int, default=50, help="training cost, in full-fidelity evaluations")
    ap.add_argument("--checkpoints", default="10,25", help="extra costs at which regret is shown")
    ap.add_argument("--only", default="", help="comma-separated strategy names (default: all)")
    ap.add_argument(
        "--score",
        default="error",
        choices=("search", "error"),
        help="error: 1 - val acc (default; regret in accuracy); search: the compiler's score",
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="per strategy: stop adding seeds past this time (at least --min-seeds run)",
    )
    ap.add_argument("--min-seeds", type=int, default=5)
    ap.add_argument("--charge-repeats", action="store_true", help="charge repeated table lookups")
    ap.add_argument(
        "--tie",
        default="final",
        choices=("final", "data"),
        help="equal-fidelity levels: annealed readout (final) or larger data fraction (data)",
    )
    ap.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON the rows are merged into (default benchmarks/results/strategies.json, "
        "strategies_charge_repeats.json with --charge-repeats, strategies_<table>.json for another "
        "--table); 'none' writes nothing",
    )
    ap.add_argument(
        "--gp-settings",
        default="shipped",
        choices=tuple(GP_SETTINGS),
        help="shipped: the GP strategies' own defaults, as the compiler runs them (default); "
        f"fast: {GP_OPTIONS} for quick looks",
    )
    args = ap.parse_args(argv)
    if not args.table.is_file():
        raise SystemExit(f"error: --table {args.table}: no such file")
    gp_options = GP_SETTINGS[args.gp_settings]
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    bench = TabularBenchmark(args.table, score=args.score, tie=args.tie)
    n = args.budget
    checks = [int(c) for c in args.checkpoints.split(",") if c] + [n]
    names = [s for s in args.only.split(",") if s] or list_strategies()
    if "random" in names:
        names = ["random"] + [s for s in names if s != "random"]
    print(f"# {' '.join(sys.argv)}\n# {platform.node()}, {platform.machine()}, torch threads 1")
    print(
        f"table {args.table.name}: {len(bench.archs)} archs, levels "
        f"{', '.join(f'{lv.fidelity:.3g}' for lv in bench.levels)}; score={args.score}, tie={args.tie}; "
        f"best full score {bench.best_full_score:.4f}, median {np.median(bench.full_scores):.4f}; "
        f"{len(bench.replicated)} archs with replicate seeds (full fidelity: mean over seeds); "
        f"gp settings {args.gp_settings} {gp_options or '(strategy defaults)'}"
    )
    if n >= len(bench.archs) / 2:
        print(f"NOTE: budget {n} is >= half the table ({len(bench.archs)} archs): regrets saturate")
    print(f"{args.seeds} seeds, budget = training cost {n} (an evaluation at fidelity f costs f)\n")

    grid = np.arange(1, n + 1, dtype=float)
    results: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, Any]] = {}  # what --results keeps
    target: float | None = None
    head = f"{'strategy':11} {'mf':2} " + " ".join(f"{'regret@' + str(c):>22}" for c in checks)
    print(
        head + f" {'median CI95@' + str(n):>17} {'mean@' + str(n):>8} {'best':>5} {'evals':>5} {'archs':>5} "
        f"{'match':>6} {'seeds':>5} {'time':>6}"
    )
    for name in names:
        t0 = time.perf_counter()
        runs: list[TabularRun] = []
        try:
            for seed in range(args.seeds):
                if args.max_seconds > 0 and seed >= args.min_seeds and time.perf_counter() - t0 > args.max_seconds:
                    break
                strat = make_strategy(name, bench, seed, n, gp_options)
                runs.append(run_strategy(bench, strat, max_cost=n, charge_repeats=args.charge_repeats))
        except Exception as exc:  # noqa: BLE001 -- a broken strategy is reported and skipped
            print(f"{name:11} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        mf = bool(getattr(strat, "multi_fidelity", False))
        curve = median_curve(runs, grid)
        if name == "random":
            target = float(curve[-1])
        hit = np.flatnonzero(curve <= target + 1e-12) if target is not None else np.array([])
        match = f"{int(grid[hit[0]]):d}" if hit.size else f">{n}"
        evals = int(np.median([len(r.trials) for r in runs]))
        archs = int(np.median([len({t.metrics["arch"] for t in r.trials}) for r in runs]))
        secs = time.perf_counter() - t0
        cols = " ".join(f"{quartiles([r.regret_at_cost(c) for r in runs]):>22}" for c in checks)
        final = np.array([r.regret_at_cost(n) for r in runs])
        mean = float(final.mean())  # inf when a seed found nothing (regrets are >= 0)
        best = float(np.mean(final <= 1e-12))  # share of seeds whose incumbent is the table's best
        ci = ci95(final.tolist())
        ci_txt = "[{:6.3f},{:6.3f}]".format(*ci["median"])
        print(
            f"{name:11} {'y' if mf else 'n':2} {cols} {ci_txt:>17} {mean:8.4f} {best:5.0%} {evals:5d} {archs:5d} "
            f"{match:>6} "
            f"{len(runs):5d} {secs:5.0f}s",
            flush=True,
        )
        results[name] = {"mf": mf, "final": float(curve[-1]), "mean": mean, "match": match}
        rows[name] = {
            "mf": mf,
            "regret": {  # median and quartiles over seeds after each checkpoint cost
                str(c): dict(zip(("q1", "median", "q3"), map(float, np.percentile(at, [25, 50, 75]))))
                for c, at in ((c, [r.regret_at_cost(c) for r in runs]) for c in checks)
            },
            "mean": mean,
            # 95 % CIs over the seeds of the regret at --budget: bootstrap of the median, mean +- 1.96 SE
            "ci95_median": ci["median"],
            "ci95_mean": ci["mean"],
            "best": best,
            "evals": evals,
            "archs": archs,
            "match": match,
            "seeds": len(runs),
            "seconds": secs,
        }
        # each strategy's row is saved as soon as it is done: a long run stopped later keeps it
        if args.results is None or str(args.results).lower() != "none":
            settings = {
                "table": args.table.name, "budget": n, "checkpoints": checks, "score": args.score, "tie": args.tie,
                "charge_repeats": args.charge_repeats, "gp_settings": args.gp_settings, "gp_options": gp_options,
                "replicated_archs": len(bench.replicated),
            }  # fmt: skip
            save_results(args.results or default_results(args.table, args.charge_repeats), settings, {name: rows[name]})
    if target is not None:
        print(
            f"\nrandom's median regret at cost {n}: {target:.4f} ('match' = first cost where a "
            f"strategy's median regret <= it)"
        )
    if "turbo" in results:
        m = results["turbo"]["match"]
        ok = not m.startswith(">") and int(m) <= 25
        print(f"goal 1, turbo matches random@{n} within 25 evaluations: {'yes' if ok else 'no'} (match at {m})")
    for stat in ("final", "mean"):
        mf = {k: v[stat] for k, v in results.items() if v["mf"]}
        sf = {k: v[stat] for k, v in results.items() if not v["mf"]}
        if mf and sf:
            best_sf = min(sf, key=sf.get)  # type: ignore[arg-type]
            beat = [k for k, v in mf.items() if v < sf[best_sf]]
            what = "median" if stat == "final" else "mean"
            print(
                f"goal 2, multi-fidelity beats single-fidelity at cost {n} ({what} regret): best "
                f"single-fidelity {best_sf} {sf[best_sf]:.4f}; multi-fidelity "
                + ", ".join(f"{k} {v:.4f}" for k, v in sorted(mf.items(), key=lambda kv: kv[1]))
                + f" -> {len(beat)}/{len(mf)} beat it"
            )
    print(f"\n(total {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
