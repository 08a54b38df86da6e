"""The Python API: ``compile``, ``profile``, ``calibrate`` and the listings. The CLI calls these
and nothing else.

``compile`` is orchestration only: load the inputs, cache the teacher's outputs, search
(each candidate is ``evaluate.evaluate_candidate``), train the chosen student, export, report.
"""

from __future__ import annotations

import functools
import numbers
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .config import CompileConfig
from .errors import (
    CandidateError,
    CheckpointError,
    ExportError,
    KdCompileError,
    SearchError,
    TrainingError,
    UsageError,
)
from .evaluate import (
    OBJECTIVES,
    Reference,
    RunContext,
    clear_candidate_checkpoints,
    costs,
    drop_candidate_checkpoint,
    evaluate_candidate,
    searched_space,
)
from .latency import plan_latency, resolve_target
from .parsing import kv_options
from .profilers import InputSpec
from .search.score import cost_term, trade_score
from .search.trial import Trial
from .targets import TargetProfile, get_target

__all__ = [
    "CompileResult",
    "Reporter",
    "calibrate",
    "compile",
    "get_target",
    "list_spaces",
    "list_strategies",
    "list_targets",
    "load_student",
    "profile",
]


class Reporter:
    """Progress hooks. The CLI passes a Rich implementation; the default is silent."""

    def stage(self, name: str) -> None: ...

    def search_started(self, total: int) -> None: ...

    def trial(self, trial: Trial) -> None: ...

    def search_done(self) -> None: ...

    def training(self, what: str, fraction: float) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class CompileResult:
    """What ``compile`` returns.

    Attributes:
        student: the final student (eval mode).
        config: its architecture/KD config.
        report: the full report dict (also written to ``report.json``).
        trials: every evaluated candidate.
        pareto: the non-dominated candidates over (accuracy, latency, params).
        artifacts: paths of written files by name.
    """

    student: nn.Module
    config: dict[str, Any]
    report: dict[str, Any]
    trials: list[Trial]
    pareto: list[dict[str, Any]]
    artifacts: dict[str, Path]

    @property
    def student_metrics(self) -> dict[str, Any]:
        return self.report["student"]

    @property
    def teacher_metrics(self) -> dict[str, Any]:
        return self.report["teacher"]


def compile(  # noqa: A001
    config: CompileConfig | str | Path, *, reporter: Reporter | None = None, **options: Any
) -> CompileResult:
    """Search, distil and export a student of a teacher for a target device.

    Args:
        config: a ``CompileConfig``, or the teacher (a checkpoint path or ``timm:<name>``) with
            ``options``.
        reporter: progress hooks (the CLI shows Rich progress bars through it).
        **options: the options of ``kd-compile compile`` by name (``kd_compile.config.
            compile_options()``): ``target``, ``max_params`` ("4M"), ``max_latency`` ("2ms"),
            ``data``, ``strategy``, ``budget``, ``proxy_fraction``, ``out``, ``seed``, ...

    Returns:
        A ``CompileResult`` with the student module, report, trials, Pareto data and artifacts.

    Raises:
        KdCompileError: (subclasses) for every user-caused problem, each with an exit code.
    """
    from .executors import check_executor
    from .inputs import check_feasible, check_out, claim_out, load_inputs
    from .students import space_for_teacher

    cfg = _as_config(config, options)
    cfg = _resolved_strategy(cfg)
    rep = reporter or Reporter()
    t_start = time.perf_counter()
    # every input is validated before anything is written or deleted
    target = resolve_target(cfg.target)
    plan = plan_latency(target, cfg.latency, cfg.runtime, cfg.precision)
    _check_names(cfg)
    check_out(cfg)
    check_executor(cfg.executor, cfg.ray_address)  # Ray installed, its cluster answering
    inputs = load_inputs(cfg, rep)
    tch = inputs.teacher
    family = space_for_teacher(cfg.space, tch)  # teacher-family reads the teacher's timm arch
    check_feasible(family, cfg.constraints, np.random.default_rng(cfg.seed))
    with claim_out(cfg):  # the output folder is this run's until it ends
        try:
            return _run(cfg, rep, inputs, family, target, plan, {"load": time.perf_counter() - t_start}, t_start)
        except Exception as exc:
            failed = _as_write_failure(exc, Path(cfg.out))
            if failed is None:
                raise
            raise failed from None


def _as_write_failure(exc: Exception, out: Path) -> KdCompileError | None:
    """A full disk (or quota) anywhere in a run is exit 7, naming the free space left in ``out``
    and that ``--resume`` loses nothing; None for any other error."""
    from .errors import OutputExistsError, write_failure

    why = write_failure(exc)
    if why is None or (isinstance(exc, KdCompileError) and not isinstance(exc, SearchError | ExportError)):
        return None
    try:
        free = f"; {shutil.disk_usage(out).free / 2**20:.1f} MiB free in {out}"
    except OSError:
        free = ""
    return OutputExistsError(
        f"a write failed: {why}{free}",
        hint="free some space, then rerun with --resume: the finished candidates, and the final students once "
        "trained, are kept",
    )


def _run(
    cfg: CompileConfig, rep: Reporter, inputs: Any, family: Any, target: TargetProfile, plan: Any,
    timings: dict[str, float], t_start: float,
) -> CompileResult:  # fmt: skip
    """compile's work once its inputs are validated and ``--out`` is locked: cache the teacher's
    outputs, search, train the chosen student, export, report."""
    from . import ship
    from .executors import candidate_executor
    from .final import FINAL_WEIGHTS, clear_epoch_checkpoints, restored_final, say_resumed
    from .inputs import check_teacher_accuracy, publish, staging_dir, teacher_knowledge
    from .report import build_report, pareto_front, write_report
    from .report.schema import NEAR_CHANCE
    from .search import Journal, run_search

    tch, data = inputs.teacher, inputs.data
    journal = Journal(inputs.out / "journal.jsonl")
    header = _journal_header(cfg, inputs, target)
    # resuming: the journal is checked first; a fresh one is written only once the teacher is
    past = journal.open(header, resume=True) if cfg.resume else []
    if journal.finished is not None:
        done = _finished_result(inputs.out, past)
        if done is not None:  # --resume on a finished run: its result, nothing retrained
            journal.close()
            rep.message(f"{inputs.out} holds a finished run with the same settings: nothing to do")
            return done
    t0 = time.perf_counter()
    if cfg.costed_in(target)[1] == "int8":
        from .report.schema import INT8_NOTE

        rep.message(f"note: {INT8_NOTE}")
    rep.stage("teacher: caching logits")
    knowledge = teacher_knowledge(cfg, tch.module, data)
    spec = InputSpec(tuple(tch.input_shape))
    from .students.common import deployed_if_equivalent

    # the teacher is costed as it deploys, as every student is (a RepVGG teacher folded): else the
    # student would be held to a slower teacher than the one it replaces
    t_deployed, fold_note = deployed_if_equivalent(tch.module, spec.shape)
    if fold_note:
        note = f"teacher costed as it deploys: {fold_note}"
        rep.message(note)
        tch.meta["notes"] = [*tch.meta.get("notes", ()), note]  # in report.json and report.md
    t_counts, t_lat = costs(t_deployed, spec, target, plan=plan)
    acc_teacher = float(knowledge.teacher_val_acc)
    check_teacher_accuracy(acc_teacher, tch, data, rep)
    ref = Reference(t_counts.params, t_counts.flops, t_lat.latency_ms, acc_teacher, cfg.target_acc or acc_teacher)
    run = _run_context(cfg, family, target, ref, plan, data, knowledge, inputs.out)
    timings["teacher"] = time.perf_counter() - t0
    if not cfg.resume:
        past = journal.open(header, resume=False)

    space = searched_space(family)
    rep.stage(f"search: {cfg.strategy}, {cfg.budget.candidates} candidates")
    rep.search_started(cfg.budget.candidates)

    def evaluate(config: dict[str, Any], fidelity: float, number: int) -> Trial:
        return evaluate_candidate(run, config, fidelity, number, lambda f: rep.training(f"candidate {number}", f))

    said_unseen, replayed = False, {t.number for t in past or []}

    def journaled(trial: Trial) -> None:  # the journal holds ``trial``: its epoch checkpoint can go
        nonlocal said_unseen
        drop_candidate_checkpoint(run.checkpoints, trial)
        if trial.number not in replayed:  # evaluated now, here or in a Ray task: its training's lines
            m = trial.metrics
            say_resumed(rep, f"candidate {trial.number}", m.get("resumed_at_epoch"), m.get("checkpoint_error"))
            if m.get("checkpoints_unseen") and not said_unseen:  # only a Ray task's trial says it
                said_unseen = True
                rep.message(
                    f"candidate {trial.number} ran on a machine that does not see {inputs.out}: "
                    "candidates there keep no epoch checkpoints (after a kill they train again from their start)"
                )  # fmt: skip
        rep.trial(trial)

    try:
        with candidate_executor(cfg.executor, **_executor_options(cfg)) as executor:
            strategy = _strategy(cfg, space, family, run, executor.workers)
            sr = run_search(
                space, strategy, evaluate, cfg.budget.candidates, journal, past,
                time_limit_s=cfg.budget.time_limit_s, on_trial=journaled,
                **executor.search_options(evaluate_candidate, _for_workers(cfg, run)),
            )  # fmt: skip
    finally:
        rep.search_done()
    clear_candidate_checkpoints(inputs.out)  # the journal holds every candidate now
    timings["training"] = sum(t.metrics.get("train_seconds", 0.0) for t in sr.trials[sr.resumed :])
    timings["costs"] = sum(t.duration_s for t in sr.trials[sr.resumed :]) - timings["training"]
    chosen = sr.recommendation  # the strategy's result: its best trial, or a model's pick
    if chosen is None:
        journal.close()
        raise _no_student(cfg, sr.trials, ref, target)

    final, distiller_report = None, None
    if journal.finished is not None:  # resumed after the final training: its students, if kept
        final, why = restored_final(inputs.out, journal.finished, chosen.config, run)
        distiller_report = journal.finished.get("distiller") if final is not None else None
        rep.message(
            f"final students restored from {inputs.out / FINAL_WEIGHTS}: not trained again" if final is not None
            else f"the final students are trained again: {why}"
        )  # fmt: skip
    restored = final is not None
    if final is None:
        final, distiller_report = _train_final_kept(
            cfg, run, chosen.config, tch.module, rep, journal, inputs.out, timings
        )
    journal.close()
    test = {"teacher": journal.finished["teacher_test_acc"], "kd": final.test_acc, "ce": final.test_acc_ce}
    # the KD student ships unless its CE-only twin scored higher on validation (final.shipped)
    shipped = final.shipped
    if shipped == "ce":
        rep.message(
            f"the student trained without KD scored higher on validation ({final.ce.val_acc:.2%} against "
            f"{final.kd.val_acc:.2%} with KD): it is the one shipped"
        )

    t0 = time.perf_counter()
    rep.stage("export")
    s_acc = float(final.kd.val_acc)
    shipped_val, shipped_test = final.shipped_val_acc, final.shipped_test_acc
    staging = staging_dir(inputs.out)  # published into --out only when complete and checked
    try:
        written, s_counts, s_lat, extra = ship.export(
            cfg, final.shipped_student, family, chosen.config, shipped_val if shipped_test is None else shipped_test,
            inputs, run, rep, staging, teacher=t_deployed,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a half-written export never ships
        raise
    artifacts = {k: inputs.out / Path(v).name for k, v in written.items()}
    timings["export"] = time.perf_counter() - t0
    s_term = cost_term(s_counts.params, s_counts.flops, s_lat.latency_ms, ref.params, ref.flops, ref.latency_ms)
    pareto = pareto_front(sr.trials, [(o.name, o.maximise) for o in OBJECTIVES])
    report = build_report(
        cfg=cfg, target=target, teacher=tch, acc_teacher=acc_teacher, acc_target=ref.acc_target,
        t_counts=t_counts, t_lat=t_lat, student_config=chosen.config, student_arch=family.describe(chosen.config),
        s_counts=s_counts, s_lat=s_lat, s_acc=s_acc, s_acc_ce=None if final.ce is None else float(final.ce.val_acc),
        test_acc_teacher=test["teacher"], test_acc=test["kd"], test_acc_ce=test["ce"],
        s_term=s_term, trade=trade_score(shipped_val, ref.acc_target, s_term), search=sr, chosen=chosen, pareto=pareto,
        shipped=shipped,
        artifacts=artifacts, timings={**timings, "total": time.perf_counter() - t_start},
        extra_measurements=extra, data=data, data_free=inputs.data_free, distiller=distiller_report,
        final_training={
            "restored": restored, "kd": final.kd.to_dict(), "ce": None if final.ce is None else final.ce.to_dict()
        },
    )  # fmt: skip
    for w in report["warnings"]:
        if w.startswith(NEAR_CHANCE):  # report.schema.near_chance_note
            rep.message(f"warning: {w}")
    report["gates"] = ship.gates(cfg, report)
    write_report(report, staging)
    artifacts.update(publish(staging, inputs.out))
    clear_epoch_checkpoints(inputs.out, kept_students=True)  # published: student.pt holds the student now
    result = CompileResult(final.shipped_student, chosen.config, report, sr.trials, pareto, artifacts)
    ship.enforce_gates(report["gates"])
    return result


def _train_final_kept(
    cfg: CompileConfig, run: RunContext, config: dict[str, Any], teacher: nn.Module, rep: Any, journal: Any, out: Path,
    timings: dict[str, float],
) -> tuple[Any, dict[str, Any] | None]:
    """The distiller search (``--distiller auto``) and the final training, their students kept in
    ``out`` and their results in the journal's ``final`` record before anything is exported
    (``final.keep_final``): a run that fails after this point resumes without training again.

    Returns:
        (the ``final.FinalResult``, the distiller search's report or None).
    """
    from .final import (
        clear_epoch_checkpoints,
        held_out_accuracy,
        journaled_distillers,
        keep_final,
        kept_distiller,
        search_distiller_for,
        train_final,
    )

    distiller, distiller_report = None, None
    if cfg.distiller == "auto":
        t0 = time.perf_counter()
        kept_choice = kept_distiller(journal.last("distiller"), config, cfg.distiller_iterations)
        if kept_choice is not None:
            rep.message(f"distiller search restored from the journal: {kept_choice[0].describe()}, not searched again")
        known = journaled_distillers(journal.notes, config, cfg.distiller_iterations)
        if kept_choice is None and known:
            rep.message(f"distiller search: {len(known)} distillers trained before the run stopped, from the journal")

        def evaluated(choice: Any, details: dict[str, Any]) -> None:  # a run killed later does not train it again
            journal.note("distiller_eval", config=config, iterations=cfg.distiller_iterations, key=list(choice.key),
                         details=details)  # fmt: skip

        choice, dknowledge, distiller_report = search_distiller_for(
            cfg, run, config, teacher, rep, kept=kept_choice, known=known, on_evaluated=evaluated
        )
        if kept_choice is None:  # a run killed after this point does not search again
            journal.note("distiller", config=config, iterations=cfg.distiller_iterations, report=distiller_report)
        distiller = (choice, dknowledge)
        timings["distiller_search"] = time.perf_counter() - t0
    try:
        final = train_final(
            cfg, run, config, rep, workers=_workers(cfg), teacher=teacher, distiller=distiller, checkpoints=out
        )
    except CandidateError as exc:
        journal.close()
        raise TrainingError(f"the final training of the chosen student diverged: {exc}", hint="lower --lr") from None
    timings["final_training"] = final.seconds
    kept = keep_final(out, final)
    if isinstance(kept, str):
        rep.message(f"warning: the final students could not be kept for a resume ({kept}); going on to export")
        kept = {}
    # the held-out test split is read here, once, after every choice was made on val
    journal.note(
        "final", config=config, val_acc=final.kd.val_acc, val_acc_ce=None if final.ce is None else final.ce.val_acc,
        test_acc=final.test_acc, test_acc_ce=final.test_acc_ce, teacher_test_acc=held_out_accuracy(teacher, run.data),
        shipped=final.shipped, distiller=distiller_report, **kept,
    )  # fmt: skip
    clear_epoch_checkpoints(out)  # the journal holds the training now (and final-students.pt its students)
    return final, distiller_report


# ----------------------------------------------------------------------------------------------
# compile's steps


def _as_config(config: CompileConfig | str | Path, options: dict[str, Any]) -> CompileConfig:
    if isinstance(config, CompileConfig):
        if options:
            raise UsageError(f"compile() got a CompileConfig and options ({', '.join(sorted(options))}); pass one")
        config.validate()
        return config
    return CompileConfig.from_options(config, **options)


def _resolved_strategy(cfg: CompileConfig) -> CompileConfig:
    """``--strategy auto`` (the default) becomes the strategy the budget calls for, so the journal,
    the report and a resume all name the one that ran."""
    import dataclasses

    from .search import strategy_for_budget

    return dataclasses.replace(cfg, strategy=strategy_for_budget(cfg.strategy, cfg.budget.candidates))


def _check_names(cfg: CompileConfig) -> None:
    """Unknown strategy or space names fail now, with suggestions, before any work."""
    from .search import get_strategy
    from .students import get_space

    cls = get_strategy(cfg.strategy)
    get_space(cfg.space)
    _check_strategy_options(cfg, cls)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available")


def _check_strategy_options(cfg: CompileConfig, cls: type) -> None:
    """``--strategy-options`` keys the strategy does not take fail now, naming the ones it does
    (``search.strategy_options``), before any work."""
    from .search import RUN_SET_OPTIONS, strategy_options
    from .search.options import check_strategy_options

    allowed = strategy_options(cls)
    given = kv_options(cfg.strategy_options)
    for key in given:
        if key in RUN_SET_OPTIONS:
            raise UsageError(f"--strategy-options: '{key}' is set by kd-compile from the run")
        if key not in allowed:
            raise UsageError(
                f"--strategy-options: strategy '{cfg.strategy}' has no option '{key}'",
                hint=f"its options: {', '.join(allowed) or 'none'}",
            )
    check_strategy_options(cls, given)  # values: types and ranges (search.options)


def _run_context(
    cfg: CompileConfig, family: Any, target: TargetProfile, ref: Reference, plan: Any, data: Any, knowledge: Any,
    out: Path,
) -> RunContext:  # fmt: skip
    from .evaluate import CANDIDATE_CHECKPOINTS
    from .export import space_kwargs

    return RunContext(
        space=cfg.space,
        space_kwargs=space_kwargs(family),
        target=target,
        constraints=cfg.constraints,
        budget=cfg.budget,
        seed=cfg.seed,
        device=cfg.device,
        batch_size=cfg.batch_size,
        augment_views=cfg.augment_views,
        reference=ref,
        latency=plan,
        data=data,
        knowledge=knowledge,
        checkpoints=str(out / CANDIDATE_CHECKPOINTS),
    )


def _journal_header(cfg: CompileConfig, inputs: Any, target: TargetProfile) -> dict[str, Any]:
    """The journal's header: a fingerprint of everything that determines the search."""
    import dataclasses

    from .inputs import file_id
    from .search.journal import fingerprint

    settings = {
        "teacher": file_id(cfg.teacher),
        "data": inputs.source.name,
        "space": cfg.space,
        "strategy": cfg.strategy,
        "seed": cfg.seed,
        "constraints": cfg.constraints.to_dict(),
        "data_free": inputs.data_free,
        "synthetic": [cfg.synthetic_images, cfg.synthetic_steps] if inputs.data_free else None,
        "augment_views": cfg.augment_views,
        "budget": dataclasses.replace(cfg.budget, time_limit_s=None).to_dict(),
        "target": target.name,
        "target_acc": cfg.target_acc,
        "version": __version__,
        # only when given: a run on the target's defaults keeps the fingerprint it had before the options
        **{k: v for k, v in (("runtime", cfg.runtime), ("precision", cfg.precision)) if v is not None},
    }
    return {"fingerprint": fingerprint(settings), "settings": settings, "config": cfg.to_dict()}


def _no_student(cfg: CompileConfig, trials: list[Trial], ref: Reference, target: TargetProfile) -> KdCompileError:
    """Why the search found no student: every candidate slower than allowed (a constraint the
    user can lift), or every one failed or infeasible otherwise."""
    from .errors import ConstraintError
    from .search import TrialStatus

    lat = [t.metrics["latency_ms"] for t in trials if isinstance(t.metrics.get("latency_ms"), float)]
    limit = cfg.constraints.latency_limit_ms(ref.latency_ms)
    if lat and limit is not None and all(v > limit for v in lat):
        fastest = min(lat)
        return ConstraintError(
            f"every candidate was slower than --max-latency {cfg.constraints.max_latency} on {target.name}: "
            f"the fastest of {len(lat)} took {fastest:.3g} ms, {fastest / ref.latency_ms:.2f}x the teacher's "
            f"{ref.latency_ms:.3g} ms",
            hint="raise --budget, allow a slower student with --max-latency 2x (or none), or choose another --space",
        )
    reasons = sorted({t.error or "" for t in trials})[:3]
    if trials and all(t.status == TrialStatus.INFEASIBLE for t in trials):
        # nothing failed: every candidate broke a limit the user set, which they can loosen
        return ConstraintError(
            f"every candidate broke the constraints ({len(trials)} tried): {'; '.join(reasons)}",
            hint="loosen --max-memory / --max-flops / --max-latency, raise --budget, or choose another --space",
        )
    return SearchError(f"no candidate trained successfully ({len(trials)} tried): {'; '.join(reasons)}")


def _finished_result(out: Path, trials: list[Trial]) -> CompileResult | None:
    """The result of a finished run in ``out`` (its report and student), or None when its
    artifacts are not all there (then the run finishes them again)."""
    import json

    paths = {n: out / n for n in ("report.json", "student.pt", "student.onnx")}
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        report = json.loads(paths["report.json"].read_text(encoding="utf-8"))
        student = load_student(paths["student.pt"]).module
    except (ValueError, KdCompileError):
        return None
    artifacts = {n: out / n for n in report.get("artifacts", {}) if (out / n).is_file()} | paths
    pareto = report.get("search", {}).get("pareto", [])
    return CompileResult(student, report["student"]["config"], report, trials, pareto, artifacts)


def _strategy(cfg: CompileConfig, space: Any, family: Any, run: RunContext, workers: int = 1) -> Any:
    """The strategy, given what it needs as data: the objectives (multi-objective strategies);
    the analytic params limit as a feasibility predicate, so no proposal breaks it; the run's
    other constraints known without training (FLOPs, memory, predicted latency) as its screen of
    proposals (``evaluate.proposal_screen``); and, where it takes one, the batch size (TuRBO's
    batch mode: q proposals a round by Thompson sampling, the trust region updated once a batch)
    as ``workers``, the number of candidates the executor trains side by side."""
    import inspect

    from .evaluate import proposal_screen
    from .search import create_strategy, get_strategy
    from .search.options import OPTION_RULES

    cls = get_strategy(cfg.strategy)
    opts: dict[str, Any] = {"objectives": OBJECTIVES} if cls.multi_objective else {}
    count = getattr(family, "deployed_params", getattr(family, "estimate_params", None))
    limit = cfg.constraints.max_params
    if limit is not None and count is not None:
        opts["feasible"] = lambda c: count(c) <= limit
    screen = proposal_screen(run)
    if screen is not None:
        opts["screen"] = screen
    if workers > 1 and "batch_size" in inspect.signature(cls).parameters:
        # a Ray cluster's CPUs may outnumber what one proposal can pick jointly (search.options)
        opts["batch_size"] = min(workers, int(OPTION_RULES["batch_size"].hi or workers))
    given = kv_options(cfg.strategy_options)  # --strategy-options (checked by _check_strategy_options)
    try:
        return create_strategy(cfg.strategy, space, seed=cfg.seed, budget=cfg.budget.candidates, **{**opts, **given})
    except (TypeError, ValueError) as exc:
        if not given:
            raise
        raise UsageError(
            f"--strategy-options {cfg.strategy_options} does not suit strategy '{cfg.strategy}': {exc}"
        ) from None


def _workers(cfg: CompileConfig) -> int:
    from .executors import parallel_workers

    return parallel_workers() if cfg.workers == 0 else cfg.workers


def _executor_options(cfg: CompileConfig) -> dict[str, Any]:
    """``candidate_executor``'s options; a candidate on a cuda device reserves one GPU by default."""
    gpus = cfg.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if cfg.device.startswith("cuda") else 0.0
    return dict(
        address=cfg.ray_address, cpus_per_trial=cfg.cpus_per_trial, gpus_per_trial=gpus, workers=cfg.parallel_trials
    )


def _for_workers(cfg: CompileConfig, run: RunContext) -> RunContext:
    """The context candidates get in Ray tasks: the GPU Ray gives a task is its ``cuda:0``, and the
    candidates' checkpoint folder by its absolute path with a fresh token in it, so a task keeps
    epoch checkpoints only where its machine sees the driver's ``--out`` (the same machine, or
    storage they share; ``evaluate.checkpoint_folder``); none if the driver cannot write the token."""
    import dataclasses

    from .evaluate import share_candidate_checkpoints

    reserves_gpu = bool(_executor_options(cfg)["gpus_per_trial"])
    device = "cuda" if reserves_gpu and run.device.startswith("cuda:") else run.device
    folder, token = None, None
    if run.checkpoints is not None:
        try:
            folder = str(Path(run.checkpoints).resolve())
            token = share_candidate_checkpoints(folder)
        except OSError:  # a full disk: the candidates keep none, as a Ray task that does not see --out
            folder = None
    return dataclasses.replace(run, device=device, checkpoints=folder, checkpoints_token=token)


# ----------------------------------------------------------------------------------------------
# profile, calibrate, listings


def profile(
    model: str | Path | nn.Module,
    *,
    target: str = "cpu",
    runtime: str | None = None,
    precision: str | None = None,
    batch: int = 1,
    image_size: int | None = None,
    method: str | None = None,
    layers: bool = False,
    trust_checkpoint: bool = False,
    input_shape: tuple[int, int, int] | str | None = None,
    arch: str | None = None,
    input_size: tuple[int, int] | int | str | None = None,
    mean: tuple[float, ...] | str | None = None,
    std: tuple[float, ...] | str | None = None,
    interpolation: str | None = None,
    crop_pct: float | str | None = None,
) -> dict[str, Any]:
    """Profile a model on a target: params, FLOPs and latency (measured or predicted).

    The model is profiled as it deploys, as ``compile`` costs a teacher: re-parameterisable
    blocks (RepVGG, MobileOne, RepViT, conv + BN ``fuse``) folded when the folded copy is smaller
    and computes the same (``students.common.deployed_if_equivalent``); ``deploy_form`` in the
    result says what was done (None: profiled as given).

    The teacher options are ``compile``'s (same names, same parsing), so a checkpoint is loaded
    here exactly as a compile run would load it.

    Args:
        model: a checkpoint path kd-compile can load, a model spec (``timm:<name>``, ...), an
            ``nn.Module``, or an ``.onnx`` file (measured as it is with ONNX Runtime on this CPU;
            its params are its initializers' elements, its FLOPs not counted).
        target: a target name or TOML path.
        runtime: tensorrt | torch (eager) | onnxruntime (default: measuring a GPU, the best one
            installed here; else the target's). The choice is ``latency.plan_latency``'s.
        precision: fp32 | fp16 | bf16 | int8 (default: the target's).
        batch: batch size. A batch that cannot fit the memory it would run in (the target's
            ``memory_gb`` for a prediction or a GPU, this machine's RAM for a CPU measurement) is
            refused: its weights and largest tensor that every runtime writes (the input, a
            convolution's output) are a lower bound (``profilers.memory_fit``). A measurement that
            runs out of memory anyway is a UsageError too.
        image_size: override the input resolution (square).
        method: predict | measure (default: measure when the target is this machine).
        layers: include the per-layer breakdown.
        trust_checkpoint, input_shape, arch, input_size, mean, std, interpolation, crop_pct: as
            ``compile``'s options of those names (``--arch`` for a state_dict, ...).
    """
    from .config import compile_options
    from .teacher import load_teacher

    batch = _whole_number(batch, "batch")
    image_size = None if image_size is None else _whole_number(image_size, "image_size")
    if not isinstance(layers, bool):  # trust_checkpoint: checked where it is used (load_teacher)
        raise UsageError(f"layers must be True or False, got {layers!r}")
    if not isinstance(model, (str, Path, nn.Module)):
        raise UsageError(f"model must be a checkpoint path, a model spec or an nn.Module, got {type(model).__name__}")
    tgt = resolve_target(target)
    plan = plan_latency(tgt, method or "auto", runtime, precision, flag="--method")
    opts = compile_options()
    given = dict(input_shape=input_shape, arch=arch, input_size=input_size, mean=mean, std=std,
                 interpolation=interpolation, crop_pct=crop_pct)  # fmt: skip
    kw = {name: opts[name].convert(v) for name, v in given.items() if v is not None}
    if not isinstance(model, nn.Module) and not str(model).strip():
        raise UsageError("model is empty: give a checkpoint, an .onnx file or a model spec (e.g. timm:resnet18)")
    if not isinstance(model, nn.Module) and str(model).lower().endswith(".onnx"):
        return _profile_onnx_file(Path(model), tgt, plan, batch, image_size)
    preprocessing = None
    if isinstance(model, nn.Module):
        module = model.eval()
        size = kw.get("input_size") or (image_size or 224, image_size or 224)
        shape = kw.get("input_shape") or (3, *size)
    else:
        from .students.specs import is_spec

        if image_size is not None and not {"input_shape", "input_size"} & set(kw) and is_spec(str(model)):
            # a spec records no input size of its own to contradict: it is built and checked at this one
            kw["input_size"] = (image_size, image_size)
        tch = load_teacher(str(model), trust_checkpoint=trust_checkpoint, **kw)
        module = tch.module
        shape = tch.input_shape
        preprocessing = tch.meta.get("preprocessing")
        if image_size is not None:
            shape = (shape[0], image_size, image_size)
    spec = InputSpec(tuple(shape), batch=batch)
    from .profilers.counting import count, trace_ops
    from .students.common import deployed_if_equivalent

    try:
        # profiled as it deploys, as compile costs a teacher (re-parameterisable blocks folded)
        module, fold_note = deployed_if_equivalent(module, tuple(shape))
        trace = trace_ops(module, tuple(shape))
        counts = count(module, spec.with_batch(1), trace=trace)
    except KdCompileError:
        raise
    except Exception as exc:  # the model does not run on this input (e.g. a ViT at another --image-size)
        from .errors import out_of_memory
        from .teacher.safety import _first_line

        if out_of_memory(exc):  # the model is fine; one forward at this size does not fit in this machine
            raise UsageError(
                f"counting the ops of {model if not isinstance(model, nn.Module) else type(model).__name__} at "
                f"input {tuple(shape)} (one forward pass at batch 1) ran out of this machine's memory: "
                f"{type(exc).__name__}: {_first_line(exc)}",
                hint="profile it at a smaller --image-size",
            ) from None
        raise CheckpointError(
            f"{model if not isinstance(model, nn.Module) else type(model).__name__} does not run on input of shape "
            f"{tuple(shape)}: {type(exc).__name__}: {_first_line(exc)}",
            hint="profile it at the input size it was built for (drop --image-size, or pass --input-shape)",
        ) from None
    m = _profile_within_memory(module, spec, trace, tgt, plan, precision)
    d = m.to_dict(layers=layers)
    d.update(
        model=str(model) if not isinstance(model, nn.Module) else type(model).__name__,
        target=tgt.name,
        input_shape=list(shape),
        params=counts.params,
        flops=counts.flops,
        flops_per_batch=counts.flops * batch if counts.flops else None,
        preprocessing=preprocessing,
        deploy_form=fold_note or None,
    )
    if layers and not d.get("layers"):
        d["layers_note"] = f"{m.runtime} {m.method} no per-layer times here (only the whole model's latency)"
    return d


def _profile_within_memory(module: nn.Module, spec: Any, trace: Any, tgt: TargetProfile, plan: Any,
                           precision: str | None) -> Any:
    """``plan``'s measurement or prediction of ``module``, refused up front (exit 2) for a batch that
    cannot fit the memory it would run in, and with a clear error for one that fails to allocate."""
    from .profilers import create_profiler
    from .profilers.memory_fit import host_memory_bytes, resident_lower_bound

    measured_here = plan.method == "measure" and tgt.kind == "cpu"
    memory, where = (host_memory_bytes(), "this machine") if measured_here else (tgt.memory_gb * 1e9, tgt.name)
    need = resident_lower_bound(trace.ops, spec.shape, trace.weight_bytes, spec.batch,
                                plan.options.get("precision") or precision or tgt.default_precision)

    def run() -> Any:
        with create_profiler(plan.profiler, **plan.options) as p:
            return p.profile(module, spec)

    return _within_memory(run, need, memory, spec.batch, where)


def _within_memory(run: Any, need: int, memory: float | None, batch: int, where: str) -> Any:
    """``run()``, refused before it starts when ``need`` bytes exceed ``memory`` (exit 2), and a
    one-line UsageError, not an internal error, when it fails to allocate anyway."""
    from .errors import out_of_memory
    from .profilers.memory_fit import check_fits

    check_fits(need, memory, batch, where)
    try:
        return run()
    except KdCompileError:
        raise
    except Exception as exc:
        if not out_of_memory(exc):
            raise
        from .teacher.safety import _first_line

        raise UsageError(f"batch {batch} ran out of memory on {where}: {type(exc).__name__}: {_first_line(exc)}",
                         hint="use a smaller --batch") from None


def _profile_onnx_file(path: Path, tgt: TargetProfile, plan: Any, batch: int, image_size: int | None) -> dict[str, Any]:
    """``profile`` of an ``.onnx`` file: measured as it is with ONNX Runtime on this CPU (the
    ``cpu`` target), the file's own types and shapes; nothing else can be done with it here: the
    predictor counts a PyTorch model's ops, and GPU runtimes take their own ONNX export."""
    from .profilers.onnxrt import onnx_file_io, profile_onnx

    if not path.is_file():
        raise UsageError(f"ONNX file not found: {path}")
    if tgt.kind != "cpu" or plan.method != "measure" or plan.profiler != "onnxruntime":
        raise UsageError(
            f"an ONNX file is measured with ONNX Runtime on this CPU only; it cannot be "
            f"{'predicted' if plan.method == 'predict' else 'measured'} on {tgt.name}",
            hint="measure it with --target cpu --method measure; to predict, profile the PyTorch checkpoint or "
                 "a model spec",
        )
    if image_size is not None:
        raise UsageError("--image-size cannot resize an ONNX file: it runs at the input shape it was exported with")
    dims, params = onnx_file_io(path)
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise UsageError(f"{path}: its input is {dims}, not (N, C, H, W) with fixed C, H, W")
    if isinstance(dims[0], int) and dims[0] > 0 and dims[0] != batch:
        raise UsageError(f"{path} was exported for batch {dims[0]}, not {batch}", hint=f"use --batch {dims[0]}")
    from .profilers.memory_fit import host_memory_bytes

    spec = InputSpec(tuple(dims[1:]), batch=batch)
    # the fp32 input batch alone is a lower bound on what ONNX Runtime holds
    m = _within_memory(lambda: profile_onnx(path, spec, **plan.options), 4 * batch * int(np.prod(dims[1:])),
                       host_memory_bytes(), batch, "this machine")
    d = m.to_dict(layers=False)
    d.update(model=str(path), target=tgt.name, input_shape=list(dims[1:]), params=params, flops=None,
             flops_per_batch=None, preprocessing=None, deploy_form=None)  # fmt: skip
    return d


def _whole_number(value: Any, name: str) -> int:
    """``value`` as an int >= 1, or a one-line UsageError (a bool, a float, a string or None is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def load_student(path: str | Path) -> Any:
    """Load a student written by ``compile`` (``student.pt``): weights plus config, rebuilt through
    its registered family with no pickled code.

    Returns:
        A ``Teacher``-like record: ``module`` (eval mode, (N, C, H, W) float -> (N, classes)
        logits), ``input_shape``, ``num_classes`` and ``meta`` (config, the preprocessing under
        ``normalize``, class names, accuracy, target, kd-compile version).
    """
    from .teacher import load_teacher

    if not isinstance(path, (str, Path)):
        raise UsageError(f"load_student takes the path of a student.pt, got {type(path).__name__}")
    if not Path(path).is_file():
        raise CheckpointError(f"student checkpoint {'is not a file' if Path(path).exists() else 'not found'}: {path}")
    return load_teacher(str(path))


def calibrate(
    target: str | Path,
    tables: list[str | Path] | str | Path,
    runtime: str = "torch",
    precision: str = "fp16",
    models: int | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Fit ``target``'s device scales to measured tables, as ``kd-compile calibrate`` does (same
    defaults: eager PyTorch fp16, timm's AMP tables); ``calibrate.write.calibrate`` says what is fitted,
    written where, and returned."""
    from .calibrate import calibrate as _calibrate

    return _calibrate(target=target, tables=tables, runtime=runtime, precision=precision, models=models, out=out)


def list_targets() -> list[str]:
    """Names of the built-in target device profiles."""
    from .targets import list_targets as _list

    return _list()


def list_strategies() -> list[str]:
    """Names of the registered search strategies."""
    from .search import list_strategies as _list

    return _list()


def list_spaces() -> list[str]:
    """Names of the registered student families."""
    from .students import list_spaces as _list

    return _list()


def target_calibration(name: str) -> dict[str, Any] | None:
    """A target's shipped calibration (fitted constants, error bands, what they were fitted on)."""
    from .profilers.roofline import read_calibration

    try:
        return read_calibration(name)
    except (OSError, ValueError, KdCompileError):
        return None


def target_out_of_sample(target: TargetProfile) -> dict[str, list[dict[str, Any]]]:
    """What published tables of ImageNet-size models that no fit reads measured of the predictor on
    ``target``, by regime ``runtime/precision/batch1|large`` (empty: none; ``benchmarks/external_check.py``)."""
    from .profilers.error_bands import out_of_sample, regime_key
    from .profilers.roofline import RUNTIME_NAMES
    from .targets.profile import PRECISIONS

    found = {regime_key(rt, pr, b): out_of_sample(target, rt, pr, b)
             for rt in RUNTIME_NAMES for pr in PRECISIONS for b in (1, 64)}
    return {k: v for k, v in found.items() if v is not None}


def prediction_band(target: TargetProfile, runtime: str, precision: str, batch: int) -> dict[str, Any]:
    """The error band every prediction for (target, runtime, precision, batch) carries."""
    from .profilers.error_bands import error_band

    return error_band(target, runtime, precision, batch)


@functools.cache
def strategy_option_names() -> dict[str, list[str]]:
    """Each registered strategy with the options it takes (``--strategy-options`` keys)."""
    from .search import get_strategy, strategy_options

    return {n: strategy_options(get_strategy(n)) for n in list_strategies()}


@functools.cache
def strategy_summaries() -> dict[str, str]:
    """Each registered strategy with the first line of its docstring."""
    from .search import get_strategy

    def first_sentence(doc: str | None) -> str:
        para = " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "")
        end = re.search(r"\.\s(?=[A-Z(])", para)  # a sentence end, not "Alg. 2"
        return para if end is None else para[: end.start() + 1]

    return {n: first_sentence(get_strategy(n).__doc__) for n in list_strategies()}
