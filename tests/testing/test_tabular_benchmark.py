"""Tabular benchmark: loading, nearest-architecture and fidelity lookup, scores, regret, runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kd_compile.distill.hparams import kd_space
from kd_compile.search import ComposedSpace, Strategy, Suggestion, Trial, TrialStatus, create_strategy
from kd_compile.search.score import cost_term, search_score
from kd_compile.students import create_space
from kd_compile.testing.tabular import OBJECTIVES, TabularBenchmark, load_table, run_strategy

SHAPE = (1, 16, 16)
TEACHER = {"params": 100_000, "flops": 10_000_000, "latency_ms": 0.02, "val_acc": 0.5}
FRACTIONS = (1 / 9, 1 / 3, 1.0)


def _space():
    # the committed table (and this synthetic one, whose header names no block types) holds
    # Fused-MBConv/MBConv students: the harness searches that space
    return create_space("trade", input_shape=SHAPE, num_classes=62, block_types=("fused", "mbconv"))


def _configs(n: int) -> list[dict]:
    """Architectures with the table's fixed KD settings, as ``make_tabular`` records them."""
    space, rng, out, keys = _space(), np.random.default_rng(0), [], set()
    while len(out) < n:
        c = space.sample(rng)
        if space.key(c) not in keys:
            keys.add(space.key(c))
            out.append({**c, "kd_tau": 4.0, "kd_alpha": 0.7})
    return out


def _acc(i: int, loss: str, frac: float, epoch: int) -> float:
    # arch i is better for larger i at full fidelity; CE proxies are reversed at low fidelity
    base = 0.1 + 0.05 * i
    if loss == "ce" and frac < 1:
        base = 0.4 - 0.05 * i
    return round(base * (0.5 + 0.5 * frac * epoch / 3), 5)


def write_table(path: Path, n: int = 6, broken_line: bool = True) -> list[dict]:
    """A synthetic table in the generator's format; returns the configs."""
    configs = _configs(n)
    header = {
        "kind": "header",
        "settings": {
            "epochs": 3,
            "fractions": ["1/9", "1/3", "1"],
            "ce_fractions": ["1/9", "1/3"],
            "data": "synthetic",
            "space": {"name": "trade", "input_shape": list(SHAPE), "num_classes": 62},
        },
        "teacher": TEACHER,
    }
    lines = [json.dumps(header)]
    for i, c in enumerate(configs):
        runs = []
        for loss, fracs in (("ce", FRACTIONS[:2]), ("kd", FRACTIONS)):
            for f in fracs:
                for e in (1, 2, 3):
                    runs.append(
                        {
                            "loss": loss,
                            "fraction": f,
                            "epoch": e,
                            "fidelity": f * e / 3,
                            "val_acc": _acc(i, loss, f, e),
                        }
                    )
        lines.append(
            json.dumps(
                {
                    "kind": "arch",
                    "index": i,
                    "config": c,
                    "describe": f"a{i}",
                    "params": 10_000 * (i + 1),
                    "flops": 1_000_000,
                    "latency_ms": 0.01,
                    "runs": runs,
                }
            )
        )
    if broken_line:
        lines.append('{"kind": "arch", "index": 99, "conf')  # a write cut by a kill
    path.write_text("\n".join(lines) + "\n")
    return configs


@pytest.fixture()
def table_path(tmp_path: Path) -> Path:
    p = tmp_path / "t.jsonl"
    write_table(p)
    return p


def test_load_table_skips_cut_line_and_reads_runs(table_path: Path) -> None:
    t = load_table(table_path)
    assert [a.index for a in t.archs] == list(range(6))
    assert t.teacher["val_acc"] == 0.5
    assert t.archs[2].acc[("kd", 1.0, 3)] == _acc(2, "kd", 1.0, 3)
    assert ("ce", 1.0, 3) not in t.archs[2].acc


def test_load_table_without_header_raises(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"kind": "arch"}\n')
    with pytest.raises(ValueError, match="header"):
        load_table(p)


def test_nearest_maps_table_configs_to_themselves_and_ignores_kd_params(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)
    for i, a in enumerate(bench.archs):
        assert bench.nearest(a.config) == i
        assert bench.nearest({**a.config, "kd_tau": 1.0, "kd_alpha": 0.95}) == i


def test_trade_table_is_searched_without_kd_params(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)
    names = bench.space.param_names
    assert "kd_tau" not in names and "kd_alpha" not in names and "s1_kernel" in names
    # the plain family: create_space("trade", ...) is the architecture-only space
    assert names == _space().param_names
    # a table architecture, stripped of its KD settings, is still itself
    arch = {k: v for k, v in bench.archs[2].config.items() if k not in ("kd_tau", "kd_alpha")}
    assert bench.nearest(arch) == 2
    assert bench.space.key(bench.space.canonical(bench.archs[2].config)) == bench.space.key(arch)


def test_nearest_maps_a_small_change_to_its_source(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)
    space = bench.space
    c = dict(bench.archs[3].config)
    # flip the kernel of stage 1 (always active): a distance of 1 weighted coordinate
    c["s1_kernel"] = 5 if c["s1_kernel"] == 3 else 3
    c = space.canonical(c)
    assert space.key(c) != space.key(bench.archs[3].config)
    d = [float(((bench._units[j] - bench._encode(c)) ** 2 * bench._weights).sum()) for j in range(6)]
    assert bench.nearest(c) == int(np.argmin(d)) == 3


def test_fidelity_levels_and_ties(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)
    assert bench.full_level.fraction == 1.0 and bench.full_level.epoch == 3
    assert bench.level(1.0) == bench.full_level
    lv = bench.level(1 / 9)  # (1/9, epoch 3) and (1/3, epoch 1) both have fidelity 1/9
    assert (round(lv.fraction, 6), lv.epoch) == (round(1 / 9, 6), 3)
    lv = bench.level(1 / 3)  # (1/3, 3) annealed beats (1, 1)
    assert (round(lv.fraction, 6), lv.epoch) == (round(1 / 3, 6), 3)
    assert math.isclose(bench.level(0.03).fidelity, 1 / 27)
    by_data = TabularBenchmark(table_path, tie="data").level(1 / 3)
    assert (by_data.fraction, by_data.epoch) == (1.0, 1)
    assert math.isclose(bench.level(0.6).fidelity, 2 / 3)
    with pytest.raises(ValueError):
        bench.level(0.0)


def test_evaluate_returns_the_search_score_of_the_recorded_accuracy(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)
    a = bench.archs[4]
    m = bench.evaluate(a.config, 1 / 3)
    acc = _acc(4, "kd", 1 / 3, 3)
    s = cost_term(a.params, a.flops, a.latency_ms, TEACHER["params"], TEACHER["flops"], TEACHER["latency_ms"])
    assert m["arch"] == 4 and m["accuracy"] == acc
    assert math.isclose(m["score"], search_score(acc, 0.5, s))
    assert math.isclose(m["fidelity"], 1 / 9 * 3)
    err = TabularBenchmark(table_path, score="error")
    assert math.isclose(err.evaluate(a.config, 1.0)["score"], 1 - _acc(4, "kd", 1.0, 3))
    ce = TabularBenchmark(table_path, loss="ce")
    assert ce.evaluate(a.config, 1 / 9)["accuracy"] == _acc(4, "ce", 1 / 9, 3)


def test_regret_uses_the_incumbent_at_the_highest_fidelity(table_path: Path) -> None:
    bench = TabularBenchmark(table_path, score="error")
    best = int(np.argmin(bench.full_scores))
    assert best == 5  # accuracy grows with the index in the synthetic table
    assert bench.best_full_score == pytest.approx(1 - _acc(5, "kd", 1.0, 3))

    def trial(i: int, fid: float, n: int) -> Trial:
        m = bench.evaluate(bench.archs[i].config, fid)
        return Trial(
            number=n,
            config=bench.archs[i].config,
            status=TrialStatus.OK,
            score=m["score"],
            fidelity=fid,
            metrics=m,
        )

    assert bench.regret([]) == math.inf
    assert bench.regret([trial(5, 1.0, 0)]) == 0.0
    # at low fidelity arch 5 looks best; a full-fidelity trial of arch 1 is the incumbent anyway
    ts = [trial(5, 1 / 9, 0), trial(1, 1.0, 1)]
    assert bench.regret(ts) == pytest.approx(bench.full_scores[1] - bench.full_scores[5])
    assert bench.regret(ts[:1]) == 0.0


def test_run_strategy_is_deterministic_and_spends_the_budget(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)

    def go(seed: int):
        return run_strategy(bench, create_strategy("random", bench.space, seed=seed, budget=5), max_cost=5)

    a, b = go(3), go(3)
    assert [t.metrics["arch"] for t in a.trials] == [t.metrics["arch"] for t in b.trials]
    assert a.regrets == b.regrets
    assert a.costs[-1] == pytest.approx(5.0)
    assert a.costs == pytest.approx(np.cumsum(_charged(a.trials, allowance=5)).tolist())
    fresh = [t for t in a.trials if not t.metrics["repeat"]]
    assert len({(t.metrics["arch"], t.metrics["fidelity"]) for t in fresh}) == len(fresh)
    assert all(r >= 0 for r in a.regrets)
    assert list(a.regrets) == sorted(a.regrets, reverse=True)  # single fidelity: never worse
    assert a.regret_at_cost(2.0) == a.regrets[max(i for i, c in enumerate(a.costs) if c <= 2 + 1e-9)]
    assert a.regret_at_cost(0.5) == math.inf


def test_a_costly_recommendation_is_read_only_where_regret_at_cost_needs_it(table_path: Path) -> None:
    """lf-gpr recommends a GP's argmax (``costly_recommend``): ``run_strategy`` asks for it only
    after the last trial at or below each integer cost, and the regret there is the regret of
    the recommendation, the same as asking after every trial would give."""
    from kd_compile.search.multifidelity import LowFidelityGPR

    class EveryTrial(LowFidelityGPR):
        costly_recommend = False

    bench = TabularBenchmark(table_path)
    opts = dict(seed=1, budget=3, gp_maxiter=8, n_candidates=64)
    lazy = run_strategy(bench, LowFidelityGPR(bench.space, **opts), max_cost=3)
    full = run_strategy(bench, EveryTrial(bench.space, **opts), max_cost=3)
    assert [t.config for t in lazy.trials] == [t.config for t in full.trials]
    assert all(t.fidelity < 1 for t in lazy.trials)  # Algorithm 1: low fidelity only
    for c in (1.0, 2.0, 3.0):
        assert lazy.regret_at_cost(c) == full.regret_at_cost(c)
    # the regret is the recommendation's (the GP argmax), not the best low-fidelity trial's
    strat = EveryTrial(bench.space, **opts)
    for t in full.trials:
        strat.tell([t])
    assert full.regrets[-1] == bench.regret_of(strat.recommend())


def test_run_strategy_charges_the_fidelity_of_each_evaluation(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)
    strat = create_strategy("bohb", bench.space, seed=0, budget=10)
    run = run_strategy(bench, strat, max_cost=3)
    assert run.costs[-1] >= 3 - 1e-9
    assert len(run.trials) > 3  # bohb starts at low fidelity: more evaluations than cost
    assert run.costs == pytest.approx(np.cumsum(_charged(run.trials, allowance=3)).tolist())


def _charged(trials, allowance: int) -> list[float]:
    """What each trial should cost: its fidelity, except the first ``allowance`` repeats."""
    out, repeats = [], 0
    for t in trials:
        repeats += bool(t.metrics["repeat"])
        free = t.metrics["repeat"] and repeats <= allowance
        out.append(0.0 if free else t.metrics["fidelity"])
    return out


class _Stubborn(Strategy):
    """Proposes the space's default config every time: every evaluation after the first is a
    repeat."""

    name = "stubborn"

    def ask(self, n: int = 1) -> list[Suggestion]:
        return [Suggestion(self.space.default()) for _ in range(n)]

    def tell(self, trials) -> None:
        pass


def test_run_strategy_serves_repeats_free_unless_asked(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)
    run = run_strategy(bench, _Stubborn(bench.space, seed=0, budget=3), max_cost=3, free_repeats=4)
    # 1 new + 4 free repeats, then repeats are charged: 2 more to spend the budget
    assert run.costs == pytest.approx([1.0] * 5 + [2.0, 3.0])
    assert [t.metrics["repeat"] for t in run.trials] == [False] + [True] * 6
    capped = run_strategy(bench, _Stubborn(bench.space, seed=0, budget=3), max_cost=3, free_repeats=100, max_evals=9)
    assert len(capped.trials) == 9 and capped.costs[-1] == pytest.approx(1.0)
    charged = run_strategy(bench, _Stubborn(bench.space, seed=0, budget=3), max_cost=3, charge_repeats=True)
    assert len(charged.trials) == 3 and charged.costs == pytest.approx([1.0, 2.0, 3.0])


def test_a_space_with_the_kd_params_has_them_ignored(table_path: Path) -> None:
    """The space the compiler searches (family + KD hyper-parameters) maps to the same rows."""
    composed = ComposedSpace([_space(), kd_space()])
    bench = TabularBenchmark(table_path, space=composed)
    assert bench.space.param_names[-2:] == ["kd_tau", "kd_alpha"]
    for i, a in enumerate(bench.archs):
        assert bench.nearest(a.config) == i
        assert bench.nearest({**a.config, "kd_tau": 1.5, "kd_alpha": 0.2}) == i


def test_regret_incumbent_is_best_trial(table_path: Path) -> None:
    from kd_compile.search import best_trial

    bench = TabularBenchmark(table_path, score="error")
    run = run_strategy(bench, create_strategy("bohb", bench.space, seed=1, budget=4), max_cost=2)
    inc = best_trial(run.trials)
    assert run.regrets[-1] == pytest.approx(bench.full_scores[inc.metrics["arch"]] - bench.best_full_score)


def test_mobo_runs_on_the_table_with_its_objectives(table_path: Path) -> None:
    bench = TabularBenchmark(table_path)
    fast = {"n_init": 3, "gp_maxiter": 5, "n_candidates": 64, "mc_samples": 4}
    strat = create_strategy("mobo", bench.space, seed=0, budget=5, objectives=OBJECTIVES, **fast)
    run = run_strategy(bench, strat, max_cost=5)
    assert run.costs[-1] >= 5 - 1e-9
    assert {o.name for o in OBJECTIVES} <= set(run.trials[0].metrics)
    assert strat.pareto_front() and all(t.ok for t in strat.pareto_front())


def _add_replicates(path: Path, reps: dict[tuple[int, int], float]) -> None:
    """Append ``replicate`` lines ({(arch, seed): full-fidelity acc}) as ``make_tabular`` writes them."""
    with path.open("a") as fh:
        for (i, seed), acc in reps.items():
            rec = {"kind": "replicate", "arch": i, "seed": seed, "loss": "kd", "fraction": 1.0,
                   "val_acc_by_epoch": [acc / 2, acc * 0.9, acc], "val_acc": acc, "seconds": 1.0}  # fmt: skip
            fh.write(json.dumps(rec) + "\n")
        fh.write(json.dumps({"kind": "replicate", "arch": 5, "seed": 9, "error": "RuntimeError: boom"}) + "\n")
        fh.write(json.dumps({"kind": "replicate", "arch": 42, "seed": 1, "val_acc_by_epoch": [0.9]}) + "\n")


def test_full_fidelity_values_are_means_over_replicate_seeds(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    write_table(p, broken_line=False)
    a5, a4 = _acc(5, "kd", 1.0, 3), _acc(4, "kd", 1.0, 3)  # 0.35 > 0.30 at seed 0
    # arch 5's seed-0 run was lucky: its other seeds are worse than arch 4's
    _add_replicates(p, {(5, 1): 0.25, (5, 2): 0.26, (4, 1): 0.31, (4, 2): 0.29})
    bench = TabularBenchmark(p, score="error")
    assert bench.replicated == [4, 5]  # a failed replicate and one of an unknown arch are skipped
    assert bench.seed_accuracies(5) == {0: a5, 1: 0.25, 2: 0.26}
    assert bench.seed_accuracies(0) == {0: _acc(0, "kd", 1.0, 3)}
    assert bench.full_accuracy(5) == pytest.approx((a5 + 0.25 + 0.26) / 3)
    assert bench.full_accuracy_se(4) == pytest.approx(np.std([a4, 0.31, 0.29], ddof=1) / math.sqrt(3))
    assert math.isnan(bench.full_accuracy_se(0))
    # the table's best is arch 4 on means; regrets are computed on means
    assert int(np.argmin(bench.full_scores)) == 4
    assert bench.best_full_score == pytest.approx(1 - (a4 + 0.31 + 0.29) / 3)
    # a lookup answers with the seed-0 run (one training), and carries the mean's full score
    m = bench.evaluate(bench.archs[5].config, 1.0)
    assert m["accuracy"] == a5 and m["score"] == pytest.approx(1 - a5)
    assert m["full_score"] == pytest.approx(bench.full_scores[5])
    t = Trial(number=0, config=bench.archs[5].config, status=TrialStatus.OK, score=m["score"], fidelity=1.0, metrics=m)
    assert bench.regret([t]) == pytest.approx(bench.full_scores[5] - bench.full_scores[4]) and bench.regret([t]) > 0
    # lower levels keep the seed-0 readouts; the replicates' epoch readouts exist at fraction 1 only
    lv = bench.level(1 / 3)
    assert bench.seed_accuracies(5, lv) == {0: _acc(5, "kd", 1 / 3, 3)}
