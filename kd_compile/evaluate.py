"""One candidate, evaluated: config -> build -> counts and latency -> constraints -> proxy KD
training -> score -> ``Trial``.

``evaluate_candidate(run, config, fidelity, number)`` is a top-level function over plain,
picklable data (``RunContext``: the space's name and arguments, the target profile, constraints,
the proxy-training settings, the teacher's reference costs and its cached knowledge), so the
inline executor, a process pool or a Ray task all call the same function.

Failure policy: a candidate that fails for any reason (a NaN loss, an export or profiler error,
out of memory, a bug in a plugin) comes back as a ``failed`` trial with its reason; the search
goes on. Nothing raised inside a candidate stops the run, except an interrupt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import Budget, Constraints
from .latency import LatencyPlan
from .profilers import InputSpec, Measurement
from .search.gp import CONSTRAINT_METRIC
from .search.mobo import Objective
from .search.score import ACCURACY_WEIGHT, cost_term, search_score, trade_score
from .search.space import ComposedSpace, Config, ParamSpace
from .search.trial import Trial, TrialStatus
from .targets import TargetProfile

__all__ = [
    "CANDIDATE_CHECKPOINTS",
    "OBJECTIVES",
    "Reference",
    "RunContext",
    "candidate_checkpoint",
    "checkpoint_folder",
    "clear_candidate_checkpoints",
    "costs",
    "drop_candidate_checkpoint",
    "evaluate_candidate",
    "latency_on_target",
    "searched_space",
    "share_candidate_checkpoints",
]

# The metrics a candidate's trial carries that multi-objective strategies optimise (and the
# report's Pareto front shows): accuracy up, latency and params down.
OBJECTIVES = (
    Objective("accuracy", maximise=True, needs_training=True),
    Objective("latency_ms", maximise=False, log_floor=1e-9),
    Objective("params", maximise=False, log_floor=1.0),
)


@dataclass(frozen=True)
class Reference:
    """The teacher's figures every candidate is scored against.

    Attributes:
        params, flops: the teacher's counts.
        latency_ms: the teacher's latency on the target (same method as the candidates').
        accuracy: the teacher's validation accuracy, in [0, 1].
        acc_target: the accuracy the search score and TRADE's bracket aim at (``--target-acc``,
            else the teacher's).
    """

    params: float
    flops: float
    latency_ms: float
    accuracy: float
    acc_target: float


@dataclass(frozen=True)
class RunContext:
    """What every candidate of one run shares, as plain data.

    Attributes:
        space: the student family's registered name; ``space_kwargs`` rebuild it.
        target: the target device profile.
        constraints: the hard limits.
        budget: proxy-training settings (epochs, data fraction, sparsity, patience, lr).
        seed, device, batch_size: training settings of the run.
        augment_views: seeded augmented views appended to the training set (an epoch over the
            original images is ``1 + augment_views`` passes over the bundle).
        reference: the teacher's figures.
        latency: how latencies on the target are obtained (measured or predicted).
        data: the ``DataBundle`` the students train on.
        knowledge: the teacher's cached outputs (``TeacherCache``) for KD.
        checkpoints: a folder where each candidate's proxy training keeps its state at each
            epoch's end (``candidate_checkpoint``), so a run killed mid-candidate resumes that
            training where it stopped; None: nowhere.
        checkpoints_token: for candidates evaluated on other machines (Ray tasks): the folder
            is used only where it holds this token (``share_candidate_checkpoints``), that is
            where the task's machine sees the driver's folder (the same machine, or storage
            they share); elsewhere the candidate keeps none (``checkpoints_unseen`` in its trial).
    """

    space: str
    space_kwargs: dict[str, Any]
    target: TargetProfile
    constraints: Constraints
    budget: Budget
    seed: int
    device: str
    batch_size: int
    augment_views: int
    reference: Reference
    latency: LatencyPlan
    data: Any = field(repr=False)
    knowledge: Any = field(repr=False)
    checkpoints: str | None = None
    checkpoints_token: str | None = None


@functools.lru_cache(maxsize=8)
def _family(name: str, kwargs_items: tuple[tuple[str, Any], ...]) -> Any:
    from .students import create_space

    kw = dict(kwargs_items)
    kw["input_shape"] = tuple(kw["input_shape"])
    return create_space(name, **kw)


def student_family(run: RunContext) -> Any:
    """The run's student family (a ``StudentSpace``), built once per process."""
    return _family(run.space, tuple(sorted((k, _hashable(v)) for k, v in run.space_kwargs.items())))


def searched_space(family: ParamSpace) -> ParamSpace:
    """The space the strategy searches: the family, then the KD hyper-parameters."""
    from .distill.hparams import kd_space

    return ComposedSpace([family, kd_space()])


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


# ----------------------------------------------------------------------------------------------
# counts and latency


def latency_on_target(
    model: nn.Module,
    spec: InputSpec,
    target: TargetProfile,
    *,
    fast: bool = False,
    trace: Any = None,
    plan: LatencyPlan | None = None,
) -> Measurement:
    """Latency of ``model`` on ``target``: measured when the target is this machine, predicted
    with the calibrated predictor otherwise (``kd_compile.latency``; ``plan`` fixes the method)."""
    from .latency import default_cache, measure_or_predict, plan_latency

    plan = plan or plan_latency(target, "auto")
    return measure_or_predict(model, spec, plan, fast=fast, trace=trace, cache=default_cache())


def costs(
    model: nn.Module, spec: InputSpec, target: TargetProfile, *, fast: bool = False, plan: LatencyPlan | None = None
) -> tuple[Measurement, Measurement]:
    """(counts, latency on target) from one traced forward pass."""
    from .profilers.counting import count, trace_ops

    tr = trace_ops(model, tuple(spec.shape))
    return count(model, spec, trace=tr), latency_on_target(model, spec, target, fast=fast, trace=tr, plan=plan)


def checked_costs(
    run: RunContext, model: nn.Module, *, latency: bool = True, disposable: bool = False
) -> tuple[Any, Any, list[str]]:
    """(counts, latency on the target or None, constraint violations) of a candidate as it ships
    (re-parameterisable blocks folded: a RepVGG block is one conv; ``model`` itself, the one
    trained, is not changed unless ``disposable``: built only to be checked, it is folded in
    place). ``latency=False`` leaves the latency out (None) and so its limit unchecked. The one
    check behind both the evaluator and the proposal screen."""
    from .profilers.counting import count, trace_ops
    from .students.common import deployed

    family = student_family(run)
    shipped = deployed(model, inplace=disposable)
    spec = InputSpec(tuple(family.input_shape))
    tr = trace_ops(shipped, tuple(spec.shape))
    cnt = count(shipped, spec, trace=tr)
    lat = latency_on_target(shipped, spec, run.target, fast=True, trace=tr, plan=run.latency) if latency else None
    viol = run.constraints.violations(
        int(cnt.params),
        int(cnt.flops),
        None if lat is None else float(lat.latency_ms),
        cnt.peak_activation_bytes,
        teacher_latency_ms=run.reference.latency_ms,
    )
    return cnt, lat, viol


def proposal_screen(run: RunContext) -> Callable[[Config], bool] | None:
    """The strategy's ``screen=``: whether a proposal passes the run's constraints that are known
    without training or measuring -- FLOPs and activation memory always, latency when it is
    predicted (``run.latency.method == "predict"``) -- by :func:`checked_costs`, the evaluator's
    own check. A latency that is measured stays for the evaluator to find (seconds a candidate).
    None when there is nothing to screen."""
    c = run.constraints
    predicted = run.latency.method == "predict" and c.max_latency is not None
    if not (predicted or c.max_flops is not None or c.max_memory_bytes is not None):
        return None
    family = student_family(run)

    def screen(config: Config) -> bool:
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: keep the caller's RNG
            model = family.build(config)
        return not checked_costs(run, model, latency=predicted, disposable=True)[2]

    return screen


# ----------------------------------------------------------------------------------------------
# training settings


def train_config(run: RunContext, config: Config, epochs: float, fraction: float, **extra: Any) -> Any:
    """How every training of a run is set up: the config's KD alpha/tau, the run's seed, device,
    batch and lr; ``epochs`` count passes over the original images."""
    from .distill import TrainConfig
    from .distill.hparams import kd_hparams

    kd = kd_hparams(config)
    return TrainConfig(
        epochs=epochs / (1 + run.augment_views),
        data_fraction=fraction,
        alpha=kd["alpha"],
        tau=kd["tau"],
        seed=run.seed,
        device=run.device,
        batch_size=run.batch_size,
        lr=run.budget.lr,
        **extra,
    )


# ----------------------------------------------------------------------------------------------
# candidates' epoch checkpoints

#: the folder in ``--out`` where candidates' proxy trainings keep their epoch checkpoints
CANDIDATE_CHECKPOINTS = "candidate-checkpoints"


def candidate_checkpoint(folder: str | Path, number: int, config: Config, fidelity: float) -> str:
    """Where candidate ``number`` (``config`` at ``fidelity``) keeps its proxy training's state in
    ``folder``, until the journal records its trial (then ``drop_candidate_checkpoint``). The name
    carries the config and fidelity, so a resumed run whose strategy gives the number to another
    candidate never resumes the wrong training."""
    body = json.dumps([sorted(config.items()), float(fidelity)], default=str)
    return str(Path(folder) / f"candidate-{int(number)}-{hashlib.sha256(body.encode()).hexdigest()[:12]}.ckpt")


#: the file in the candidates' checkpoint folder that tells a Ray task it sees the driver's folder
SHARED_TOKEN = "driver-token"


def share_candidate_checkpoints(folder: str | Path) -> str:
    """Write a fresh random token into ``folder`` (made if missing) and return it: a task that
    reads the same token from the same path sees the driver's folder, not a namesake on its own
    machine (``RunContext.checkpoints_token``). Raises ``OSError`` if it cannot be written."""
    token = secrets.token_hex(16)
    path = Path(folder) / SHARED_TOKEN
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SHARED_TOKEN}.tmp")
    tmp.write_text(token)
    os.replace(tmp, path)
    return token


def checkpoint_folder(run: RunContext) -> str | None:
    """The folder this process keeps candidates' epoch checkpoints in: ``run.checkpoints``, unless
    the run carries a token this machine does not read there (a task that does not see ``--out``)."""
    if run.checkpoints is None or run.checkpoints_token is None:
        return run.checkpoints
    try:
        seen = (Path(run.checkpoints) / SHARED_TOKEN).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return run.checkpoints if seen == run.checkpoints_token else None


def drop_candidate_checkpoint(folder: str | Path | None, trial: Trial) -> None:
    """Remove a journaled trial's epoch checkpoint (and a temporary file a killed write left)."""
    from .distill.checkpoint import remove_saved

    if folder is not None:
        remove_saved(Path(candidate_checkpoint(folder, trial.number, trial.config, trial.fidelity)))


def clear_candidate_checkpoints(out: Path) -> None:
    """Remove every candidate's epoch checkpoint from ``out`` (the search is over, or a fresh run
    replaces the old one's)."""
    shutil.rmtree(out / CANDIDATE_CHECKPOINTS, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# one candidate


def evaluate_candidate(
    run: RunContext,
    config: Config,
    fidelity: float,
    number: int,
    progress: Callable[[float], None] | None = None,
) -> Trial:
    """Evaluate one candidate and return its trial (never raises for a failing candidate).

    Args:
        run: the run's shared context.
        config: the candidate's config in the searched space (architecture and KD keys).
        fidelity: share of the proxy training, in (0, 1].
        number: the trial number (also seeds the student's initial weights).
        progress: called with the share of the proxy training done.

    Returns:
        An ``infeasible`` trial (a constraint broken; never trained), a ``failed`` trial (with
        the reason in ``error``) or an ``ok`` trial with its score.
    """
    t0 = time.perf_counter()
    family = student_family(run)
    metrics: dict[str, Any] = {}

    def done(status: TrialStatus, score: float | None = None, error: str | None = None) -> Trial:
        return Trial(number, config, status, score, fidelity, metrics, error, time.perf_counter() - t0)

    try:
        metrics["arch"] = family.describe(config)
        limit = run.constraints.max_params
        if limit is not None and hasattr(family, "estimate_params"):
            # the deployed count (RepVGG folded) where the family has one: the limit is on what ships
            n_params = int(getattr(family, "deployed_params", family.estimate_params)(config))
            if n_params > limit:  # rejected before the student is even built
                metrics["params"] = n_params
                why = run.constraints.violations(n_params, 0, None, None)
                return done(TrialStatus.INFEASIBLE, error="; ".join(why))
        torch.manual_seed(run.seed + number)
        model = family.build(config)
        cnt, lat, viol = checked_costs(run, model)
        metrics.update(
            params=int(cnt.params),
            flops=int(cnt.flops),
            latency_ms=float(lat.latency_ms),
            latency_method=lat.method,
            memory_bytes=int(cnt.peak_activation_bytes or 0),
        )
        limit_ms = run.constraints.latency_limit_ms(run.reference.latency_ms)
        if lat.method == "measured" and limit_ms:
            # a constraint only a measurement finds: the strategy learns it (SCBO, search/gp.py)
            metrics[CONSTRAINT_METRIC] = {"latency": float(lat.latency_ms) / limit_ms - 1.0}
        if viol:
            return done(TrialStatus.INFEASIBLE, error="; ".join(viol))
        from .distill import train_student

        b = run.budget
        folder = checkpoint_folder(run)
        if folder is None and run.checkpoints is not None:
            metrics["checkpoints_unseen"] = True  # a task on a machine that does not see --out
        ckpt = None if folder is None else candidate_checkpoint(folder, number, config, fidelity)
        tcfg = train_config(
            run,
            config,
            b.proxy_epochs,
            b.proxy_data_fraction * fidelity,
            sparsity=b.proxy_sparsity,
            early_stop_patience=b.proxy_patience,
            checkpoint=ckpt,
        )
        res = train_student(model, run.data, tcfg, run.knowledge, progress=progress)
        if res.resumed_at:  # the epoch (of the training's, as in TrainResult) it resumed at
            metrics["resumed_at_epoch"] = float(res.resumed_at)
        if res.checkpoint_error:
            metrics["checkpoint_error"] = res.checkpoint_error
        ref = run.reference
        # the scores divide by the accuracy: a candidate that scored 0 is scored as if 0.1%
        # (finite, last), and its metrics keep what it scored
        acc = max(float(res.val_acc), 1e-3)
        s = cost_term(cnt.params, cnt.flops, lat.latency_ms, ref.params, ref.flops, ref.latency_ms)
        metrics.update(
            accuracy=float(res.val_acc), s=s, trade_score=trade_score(acc, ref.acc_target, s), train_seconds=res.seconds
        )
        return done(TrialStatus.OK, search_score(acc, ref.acc_target, s, ACCURACY_WEIGHT))
    except Exception as exc:  # a failing candidate never stops the search (module docstring)
        metrics["traceback"] = traceback.format_exc(limit=3)[-1000:]
        return done(TrialStatus.FAILED, error=_reason(exc))


def _reason(exc: BaseException) -> str:
    line = exc.line() if hasattr(exc, "line") else str(exc)
    return f"{type(exc).__name__}: {line}".splitlines()[0][:300]
