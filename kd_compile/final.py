"""After the search: the distiller search (``--distiller auto``) and the final training of the
chosen student with KD and, with ``--compare-ce``, without (side by side in two processes on CPU).

The two are the same architecture from the same seed; the one with the higher validation accuracy
ships (the KD student on a tie): KD that did not help this student on this data does not cost the
user accuracy. The final students are scored once on the data's held-out test split
(``held_out_accuracy``), which no choice before has seen; their validation accuracy is kept beside it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .config import CompileConfig
from .evaluate import RunContext, student_family, train_config
from .search.space import Config

__all__ = ["FinalResult", "TrainJob", "held_out_accuracy", "run_train_job", "search_distiller_for", "train_final"]


@dataclass
class TrainJob:
    """One final training, as plain data so it can cross a process boundary.

    Attributes:
        run: the run's shared context (space, data, teacher knowledge, settings).
        config: the student's config.
        use_kd: distil from the teacher's cached outputs (else cross-entropy only).
        threads: torch threads in a worker process.
    """

    run: RunContext
    config: Config
    use_kd: bool
    threads: int | None = None


def run_train_job(job: TrainJob) -> tuple[dict[str, torch.Tensor], Any]:
    """Build the student, train it for the final epochs, return (state_dict, TrainResult)."""
    from .distill import train_student

    if job.threads:
        torch.set_num_threads(job.threads)
    run = job.run
    model = _seeded_build(run, job.config)
    tcfg = train_config(run, job.config, run.budget.final_epochs, 1.0, use_kd=job.use_kd)
    res = train_student(model, run.data, tcfg, run.knowledge if job.use_kd else None)
    return {k: v.contiguous() for k, v in model.state_dict().items()}, res


@dataclass
class FinalResult:
    """The trained students and their results (``ce`` and ``twin`` are None without ``--compare-ce``).

    ``student`` is the KD student, ``twin`` its CE-only twin (same architecture, same seed).
    ``test_acc``/``test_acc_ce``: their accuracy on the test split, measured once after training;
    ``None`` where the data has no test split (data-free). Which of the two ships is chosen on
    validation accuracy alone (:attr:`shipped`).
    """

    student: nn.Module
    kd: Any
    ce: Any | None
    seconds: float
    test_acc: float | None = None
    test_acc_ce: float | None = None
    twin: nn.Module | None = None

    @property
    def shipped(self) -> str:
        """``"ce"`` when the CE-only twin scored strictly higher on validation than the KD
        student (then it is the better student, and it ships), else ``"kd"``."""
        if self.twin is None or self.ce is None:
            return "kd"
        return "ce" if float(self.ce.val_acc) > float(self.kd.val_acc) else "kd"

    @property
    def shipped_student(self) -> nn.Module:
        return self.twin if self.shipped == "ce" and self.twin is not None else self.student

    @property
    def shipped_val_acc(self) -> float:
        """The shipped student's validation accuracy."""
        return float((self.ce if self.shipped == "ce" else self.kd).val_acc)

    @property
    def shipped_test_acc(self) -> float | None:
        """The shipped student's test accuracy (None without a test split)."""
        return self.test_acc_ce if self.shipped == "ce" else self.test_acc


def held_out_accuracy(model: nn.Module, data: Any, device: str | None = None) -> float | None:
    """Top-1 accuracy of ``model`` on ``data``'s held-out test split; ``None`` when it has none.

    Called once per model at the end of a run (teacher, final students): nothing is chosen on it.
    Runs where the model is (``device`` overrides).
    """
    from .data.stream import is_streamed
    from .distill import evaluate

    if not getattr(data, "has_test", False):
        return None
    if is_streamed(data):  # a streamed folder: read through its DataLoader
        from .distill.topk_cache import streamed_accuracy

        dev = device or next((p.device for p in model.parameters()), "cpu")
        return float(streamed_accuracy(model, data, "test", device=dev))
    x, y = data.test_tensors()
    return float(evaluate(model, x, y, device=device))


def search_distiller_for(
    cfg: CompileConfig, run: RunContext, config: Config, teacher: nn.Module, reporter: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """Auto-KD: MCTS over distiller designs for the chosen student (proxy trainings).

    Returns:
        (the chosen distiller, the teacher knowledge it needs, the search's report).
    """
    from .distill import TeacherKnowledge, search_distiller

    reporter.stage(f"distiller search (MCTS, {cfg.distiller_iterations} iterations)")
    knowledge = TeacherKnowledge.build(teacher, run.data, cache=run.knowledge, seed=cfg.seed, device=cfg.device)
    choice, report = search_distiller(
        lambda: _seeded_build(run, config),
        run.data,
        teacher,
        run.knowledge,
        iterations=cfg.distiller_iterations,
        seed=cfg.seed,
        knowledge=knowledge,
        train_cfg=train_config(run, config, cfg.budget.proxy_epochs, cfg.budget.proxy_data_fraction),
    )
    return choice, knowledge, report


def train_final(
    cfg: CompileConfig,
    run: RunContext,
    config: Config,
    reporter: Any,
    *,
    workers: int,
    teacher: nn.Module | None = None,
    distiller: tuple[Any, Any] | None = None,
) -> FinalResult:
    """Train the chosen student for ``--final-epochs`` with KD (or the distiller found) and, with
    ``compare_ce``, its cross-entropy-only twin; the two run as two processes when they can."""
    from .executors import run_jobs

    t0 = time.perf_counter()
    if cfg.compare_ce and distiller is None and workers > 1 and cfg.device == "cpu":
        # the KD student and its CE-only twin are independent: train them side by side
        reporter.stage(f"final training with KD and without (comparison), {workers} processes")
        jobs = [TrainJob(run, config, use_kd) for use_kd in (True, False)]
        (sd_kd, res_kd), (sd_ce, res_ce) = run_jobs(run_train_job, jobs, workers)
        student, twin = student_family(run).build(config), student_family(run).build(config)
        student.load_state_dict(sd_kd)
        twin.load_state_dict(sd_ce)
        return FinalResult(
            student.eval(), res_kd, res_ce, time.perf_counter() - t0,
            held_out_accuracy(student, run.data), held_out_accuracy(twin, run.data), twin.eval(),
        )  # fmt: skip
    reporter.stage("final training with KD")
    student, res_kd = _train_inline(run, config, True, reporter, teacher, distiller)
    twin, res_ce, acc_ce = None, None, None
    if cfg.compare_ce:
        reporter.stage("final training without KD (comparison)")
        twin, res_ce = _train_inline(run, config, False, reporter, teacher, None)
        acc_ce = held_out_accuracy(twin, run.data)
    acc = held_out_accuracy(student, run.data)
    return FinalResult(student, res_kd, res_ce, time.perf_counter() - t0, acc, acc_ce, twin)


def _train_inline(
    run: RunContext,
    config: Config,
    use_kd: bool,
    reporter: Any,
    teacher: nn.Module | None,
    distiller: tuple[Any, Any] | None,
) -> tuple[nn.Module, Any]:
    from .distill import train_student, train_with_distiller

    model = _seeded_build(run, config)
    tcfg = train_config(run, config, run.budget.final_epochs, 1.0, use_kd=use_kd)
    what = "final (KD)" if use_kd else "final (CE only)"
    progress = lambda f: reporter.training(what, f)  # noqa: E731
    if use_kd and distiller is not None:
        choice, knowledge = distiller
        res = train_with_distiller(
            model, run.data, tcfg, run.knowledge, teacher, choice, knowledge=knowledge, progress=progress
        )
    else:
        res = train_student(model, run.data, tcfg, run.knowledge if use_kd else None, progress=progress)
    return model.cpu().eval(), res


def _seeded_build(run: RunContext, config: Config) -> nn.Module:
    torch.manual_seed(run.seed)
    return student_family(run).build(config)
