"""A tabular benchmark for search strategies: answers ``evaluate(config, fidelity)`` by lookup.

The table (``benchmarks/make_tabular.py``, JSON lines: a header line, then one line per
architecture) holds TRADE students trained on glyphs with CE and with KD at several fidelity
levels, plus each student's params, FLOPs and predicted 2080 Ti latency, and the teacher's.
Every one of those runs uses training seed 0. ``replicate`` lines (``make_tabular.py
--replicate-top``) add, for the top architectures, full-data KD runs with other training seeds
(other initial weights and batch order).

How a lookup works (``TabularBenchmark.evaluate``):

* **Architecture.** Strategies search the TRADE space (same architecture parameters, same
  unit-cube encoding, so model-based strategies see the real structure). A proposal is
  canonicalised and mapped to the *nearest table architecture* in the unit-cube encoding:
  weighted Euclidean distance over the architecture coordinates, where each coordinate has
  weight ``1 / width`` of its parameter (a one-hot categorical then counts a change of choice as
  ``1``, the same as moving an ordinal parameter across its whole range). Ties go to the lowest
  table index. A proposal that is a table architecture maps to itself. The table trains every
  student with alpha 0.7 and tau 4, so the default space of a table is its student family
  alone, ``create_space(name, ...)``, without the KD hyper-parameters the compiler composes
  after it (``kd_compile.distill.hparams.kd_space``; a strategy that moved only those would
  propose new configs that all map to one row); a given space's ``kd_tau``/``kd_alpha`` (e.g. a
  ``ComposedSpace`` with ``kd_space()``) are ignored.
* **Fidelity.** A fidelity in (0, 1] maps to the recorded level nearest in ``log`` fidelity
  (``fraction * epoch / epochs``). Where two readouts share a fidelity (e.g. 1/3 of the data
  for 3 epochs and all of it for 1 epoch of a 3-epoch schedule) ``tie="final"`` (default) takes
  the one that ends its schedule (annealed, ``epoch == epochs``), ``tie="data"`` the one with
  the larger data fraction (a learning-curve readout). The *cost* of the evaluation is the
  fidelity of the level used.
* **Score** (minimise), ``score="search"`` (default): ``kd_compile.search.score.search_score``
  with ``s = cost_term(params, flops, latency)`` relative to the teacher's and accuracy relative
  to the teacher's val accuracy (``accuracy_weight`` 4): the objective the compiler's search
  optimises. ``score="error"``: ``1 - val_acc``.
* **Replicates.** The *full-fidelity value* of an architecture with replicates is the mean of
  its full-fidelity accuracies over its training seeds (seed 0 included); ``full_scores`` (and
  so the table's best and every regret) are scores of those means. A lookup still answers with
  the recorded seed-0 run (``accuracy``/``score``, what one training gives a search), and adds
  ``full_score``, the mean's. ``seed_accuracies`` gives the per-seed values and
  ``full_accuracy_se`` the standard error of their mean.
* **Regret** of a run after some trials: the full-fidelity score of the architecture the
  strategy recommends (``Strategy.recommend``) minus the best full-fidelity score in the table.
  By default that is ``best_trial``'s incumbent: the best trial at the highest fidelity evaluated
  so far (for single-fidelity runs: the best-found full-fidelity score); ``lf-gpr``
  (Trofimov et al.'s Algorithm 1) recommends its GP's argmax, which it may never have trained.
* **Objectives** for a multi-objective strategy: the lookup reports ``accuracy``,
  ``latency_ms`` and ``params``, the metrics of :data:`OBJECTIVES` (re-exported from
  ``kd_compile.testing.strategies``; pass it as the strategy's ``objectives`` option).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..search import Recommendation, Strategy
from ..search.score import cost_term, search_score
from ..search.space import Config, ParamSpace
from ..search.trial import Trial, TrialStatus, best_trial
from ..students import create_space
from .strategies import OBJECTIVES  # the lookup reports the same metrics as the toy evaluation

__all__ = [
    "OBJECTIVES",
    "Level",
    "TabularArch",
    "TabularBenchmark",
    "TabularRun",
    "load_table",
    "run_strategy",
]

# the KD hyper-parameters are fixed in a table (every student trains with alpha 0.7, tau 4)
IGNORED_PARAMS = ("kd_tau", "kd_alpha")


@dataclass(frozen=True)
class Level:
    """One recorded fidelity level: the val accuracy after ``epoch`` of an ``epochs``-long run
    on ``fraction`` of the training set; ``fidelity = fraction * epoch / epochs``."""

    fraction: float
    epoch: int
    fidelity: float
    final: bool


@dataclass
class TabularArch:
    """One table row: an architecture and its recorded accuracies.

    Attributes:
        index: row number in the table.
        config: canonical TRADE config.
        describe: compact architecture string.
        params, flops, latency_ms: counted params, FLOPs (2 x MACs, batch 1), predicted
            2080 Ti latency (batch 1).
        acc: ``{(loss, fraction, epoch): val_acc}`` with loss ``"ce"``/``"kd"`` (training seed 0).
        replicates: ``{seed: {(loss, fraction, epoch): val_acc}}`` of the replicate runs with
            training seeds other than 0 (empty for most rows).
    """

    index: int
    config: Config
    describe: str
    params: int
    flops: int
    latency_ms: float
    acc: dict[tuple[str, float, int], float] = field(default_factory=dict)
    replicates: dict[int, dict[tuple[str, float, int], float]] = field(default_factory=dict)


@dataclass
class Table:
    """The loaded table: header fields and rows."""

    settings: dict[str, Any]
    teacher: dict[str, Any]
    archs: list[TabularArch]
    meta: dict[str, Any] = field(default_factory=dict)


def _frac(v: Any) -> float:
    # fractions are stored as floats; rounding makes 1/9 from JSON and from arithmetic equal keys
    return round(float(v), 9)


def _row(rec: dict[str, Any]) -> TabularArch:
    acc = {
        (r["loss"], _frac(r["fraction"]), int(r["epoch"])): float(r["val_acc"]) for r in rec["runs"] if "val_acc" in r
    }
    return TabularArch(
        index=int(rec["index"]),
        config=dict(rec["config"]),
        describe=str(rec.get("describe", "")),
        params=int(rec["params"]),
        flops=int(rec["flops"]),
        latency_ms=float(rec["latency_ms"]),
        acc=acc,
    )


def _replicate(rec: dict[str, Any]) -> tuple[int, int, dict[tuple[str, float, int], float]]:
    """``(arch, seed, {(loss, fraction, epoch): val_acc})`` of a ``replicate`` line."""
    loss, frac = str(rec.get("loss", "kd")), _frac(rec.get("fraction", 1.0))
    accs = rec.get("val_acc_by_epoch") or []
    return int(rec["arch"]), int(rec["seed"]), {(loss, frac, e): float(a) for e, a in enumerate(accs, start=1)}


def load_table(path: str | Path) -> Table:
    """Read a table written by ``benchmarks/make_tabular.py`` (``.jsonl`` or ``.jsonl.gz``).

    Lines that do not parse (a run killed mid-write) are skipped. Failed runs (``error``)
    leave their (loss, fraction) readouts absent. ``replicate`` lines are attached to their
    architecture's ``replicates`` (a failed replicate, or one of an architecture not in the
    table, is skipped; seed 0 is the architecture line's own run and is never replaced).

    Raises:
        ValueError: no header line, or no architecture.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    header: dict[str, Any] | None = None
    archs: dict[int, TabularArch] = {}
    reps: list[tuple[int, int, dict[tuple[str, float, int], float]]] = []
    with opener(path, "rt") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == "header":
                header = rec
            elif rec.get("kind") == "arch":
                try:
                    row = _row(rec)
                except (KeyError, TypeError, ValueError):  # malformed line: skipped like a cut one
                    continue
                archs[row.index] = row
            elif rec.get("kind") == "replicate" and "error" not in rec:
                try:
                    reps.append(_replicate(rec))
                except (KeyError, TypeError, ValueError):
                    continue
    for i, seed, acc in reps:
        if i in archs and seed != 0 and acc:
            archs[i].replicates[seed] = acc
    if header is None:
        raise ValueError(f"{path}: no header line")
    if not archs:
        raise ValueError(f"{path}: no architectures")
    rows = [archs[i] for i in sorted(archs)]
    meta = {k: v for k, v in header.items() if k not in ("kind", "settings", "teacher")}
    return Table(settings=header["settings"], teacher=header["teacher"], archs=rows, meta=meta)


class TabularBenchmark:
    """Answers ``evaluate(config, fidelity)`` from a table (see module docstring).

    Args:
        table: a path to the table or a loaded ``Table``.
        loss: ``"kd"`` (the search's proxy) or ``"ce"``: which recorded accuracies answer.
        score: ``"search"`` (the compiler's smooth KD-guided score) or ``"error"`` (1 - acc).
        accuracy_weight: exponent of the accuracy ratio in the search score.
        space: the space strategies search; default: the TRADE space of the table's settings.
        tie: which of two levels of equal fidelity answers: ``"final"`` (the annealed readout)
            or ``"data"`` (the larger data fraction).
    """

    def __init__(
        self,
        table: str | Path | Table,
        loss: str = "kd",
        score: str = "search",
        accuracy_weight: float = 4.0,
        space: ParamSpace | None = None,
        tie: str = "final",
    ) -> None:
        if tie not in ("final", "data"):
            raise ValueError(f"tie must be 'final' or 'data', got {tie!r}")
        self.tie = tie
        self.table = table if isinstance(table, Table) else load_table(table)
        if loss not in ("kd", "ce"):
            raise ValueError(f"loss must be 'kd' or 'ce', got {loss!r}")
        if score not in ("search", "error"):
            raise ValueError(f"score must be 'search' or 'error', got {score!r}")
        self.loss, self.score_kind, self.accuracy_weight = loss, score, float(accuracy_weight)
        s = self.table.settings
        sp = s["space"]
        # the table trains every student with one KD alpha/tau, so strategies search the
        # architecture only: the student family, without the KD hyper-parameters
        kwargs = dict(sp.get("kwargs", {}))
        if sp["name"] == "trade":
            # tables built before the dense block types were added hold Fused-MBConv/MBConv
            # students only: search that space, with the encoding the table was built in
            kwargs.setdefault("block_types", ["fused", "mbconv"])
        self.space = space or create_space(
            sp["name"], input_shape=tuple(sp["input_shape"]), num_classes=int(sp["num_classes"]), **kwargs
        )
        self.epochs = int(s["epochs"])
        self.archs = self.table.archs
        self._weights = self._coordinate_weights()
        self._units = np.stack([self._encode(a.config) for a in self.archs])
        self._keys = {self.space.key(self._strip(a.config)): i for i, a in enumerate(self.archs)}
        self.levels = self._levels()
        self.full_level = max(self.levels, key=lambda lv: (lv.fidelity, lv.fraction))
        self.replicated = [i for i, a in enumerate(self.archs) if len(self.seed_accuracies(i)) > 1]
        self.full_scores = np.array([self._full_score(i) for i in range(len(self.archs))])
        finite = self.full_scores[np.isfinite(self.full_scores)]
        if finite.size == 0:
            raise ValueError("no architecture has a full-fidelity result")
        self.best_full_score = float(finite.min())

    # -- setup ----------------------------------------------------------------------------------
    def _coordinate_weights(self) -> np.ndarray:
        w: list[float] = []
        for p in self.space.params:
            v = 0.0 if p.name in IGNORED_PARAMS else 1.0 / p.width
            w.extend([v] * p.width)
        return np.asarray(w)

    def _strip(self, config: Config) -> Config:
        c = self.space.default()
        c.update({k: v for k, v in config.items() if k in c and k not in IGNORED_PARAMS})
        return self.space.canonical(c)

    def _encode(self, config: Config) -> np.ndarray:
        return self.space.to_unit(self._strip(config))

    def _levels(self) -> list[Level]:
        seen: set[tuple[float, int]] = set()
        for a in self.archs:
            seen.update((f, e) for (loss, f, e) in a.acc if loss == self.loss)
        if not seen:
            raise ValueError(f"the table has no '{self.loss}' results")
        out = [Level(f, e, f * e / self.epochs, e == self.epochs) for f, e in sorted(seen)]
        return sorted(out, key=lambda lv: (lv.fidelity, lv.fraction))

    # -- lookups --------------------------------------------------------------------------------
    def nearest(self, config: Config) -> int:
        """Index of the table architecture nearest to ``config`` (see module docstring)."""
        key = self.space.key(self._strip(config))
        if key in self._keys:
            return self._keys[key]
        d = ((self._units - self._encode(config)) ** 2 * self._weights).sum(axis=1)
        return int(np.argmin(d))

    def level(self, fidelity: float) -> Level:
        """The recorded level nearest to ``fidelity`` in log scale (ties: see ``tie``)."""
        if not 0.0 < fidelity <= 1.0 + 1e-9:
            raise ValueError(f"fidelity must be in (0, 1], got {fidelity}")
        lf = math.log(fidelity)
        return min(
            self.levels,
            key=lambda lv: (
                round(abs(math.log(lv.fidelity) - lf), 6),
                (not lv.final) if self.tie == "final" else -lv.fraction,
                -lv.fidelity,
            ),
        )

    def accuracy(self, index: int, level: Level, loss: str | None = None) -> float | None:
        """Recorded val accuracy of row ``index`` at ``level`` (None when that run failed)."""
        return self.archs[index].acc.get((loss or self.loss, _frac(level.fraction), level.epoch))

    def score_of(self, index: int, acc: float) -> float:
        """Score (minimise) of row ``index`` with accuracy ``acc``."""
        if self.score_kind == "error":
            return 1.0 - acc
        a, t = self.archs[index], self.table.teacher
        s = cost_term(a.params, a.flops, a.latency_ms, t["params"], t["flops"], t["latency_ms"])
        return search_score(acc, float(t["val_acc"]), s, self.accuracy_weight)

    def score_at(self, index: int, level: Level) -> float:
        acc = self.accuracy(index, level)
        return math.inf if acc is None else self.score_of(index, acc)

    def seed_accuracies(self, index: int, level: Level | None = None) -> dict[int, float]:
        """``{training seed: val accuracy}`` of row ``index`` at ``level`` (default: the full
        fidelity): seed 0 (the row's own run) and every replicate that recorded it."""
        lv = level or self.full_level
        key = (self.loss, _frac(lv.fraction), lv.epoch)
        a = self.archs[index]
        out = {0: a.acc[key]} if key in a.acc else {}
        out.update({s: r[key] for s, r in sorted(a.replicates.items()) if key in r})
        return out

    def full_accuracy(self, index: int) -> float | None:
        """The full-fidelity value of row ``index``: the mean accuracy over its seeds (None when
        no run of it recorded the full fidelity)."""
        v = list(self.seed_accuracies(index).values())
        return float(np.mean(v)) if v else None

    def full_accuracy_se(self, index: int) -> float:
        """Standard error of ``full_accuracy`` (sample std / sqrt(seeds)); ``nan`` with one seed."""
        v = np.asarray(list(self.seed_accuracies(index).values()), dtype=float)
        return float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else math.nan

    def _full_score(self, index: int) -> float:
        acc = self.full_accuracy(index)
        return math.inf if acc is None else self.score_of(index, acc)

    def evaluate(self, config: Config, fidelity: float = 1.0) -> dict[str, Any]:
        """Metrics of the table architecture nearest to ``config`` at the level nearest to
        ``fidelity``: arch, accuracy, params, flops, latency_ms, fidelity (of the level used,
        = its cost), fraction, epoch, score (inf when the recorded run failed; both of the
        seed-0 run), full_score (of the mean over seeds, the value regret uses)."""
        i = self.nearest(config)
        lv = self.level(fidelity)
        acc = self.accuracy(i, lv)
        a = self.archs[i]
        return {
            "arch": i,
            "describe": a.describe,
            "accuracy": acc,
            "params": a.params,
            "flops": a.flops,
            "latency_ms": a.latency_ms,
            "fidelity": lv.fidelity,
            "fraction": lv.fraction,
            "epoch": lv.epoch,
            "score": math.inf if acc is None else self.score_of(i, acc),
            "full_score": float(self.full_scores[i]),
        }

    # -- regret ---------------------------------------------------------------------------------
    def regret(self, trials: Sequence[Trial]) -> float:
        """Full-fidelity score of the incumbent's architecture minus the table's best.

        The incumbent is ``best_trial(trials)``: the best ok trial at the highest fidelity; its
        architecture is ``trial.metrics["arch"]`` when present, else the nearest one.
        Returns ``inf`` when no trial is ok.
        """
        inc = best_trial(trials)
        if inc is None:
            return math.inf
        return self.regret_of(Recommendation(inc.config, inc, "best trial"))

    def regret_of(self, rec: Recommendation | None) -> float:
        """Regret of a strategy's recommendation (``Strategy.recommend``): the full-fidelity
        score of the architecture it names minus the table's best (its trial's recorded
        architecture when it has one, else the nearest to its config); ``inf`` for None."""
        if rec is None:
            return math.inf
        t = rec.trial
        i = int(t.metrics["arch"]) if t is not None and "arch" in t.metrics else self.nearest(rec.config)
        return float(self.full_scores[i]) - self.best_full_score


@dataclass
class TabularRun:
    """One strategy run on the table.

    Attributes:
        trials: every trial, in order.
        costs: cumulative training cost after each trial (sum of the levels' fidelities).
        regrets: regret (``TabularBenchmark.regret``) after each trial.
    """

    trials: list[Trial]
    costs: list[float]
    regrets: list[float]

    def regret_at_cost(self, cost: float) -> float:
        """Regret after the last trial whose cumulative cost is <= ``cost`` (+1e-9)."""
        r = math.inf
        for c, g in zip(self.costs, self.regrets, strict=True):
            if c > cost + 1e-9:
                break
            r = g
        return r


def run_strategy(
    bench: TabularBenchmark,
    strategy: Strategy,
    max_cost: float,
    max_evals: int | None = None,
    charge_repeats: bool = False,
    free_repeats: int | None = None,
) -> TabularRun:
    """Run ``strategy`` (ask 1 / tell 1) on the table until ``max_cost`` is spent.

    The strategy is told its own proposed config (canonical) with the score of the table
    architecture it maps to, so a model-based strategy learns from the points it chose;
    ``metrics["arch"]`` records the mapping. A recorded failed run is told as ``failed``.

    A repeat (a proposal mapping to a table architecture and level already evaluated in this
    run) costs nothing by default, up to ``free_repeats`` of them (default ``ceil(max_cost)``):
    the table is the search space, and the compiler serves a repeated candidate from its cache
    without training it again; past that allowance a repeat is charged like a new training,
    which bounds a strategy stuck on one architecture. ``metrics["repeat"]`` marks repeats.

    Args:
        bench: the benchmark.
        strategy: a fresh strategy over ``bench.space``.
        max_cost: training budget in full-fidelity evaluations (an evaluation at fidelity f
            costs f); the run stops once the cumulative cost reaches it.
        max_evals: a cap on the number of evaluations (default ``ceil(20 * max_cost)``).
        charge_repeats: charge every repeat its fidelity like a new training (no free repeats).
        free_repeats: how many repeats are free (default ``ceil(max_cost)``).
    """
    cap = max_evals if max_evals is not None else math.ceil(20 * max_cost)
    trials: list[Trial] = []
    costs: list[float] = []
    regrets: list[float] = []
    cost = 0.0
    seen: set[tuple[int, float]] = set()
    if charge_repeats:
        allowance = 0
    else:
        allowance = math.ceil(max_cost) if free_repeats is None else int(free_repeats)
    repeats = 0
    # regret is the regret of ``strategy.recommend()``; a strategy whose recommendation fits a
    # model (``costly_recommend``) is asked only where ``regret_at_cost`` reads it at an integer
    # cost: after the last trial at or below each integer (found when the next trial's cost is
    # known, before it is told), and after the last trial; other entries repeat the last value
    every = not getattr(strategy, "costly_recommend", False)
    while cost < max_cost - 1e-9 and len(trials) < cap:
        sug = strategy.ask(1)[0]
        config = bench.space.canonical(sug.config)
        m = bench.evaluate(config, sug.fidelity)
        key = (int(m["arch"]), float(m["fidelity"]))
        m["repeat"] = key in seen
        seen.add(key)
        ok = math.isfinite(m["score"])
        t = Trial(
            number=len(trials),
            config=config,
            status=TrialStatus.OK if ok else TrialStatus.FAILED,
            score=float(m["score"]) if ok else None,
            fidelity=float(sug.fidelity),
            metrics=m,
            error=None if ok else "recorded run failed",
        )
        if m["repeat"]:
            repeats += 1
        new_cost = cost + (m["fidelity"] if not m["repeat"] or repeats > allowance else 0.0)
        if not every and trials and math.floor(new_cost - 1e-9) >= math.ceil(cost - 1e-9):
            regrets[-1] = bench.regret_of(strategy.recommend())  # an integer in [cost, new_cost)
        strategy.tell([t])
        trials.append(t)
        cost = new_cost
        costs.append(cost)
        regrets.append(bench.regret_of(strategy.recommend()) if every else (regrets[-1] if regrets else math.inf))
    if not every and trials:
        regrets[-1] = bench.regret_of(strategy.recommend())
    return TabularRun(trials, costs, regrets)
