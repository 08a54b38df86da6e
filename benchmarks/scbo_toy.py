"""Benchmark: does learning a measured constraint (SCBO) help TuRBO avoid it?

On the toy KD problem of ``kd_compile.testing.strategies`` (``ToySpace``, ``toy_evaluate``) a
hidden latency limit, known only once a candidate is "measured", is set at the median of the
toy latency over random configs, so about half of the space breaks it. Each strategy (turbo,
turbo-m) runs the compiler's search loop (``run_search``: an infeasible candidate costs no
training budget) at ``--budget`` with the constraint *learned* (the trial carries
``metrics["constraints"]``, so the strategy fits a GP on it, :mod:`kd_compile.search.gp`) and
with the *penalty* only (the same infeasible trials, without the constraint value: the
objective's GP sees a penalised score, the pre-SCBO behaviour).

Printed and written per strategy and mode, over ``--seeds`` seeds (mean +- sd): the infeasible
candidates after the initial design (measured, never trained: the time SCBO should save), the
share of post-design proposals that met the limit, and the best score found (lower is better).

Run::

    .venv/bin/python benchmarks/scbo_toy.py [--seeds 10] [--budget 20]

writes ``benchmarks/results/scbo_toy.json`` (checked against the README by
``tests/test_readme_figures.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kd_compile.search import Journal, TrialStatus, create_strategy, run_search  # noqa: E402
from kd_compile.search.gp import CONSTRAINT_METRIC  # noqa: E402
from kd_compile.testing.strategies import ToySpace, toy_evaluate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scbo_toy.json"


def hidden_limit(space: ToySpace, n: int = 2000) -> float:
    """The median toy latency over ``n`` random configs (seed 0)."""
    rng = np.random.default_rng(0)
    lat = [0.05 * c["width"] * c["depth"] / c["kernel"] for c in (space.sample(rng) for _ in range(n))]
    return float(np.median(lat))


def evaluator(space: ToySpace, limit: float, learned: bool):
    base = toy_evaluate(space)

    def evaluate(config: dict[str, Any], fidelity: float, number: int):
        t = base(config, fidelity, number)
        if not t.ok:
            return t  # the toy params limit: known before training, filtered by the strategy
        c = t.metrics["latency_ms"] / limit - 1.0
        m = {**t.metrics, "violation": c}
        if learned:
            m[CONSTRAINT_METRIC] = {"latency": c}
        if c > 0:
            return dataclasses.replace(t, status=TrialStatus.INFEASIBLE, score=None, metrics=m, error="slow")
        return dataclasses.replace(t, metrics=m)

    return evaluate


def one_run(name: str, seed: int, budget: int, limit: float, learned: bool) -> dict[str, float]:
    space = ToySpace()
    strat = create_strategy(name, space, seed=seed, budget=budget)
    n_init = int(getattr(strat, "n_init", 0))
    with tempfile.TemporaryDirectory() as d:
        journal = Journal(Path(d) / "j.jsonl")
        journal.open({"fingerprint": "scbo"}, resume=False)
        res = run_search(space, strat, evaluator(space, limit, learned), budget, journal)
        journal.close()
    late = [t for t in res.trials[n_init:] if "violation" in t.metrics]
    best = res.best()
    return {
        "infeasible_after_design": float(sum(t.metrics["violation"] > 0 for t in late)),
        "feasible_share": float(np.mean([t.metrics["violation"] <= 0 for t in late])) if late else float("nan"),
        "best_score": float(best.score) if best is not None else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--only", default="turbo,turbo-m")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    limit = hidden_limit(ToySpace())
    print(f"# {' '.join(sys.argv)}\nhidden latency limit {limit:.4f} (median over random configs); "
          f"budget {args.budget}, {args.seeds} seeds, shipped GP settings")  # fmt: skip
    rows: dict[str, Any] = {}
    for name in [s for s in args.only.split(",") if s]:
        for mode in ("penalty", "learned"):
            t0 = time.perf_counter()
            runs = [one_run(name, s, args.budget, limit, mode == "learned") for s in range(args.seeds)]
            row = {
                k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)), "per_seed": v}
                for k, v in ((k, [r[k] for r in runs]) for k in runs[0])
            }
            row["seconds"] = time.perf_counter() - t0
            rows[f"{name}/{mode}"] = row
            print(
                f"{name:8} {mode:8} infeasible after design {row['infeasible_after_design']['mean']:.1f} "
                f"+- {row['infeasible_after_design']['sd']:.1f}; share meeting the limit "
                f"{row['feasible_share']['mean']:.2f} +- {row['feasible_share']['sd']:.2f}; best score "
                f"{row['best_score']['mean']:.3f} +- {row['best_score']['sd']:.3f} ({row['seconds']:.0f} s)",
                flush=True,
            )
    doc = {"settings": {"seeds": args.seeds, "budget": args.budget, "limit": limit}, "rows": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
