"""The Python API: ``compile``, ``profile``, ``calibrate``. The CLI calls these and nothing else."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .config import Budget, CompileConfig, Constraints, parse_bytes, parse_latency_ms, parse_size
from .errors import (
    CandidateError,
    ConstraintError,
    DataError,
    KdCompileError,
    OutputExistsError,
    SearchError,
    UsageError,
)
from .profilers.base import InputSpec, Measurement
from .search.base import FAILED, INFEASIBLE, OK, Trial
from .search.score import cost_term, search_score, trade_score
from .targets import TargetProfile, get_target

ARTIFACTS = ("journal.jsonl", "student.pt", "student.onnx", "report.json", "report.md", "trace.png")


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


# ----------------------------------------------------------------------------------------------
# cost measurement


def latency_on_target(
    model: nn.Module, spec: InputSpec, target: TargetProfile, *, fast: bool = False, trace: Any = None
) -> Measurement:
    """Latency of ``model`` on ``target``: measured with ONNX Runtime when the target is this
    machine, predicted with the roofline model otherwise (from ``trace`` when given)."""
    from .profilers.base import create_profiler

    if target.local and target.default_runtime == "onnxruntime":
        opts = {"min_time_s": 0.25, "min_iters": 20, "warmup": 5} if fast else {}
        with create_profiler("onnxruntime", **opts) as p:
            return p.profile(model, spec)
    with create_profiler("roofline", target=target) as p:
        if trace is not None:
            return p.predict_ops(trace.ops, spec.batch)
        return p.profile(model, spec)


def costs(
    model: nn.Module, spec: InputSpec, target: TargetProfile, *, fast: bool = False
) -> tuple[Measurement, Measurement]:
    """(counts, latency on target) from one traced forward pass."""
    from .profilers.counting import count, trace_ops

    tr = trace_ops(model, tuple(spec.shape))
    return count(model, spec, trace=tr), latency_on_target(model, spec, target, fast=fast, trace=tr)


# ----------------------------------------------------------------------------------------------
# compile


def _resolve_config(teacher: str | Path | CompileConfig, **kw: Any) -> CompileConfig:
    if isinstance(teacher, CompileConfig):
        if kw:
            teacher = dataclasses.replace(teacher, **kw)
        return teacher
    c = {k: kw.pop(k) for k in ("max_params", "max_flops", "max_latency", "max_memory") if k in kw}
    constraints = Constraints(
        max_params=parse_size(c["max_params"], "--max-params") if c.get("max_params") is not None else None,
        max_flops=parse_size(c["max_flops"], "--max-flops") if c.get("max_flops") is not None else None,
        max_latency_ms=parse_latency_ms(c["max_latency"], "--max-latency")
        if c.get("max_latency") is not None
        else None,
        max_memory_bytes=parse_bytes(c["max_memory"], "--max-memory") if c.get("max_memory") is not None else None,
    )
    budget = kw.pop("budget", None)
    if budget is None or isinstance(budget, int):
        b = Budget() if budget is None else Budget(candidates=budget)
    elif isinstance(budget, Budget):
        b = budget
    else:
        raise UsageError(f"budget must be an int or a Budget, got {type(budget).__name__}")
    knobs = {
        k: kw.pop(k)
        for k in (
            "proxy_epochs",
            "proxy_data_fraction",
            "final_epochs",
            "time_limit_s",
            "lr",
            "proxy_sparsity",
            "proxy_patience",
        )
        if k in kw
    }
    if knobs:
        b = dataclasses.replace(b, **{k: v for k, v in knobs.items() if v is not None})
    if "out" in kw:
        kw["out"] = Path(kw["out"])
    try:
        return CompileConfig(teacher=str(teacher), constraints=constraints, budget=b, **kw)
    except TypeError as exc:
        raise UsageError(f"compile(): {exc}") from None


def _check_budget(cfg: CompileConfig) -> None:
    b = cfg.budget
    if b.candidates < 1:
        raise UsageError("--budget must be at least 1 candidate")
    if not (0 < b.proxy_data_fraction <= 1):
        raise UsageError("proxy data fraction must be in (0, 1]")
    if b.proxy_epochs <= 0 or b.final_epochs <= 0:
        raise UsageError("epochs must be positive")
    if not 0 <= b.proxy_sparsity < 1:
        raise UsageError(f"--proxy-sparsity must be in [0, 1), got {b.proxy_sparsity}")
    if b.proxy_patience is not None and b.proxy_patience < 1:
        raise UsageError(f"--proxy-patience must be at least 1 epoch, got {b.proxy_patience}")
    if cfg.target_acc is not None and not (0 < cfg.target_acc <= 1):
        raise UsageError("--target-acc must be a fraction in (0, 1], e.g. 0.85")
    if cfg.distiller not in ("kd", "auto"):
        raise UsageError(f"--distiller must be kd or auto, got '{cfg.distiller}'")
    if not 0 <= cfg.augment_views <= 16:
        raise UsageError(f"--augment must be 0..16 augmented views, got {cfg.augment_views}")
    if cfg.device != "cpu" and not cfg.device.startswith("cuda"):
        raise UsageError(f"--device must be cpu or cuda[:N], got '{cfg.device}'")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available")


def _teacher_cache_dir() -> Path | None:
    """Where offline teacher outputs are stored (None: keep them in memory only)."""
    from .data import cache_dir

    try:
        d = cache_dir() / "teacher"
        d.mkdir(parents=True, exist_ok=True)
        return d
    except OSError:  # a read-only home: the cache still works, in memory
        return None


def _prepare_out(cfg: CompileConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()):
        if cfg.resume:
            return out
        if not cfg.force:
            raise OutputExistsError(
                f"output folder {out} exists and is not empty",
                hint="pass --force to overwrite, --resume to continue, or choose another --out",
            )
        for name in ARTIFACTS:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def compile(teacher: str | Path | CompileConfig, *, reporter: Reporter | None = None, **kwargs: Any) -> CompileResult:  # noqa: A001
    """Search, distil and export a student of ``teacher`` for a target device.

    Args:
        teacher: a checkpoint path (or ``timm:<name>``), or a full ``CompileConfig``.
        reporter: progress hooks (the CLI shows Rich progress bars through it).
        **kwargs: ``target``, ``max_params`` ("4M"), ``max_flops``, ``max_latency`` ("2ms"),
            ``max_memory``, ``data``, ``strategy``, ``budget`` (int: candidates),
            ``target_acc``, ``out``, ``seed``, ``device``, ``resume``, ``force``,
            ``trust_checkpoint``, ``arch``, ``input_shape``, ``num_classes``,
            ``augment_views`` (seeded augmented copies of the training set, the teacher's
            outputs on them cached once; every training keeps its number of optimiser steps),
            and budget knobs ``proxy_epochs``, ``proxy_data_fraction``, ``final_epochs``,
            ``time_limit_s``, ``proxy_sparsity``, ``proxy_patience``.

    Returns:
        A ``CompileResult`` with the student module, report, trials, Pareto data and artifacts.

    Raises:
        KdCompileError: (subclasses) for every user-caused problem, each with an exit code.
    """
    from .data import load_data
    from .distill import TeacherCache, TrainConfig, train_student
    from .executors import TrainJob, parallel_workers, run_jobs
    from .export import space_kwargs
    from .search.base import create_strategy
    from .search.journal import Journal, fingerprint
    from .search.loop import run_search
    from .students import create_space
    from .teacher import load_teacher

    rep = reporter or Reporter()
    cfg = _resolve_config(teacher, **kwargs)
    _check_budget(cfg)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    # cheap checks first, so bad input fails before any work
    target = get_target(cfg.target)
    from .search.base import STRATEGIES
    from .search.base import _load_builtins as _load_strategies
    from .students.base import list_spaces

    _load_strategies()
    STRATEGIES.get(cfg.strategy)  # unknown names fail now, with suggestions, before any work
    if cfg.space not in list_spaces():
        from .students.base import SPACES

        SPACES.get(cfg.space)
    t0 = time.perf_counter()
    rep.stage("loading teacher")
    tch = load_teacher(
        cfg.teacher,
        arch=cfg.arch,
        input_shape=cfg.input_shape,
        num_classes=cfg.num_classes,
        trust_checkpoint=cfg.trust_checkpoint,
    )
    out = _prepare_out(cfg)
    torch.manual_seed(cfg.seed)
    rep.stage("loading data")
    data_free = cfg.data is None and not tch.meta.get("data")
    if data_free:
        data = _synthesize_data(tch, cfg, rep)
    else:
        data = load_data(
            cfg.data,
            hint=tch.meta.get("data"),
            image_size=tch.input_shape[1],
            channels=tch.input_shape[0],
            seed=cfg.seed,
        )
    if data.num_classes != tch.num_classes:
        raise DataError(
            f"class-count mismatch: the data has {data.num_classes} classes, the teacher outputs {tch.num_classes}"
        )
    if tch.input_shape[1:] != data.input_shape[1:] or tch.input_shape[0] != data.input_shape[0]:
        raise DataError(f"data images are {data.input_shape}, the teacher expects {tch.input_shape}")
    norm = tch.meta.get("normalize")
    if norm:
        data = data.replace(mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    lap("load", t0)

    spec = InputSpec(tuple(tch.input_shape))
    device = cfg.device
    space = create_space(cfg.space, input_shape=tuple(tch.input_shape), num_classes=tch.num_classes)
    _check_feasible(space, cfg.constraints, np.random.default_rng(cfg.seed))

    # training data: the bundle, plus seeded augmented views when asked (replayable, so the
    # teacher's outputs on them are cached like the rest); an epoch over it is 1 + views passes
    views = cfg.augment_views
    source = data  # what the report and the student's data hint name
    if views:
        from .distill import augmented_bundle

        data = augmented_bundle(data, views, seed=cfg.seed)

    def train_config(config: dict[str, Any], epochs: float, fraction: float, **extra: Any) -> TrainConfig:
        """How every training of this run is set up: the student's searched KD alpha/tau, the
        run's seed, device, batch and lr; ``epochs`` count passes over the original images."""
        kd = space.kd_hparams(config)
        return TrainConfig(
            epochs=epochs / (1 + views),
            data_fraction=fraction,
            alpha=kd["alpha"],
            tau=kd["tau"],
            seed=cfg.seed,
            device=device,
            batch_size=cfg.batch_size,
            lr=b.lr,
            **extra,
        )

    # teacher: offline logits (computed once, stored under the cache folder and reused by any
    # run with the same teacher weights and data), accuracy, costs on the target
    t0 = time.perf_counter()
    rep.stage("teacher: caching logits")
    cache = TeacherCache.build(
        tch.module.to(device),
        data,
        device=device,
        cache_dir=_teacher_cache_dir(),
        augment_seed=cfg.seed if views else None,
    )
    tch.module.cpu()
    acc_teacher = float(cache.teacher_val_acc)
    t_counts, t_lat = costs(tch.module, spec, target)
    lap("teacher", t0)
    acc_target = cfg.target_acc if cfg.target_acc is not None else acc_teacher

    b = cfg.budget
    accuracy_weight = 4.0

    def evaluate(config: dict[str, Any], fidelity: float, number: int) -> Trial:
        t_eval = time.perf_counter()
        metrics: dict[str, Any] = {"arch": space.describe(config)}
        try:
            limit = cfg.constraints.max_params
            if limit is not None and hasattr(space, "estimate_params"):
                n_params = int(space.estimate_params(config))
                if n_params > limit:  # rejected before the student is even built
                    metrics["params"] = n_params
                    lap("costs", t_eval)
                    return Trial(
                        number,
                        config,
                        INFEASIBLE,
                        None,
                        fidelity,
                        metrics,
                        "; ".join(cfg.constraints.violations(n_params, 0, None, None)),
                        time.perf_counter() - t_eval,
                    )
            torch.manual_seed(cfg.seed + number)
            model = space.build(config)
            cnt, lat = costs(model, spec, target, fast=True)
            metrics.update(
                params=int(cnt.params),
                flops=int(cnt.flops),
                latency_ms=float(lat.latency_ms),
                latency_method=lat.method,
                memory_bytes=int(cnt.peak_activation_bytes or 0),
            )
            viol = cfg.constraints.violations(
                int(cnt.params), int(cnt.flops), float(lat.latency_ms), cnt.peak_activation_bytes
            )
            if viol:
                lap("costs", t_eval)
                return Trial(
                    number, config, INFEASIBLE, None, fidelity, metrics, "; ".join(viol), time.perf_counter() - t_eval
                )
            lap("costs", t_eval)
            t_train = time.perf_counter()
            res = train_student(
                model,
                data,
                train_config(
                    config,
                    b.proxy_epochs,
                    b.proxy_data_fraction * fidelity,
                    sparsity=b.proxy_sparsity,
                    early_stop_patience=b.proxy_patience,
                ),
                cache,
                progress=lambda f: rep.training(f"candidate {number}", f),
            )
            lap("training", t_train)
            acc = max(float(res.val_acc), 1e-3)
            s = cost_term(cnt.params, cnt.flops, lat.latency_ms, t_counts.params, t_counts.flops, t_lat.latency_ms)
            metrics.update(accuracy=acc, s=s, trade_score=trade_score(acc, acc_target, s), train_seconds=res.seconds)
            score = search_score(acc, acc_teacher, s, accuracy_weight)
            return Trial(number, config, OK, score, fidelity, metrics, None, time.perf_counter() - t_eval)
        except (CandidateError, Exception) as exc:  # a failing candidate never stops the search
            if isinstance(exc, KdCompileError):
                raise
            err = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            metrics["traceback"] = traceback.format_exc(limit=3)[-1000:]
            return Trial(number, config, FAILED, None, fidelity, metrics, err, time.perf_counter() - t_eval)

    # search, journaled
    strategy = create_strategy(cfg.strategy, space, seed=cfg.seed, budget=b.candidates)
    header = {
        "fingerprint": fingerprint(
            {
                "teacher": _file_id(cfg.teacher),
                "data": source.name,
                "space": cfg.space,
                "strategy": cfg.strategy,
                "seed": cfg.seed,
                "constraints": cfg.constraints.to_dict(),
                "data_free": data_free,
                "synthetic": [cfg.synthetic_images, cfg.synthetic_steps] if data_free else None,
                "augment_views": views,
                "budget": dataclasses.replace(b, time_limit_s=None).to_dict(),
                "target": target.name,
                "target_acc": cfg.target_acc,
                "version": __version__,
            }
        ),
        "config": cfg.to_dict(),
    }
    journal = Journal(out / "journal.jsonl")
    past = journal.open(header, resume=cfg.resume)
    rep.stage(f"search: {cfg.strategy}, {b.candidates} candidates")
    rep.search_started(b.candidates)
    try:
        sr = run_search(
            space, strategy, evaluate, b.candidates, journal, past, time_limit_s=b.time_limit_s, on_trial=rep.trial
        )
    finally:
        rep.search_done()
    best = sr.best()
    if best is None:
        journal.close()
        reasons = sorted({t.error or "" for t in sr.trials})[:3]
        raise SearchError(f"no candidate trained successfully ({len(sr.trials)} tried): {'; '.join(reasons)}")

    # Auto-KD: search the distiller itself for the chosen student (proxy trainings)
    distiller_report: dict[str, Any] | None = None
    choice = None
    knowledge = None
    if cfg.distiller == "auto":
        from .distill import TeacherKnowledge, search_distiller

        t0 = time.perf_counter()
        rep.stage(f"distiller search (MCTS, {cfg.distiller_iterations} iterations)")
        knowledge = TeacherKnowledge.build(tch.module, data, cache=cache, seed=cfg.seed, device=device)
        choice, distiller_report = search_distiller(
            lambda: _seeded_build(space, best.config, cfg.seed),
            data,
            tch.module,
            cache,
            iterations=cfg.distiller_iterations,
            seed=cfg.seed,
            knowledge=knowledge,
            train_cfg=train_config(best.config, b.proxy_epochs, b.proxy_data_fraction),
        )
        lap("distiller_search", t0)

    # final training of the chosen student, with KD and (for comparison) without
    def final_train(use_kd: bool) -> tuple[nn.Module, Any]:
        model = _seeded_build(space, best.config, cfg.seed)
        tcfg = train_config(best.config, b.final_epochs, 1.0, use_kd=use_kd)
        what = "final (KD)" if use_kd else "final (CE only)"
        if use_kd and choice is not None:
            from .distill import train_with_distiller

            res = train_with_distiller(
                model,
                data,
                tcfg,
                cache,
                tch.module,
                choice,
                knowledge=knowledge,
                progress=lambda f: rep.training(what, f),
            )
        else:
            res = train_student(model, data, tcfg, cache if use_kd else None, progress=lambda f: rep.training(what, f))
        return model.cpu().eval(), res

    t0 = time.perf_counter()
    res_ce = None
    workers = parallel_workers() if cfg.workers == 0 else cfg.workers
    if cfg.compare_ce and choice is None and workers > 1 and device == "cpu":
        # the KD student and its CE-only twin are independent: train them side by side
        rep.stage(f"final training with KD and without (comparison), {workers} processes")
        jobs = [
            TrainJob(
                cfg.space,
                space_kwargs(space),
                best.config,
                cfg.seed,
                train_config(best.config, b.final_epochs, 1.0, use_kd=use_kd),
                data,
                cache.train_logits if use_kd else None,
                cache.val_logits if use_kd else None,
            )
            for use_kd in (True, False)
        ]
        (sd_kd, res_kd), (_, res_ce) = run_jobs(jobs, workers)
        student = space.build(best.config)
        student.load_state_dict(sd_kd)
        student.eval()
    else:
        rep.stage("final training with KD")
        student, res_kd = final_train(True)
        if cfg.compare_ce:
            rep.stage("final training without KD (comparison)")
            _, res_ce = final_train(False)
    lap("final_training", t0)
    journal.note(
        "final", config=best.config, val_acc=res_kd.val_acc, val_acc_ce=None if res_ce is None else res_ce.val_acc
    )
    journal.close()

    # export and final measurements
    t0 = time.perf_counter()
    rep.stage("export")
    from .export import export_student

    artifacts = export_student(
        student,
        space,
        best.config,
        spec,
        out,
        meta={
            "teacher": str(cfg.teacher),
            "data": source.hint(),
            "normalize": {"mean": list(data.mean), "std": list(data.std)},
            "accuracy": res_kd.val_acc,
            "class_names": list(data.class_names),
            "target": target.name,
            "kd_compile_version": __version__,
        },
    )
    s_counts, s_lat = costs(student, spec, target)
    extra_measurements = {}
    if not target.local:
        # an honest local number too: ONNX Runtime on this machine's CPU
        try:
            from .targets import get_target as _gt

            cpu = _gt("cpu")
            extra_measurements["student_cpu"] = latency_on_target(student, spec, cpu).to_dict(layers=False)
            extra_measurements["teacher_cpu"] = latency_on_target(tch.module, spec, cpu).to_dict(layers=False)
        except KdCompileError as exc:
            rep.message(f"local CPU measurement skipped: {exc.line()}")
    lap("export", t0)

    s_acc = float(res_kd.val_acc)
    s_term = cost_term(
        s_counts.params, s_counts.flops, s_lat.latency_ms, t_counts.params, t_counts.flops, t_lat.latency_ms
    )
    from .report import build_report, pareto_front, write_report

    pareto = pareto_front(sr.trials)
    report = build_report(
        cfg=cfg,
        target=target,
        teacher=tch,
        acc_teacher=acc_teacher,
        acc_target=acc_target,
        t_counts=t_counts,
        t_lat=t_lat,
        student_config=best.config,
        student_arch=space.describe(best.config),
        s_counts=s_counts,
        s_lat=s_lat,
        s_acc=s_acc,
        s_acc_ce=None if res_ce is None else float(res_ce.val_acc),
        s_term=s_term,
        trade=trade_score(s_acc, acc_target, s_term),
        search=sr,
        best=best,
        pareto=pareto,
        artifacts=artifacts,
        timings={**timings, "total": time.perf_counter() - t_start},
        extra_measurements=extra_measurements,
        data=data,
        accuracy_weight=accuracy_weight,
        data_free=data_free,
        distiller=distiller_report,
    )
    artifacts.update(write_report(report, out))
    return CompileResult(
        student=student, config=best.config, report=report, trials=sr.trials, pareto=pareto, artifacts=artifacts
    )


def _seeded_build(space: Any, config: dict[str, Any], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return space.build(config)


def _synthesize_data(tch: Any, cfg: CompileConfig, rep: Reporter) -> Any:
    """No data and no data hint: synthesise images from the teacher (DeepInversion style)."""
    from .distill import synthesize

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in tch.module.modules()):
        raise DataError(
            "no data given and the checkpoint carries no data hint; data-free distillation needs a teacher "
            "with (eager PyTorch) BatchNorm layers, and this one has none",
            hint="pass --data glyphs|digits|path/to/data.npz|ImageFolder dir",
        )
    rep.message(
        "warning: no data given and the checkpoint carries no data hint: synthesising training images from "
        "the teacher's BatchNorm statistics (data-free KD); expect a weaker student than with real data"
    )
    norm = tch.meta.get("normalize") or {}
    return synthesize(
        tch.module,
        tuple(tch.input_shape),
        tch.num_classes,
        n_images=cfg.synthetic_images,
        steps=cfg.synthetic_steps,
        seed=cfg.seed,
        mean=norm.get("mean"),
        std=norm.get("std"),
        progress=lambda f: rep.training("data-free synthesis", f),
    )


def _file_id(path: str) -> str:
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}"
    return str(path)


def _check_feasible(space: Any, constraints: Constraints, rng: np.random.Generator, n: int = 40) -> None:
    """Fail fast when no student of the space can meet the params limit.

    The all-lowest corner of the unit cube (smallest depths, widths and expansions in the
    built-in spaces) is tried first, then ``n`` random samples.
    """
    if constraints.max_params is None or not hasattr(space, "estimate_params"):
        return
    candidates = [space.from_unit(np.zeros(space.dim))] + [space.sample(rng) for _ in range(n)]
    smallest = math.inf
    for c in candidates:
        p = space.estimate_params(c)
        smallest = min(smallest, p)
        if p <= constraints.max_params:
            return
    from .config import format_count

    raise ConstraintError(
        f"no student in the '{space.name}' space meets --max-params {format_count(constraints.max_params)} "
        f"(the smallest has {format_count(smallest)} parameters)",
        hint="raise --max-params",
    )


# ----------------------------------------------------------------------------------------------
# profile, calibrate


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
    input_shape: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """Profile a model on a target: params, FLOPs and latency (measured or predicted).

    Args:
        model: a checkpoint path kd-compile can load, ``timm:<name>`` or an ``nn.Module``.
        target: a target name or TOML path.
        runtime: tensorrt | torch | onnxruntime (default: the target's).
        precision: fp32 | fp16 | int8 (default: the target's).
        batch: batch size.
        image_size: override the input resolution (square).
        method: predict | measure (default: measure when the target is this machine).
        layers: include the per-layer breakdown.
    """
    from .profilers.base import create_profiler
    from .teacher import load_teacher

    tgt = get_target(target)
    if batch < 1:
        raise UsageError("--batch must be at least 1")
    if isinstance(model, nn.Module):
        module = model.eval()
        shape = input_shape or (3, image_size or 224, image_size or 224)
    else:
        shape_opt = input_shape
        if image_size is not None and shape_opt is None and str(model).startswith("timm:"):
            shape_opt = (3, image_size, image_size)
        tch = load_teacher(str(model), trust_checkpoint=trust_checkpoint, input_shape=shape_opt)
        module = tch.module
        shape = tch.input_shape
        if image_size is not None:
            shape = (shape[0], image_size, image_size)
    spec = InputSpec(tuple(shape), batch=batch)
    runtime = runtime or tgt.default_runtime
    precision = precision or tgt.default_precision
    if method is None:
        method = "measure" if tgt.local else "predict"
    if method not in ("measure", "predict"):
        raise UsageError(f"--method must be predict or measure, got '{method}'")
    from .profilers.counting import count

    counts = count(module, spec.with_batch(1))
    if method == "predict":
        with create_profiler("roofline", target=tgt, precision=precision, runtime=runtime) as p:
            m = p.profile(module, spec)
    else:
        if not tgt.local and runtime != "tensorrt" and not (runtime == "torch" and torch.cuda.is_available()):
            raise UsageError(
                f"cannot measure on '{tgt.name}' from this machine", hint="use --method predict, or run on that device"
            )
        name = {"onnxruntime": "onnxruntime", "torch": "torch", "tensorrt": "tensorrt"}.get(runtime)
        if name is None:
            raise UsageError(f"unknown runtime '{runtime}' (tensorrt, torch, onnxruntime)")
        opts: dict[str, Any] = {"precision": precision} if name != "onnxruntime" else {}
        with create_profiler(name, **opts) as p:
            m = p.profile(module, spec)
    d = m.to_dict(layers=layers)
    d.update(
        model=str(model) if not isinstance(model, nn.Module) else type(model).__name__,
        target=tgt.name,
        input_shape=list(shape),
        params=counts.params,
        flops=counts.flops,
        flops_per_batch=counts.flops * batch if counts.flops else None,
    )
    return d


def calibrate(**kwargs: Any) -> dict[str, Any]:
    """Fit the roofline predictor's efficiency factors from measured tables (see ``calibrate.py``)."""
    from .calibrate import calibrate as _calibrate

    return _calibrate(**kwargs)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


__all__ = ["CompileResult", "Reporter", "calibrate", "compile", "profile"]
