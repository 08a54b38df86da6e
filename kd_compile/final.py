"""After the search: the distiller search (``--distiller auto``) and the final training of the
chosen student with KD and, with ``--compare-ce``, without (side by side in two processes on CPU).

The two are the same architecture from the same seed; the one with the higher validation accuracy
ships (the KD student on a tie): KD that did not help this student on this data does not cost the
user accuracy. The final students are scored once on the data's held-out test split
(``held_out_accuracy``), which no choice before has seen; their validation accuracy is kept beside it.

The trained students are kept in the output folder (:data:`FINAL_WEIGHTS`, its sha256 in the
journal's ``final`` record) until the run is published, so a run that fails or is killed after the
final training (export, report, a full disk) resumes without training them again
(:func:`keep_final`, :func:`restored_final`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import CompileConfig
from .evaluate import RunContext, student_family, train_config
from .profilers.onnx_export import file_sha256
from .search.space import Config

__all__ = [
    "FINAL_WEIGHTS",
    "FinalResult",
    "TrainJob",
    "clear_epoch_checkpoints",
    "epoch_checkpoint",
    "held_out_accuracy",
    "journaled_distillers",
    "keep_final",
    "kept_distiller",
    "restored_final",
    "run_train_job",
    "say_resumed",
    "search_distiller_for",
    "train_final",
]

FINAL_WEIGHTS = "final-students.pt"  # in --out, between the final training and the publication


def epoch_checkpoint(out: Path | None, use_kd: bool) -> str | None:
    """Where a final training keeps its state at each epoch's end, in ``out`` (None: nowhere),
    until the journal records the training (then ``clear_epoch_checkpoints``)."""
    return None if out is None else str(out / f"final-training-{'kd' if use_kd else 'ce'}.ckpt")


def clear_epoch_checkpoints(out: Path, *, kept_students: bool = False) -> None:
    """Remove the final trainings' epoch checkpoints from ``out`` (and, with ``kept_students``,
    the kept final students), with any temporary file a killed write of them left."""
    from .distill.checkpoint import remove_saved

    names = [Path(str(epoch_checkpoint(out, use_kd))).name for use_kd in (True, False)]
    if kept_students:
        names.append(FINAL_WEIGHTS)
    for name in names:
        remove_saved(out / name)


@dataclass
class TrainJob:
    """One final training, as plain data so it can cross a process boundary.

    Attributes:
        run: the run's shared context (space, data, teacher knowledge, settings).
        config: the student's config.
        use_kd: distil from the teacher's cached outputs (else cross-entropy only).
        threads: torch threads in a worker process.
        checkpoint: where the training keeps its state at each epoch's end (``TrainConfig``).
    """

    run: RunContext
    config: Config
    use_kd: bool
    threads: int | None = None
    checkpoint: str | None = None


def run_train_job(job: TrainJob) -> tuple[dict[str, torch.Tensor], Any]:
    """Build the student, train it for the final epochs, return (state_dict, TrainResult)."""
    from .distill import train_student

    if job.threads:
        torch.set_num_threads(job.threads)
    run = job.run
    model = _seeded_build(run, job.config)
    tcfg = train_config(run, job.config, run.budget.final_epochs, 1.0, use_kd=job.use_kd, checkpoint=job.checkpoint)
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


def kept_distiller(record: dict[str, Any] | None, config: Config, iterations: int) -> tuple[Any, dict[str, Any]] | None:
    """The distiller an interrupted run's search found, from its journal's ``distiller`` record,
    when the record is for ``config`` (the student the replayed search chose) and a search of
    ``iterations``: (the choice, the search's report); None otherwise (the search runs again)."""
    from .distill import DistillerChoice

    if not _same_search(record, config, iterations):
        return None
    report = record.get("report")
    try:
        return DistillerChoice.from_dict(report["best"]), report  # type: ignore[index]
    except Exception:  # noqa: BLE001 (a record that does not read back: search again)
        return None


def journaled_distillers(
    notes: list[dict[str, Any]], config: Config, iterations: int
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The distillers an interrupted run's search trained for ``config`` (a search of
    ``iterations``), from its journal's ``distiller_eval`` records: ``choice.key`` -> details."""
    return {
        tuple(r["key"]): dict(r["details"])
        for r in notes
        if r.get("type") == "distiller_eval" and _same_search(r, config, iterations)
        and isinstance(r.get("key"), list) and isinstance(r.get("details"), dict) and "reward" in r["details"]
    }


def _same_search(record: dict[str, Any] | None, config: Config, iterations: int) -> bool:
    """A journaled distiller-search record is of the search for ``config`` of ``iterations``."""
    if not record:
        return False
    return record.get("config") == config and record.get("iterations") == iterations


def search_distiller_for(
    cfg: CompileConfig, run: RunContext, config: Config, teacher: nn.Module, reporter: Any,
    kept: tuple[Any, dict[str, Any]] | None = None, known: Mapping[tuple[Any, ...], dict[str, Any]] | None = None,
    on_evaluated: Callable[[Any, dict[str, Any]], None] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:  # fmt: skip
    """Auto-KD: MCTS over distiller designs for the chosen student (proxy trainings); with
    ``kept`` (``kept_distiller``), the choice an interrupted run's search made, not searched again;
    ``known`` and ``on_evaluated``: ``search_distiller``'s (the evaluations an interrupted search
    journaled, and the journaling of each new one).

    Returns:
        (the chosen distiller, the teacher knowledge it needs, the search's report).
    """
    from .distill import TeacherKnowledge, search_distiller

    if kept is None:
        reporter.stage(f"distiller search (MCTS, {cfg.distiller_iterations} iterations)")
    knowledge = TeacherKnowledge.build(teacher, run.data, cache=run.knowledge, seed=cfg.seed, device=cfg.device)
    if kept is not None:
        return kept[0], knowledge, kept[1]
    choice, report = search_distiller(
        lambda: _seeded_build(run, config),
        run.data,
        teacher,
        run.knowledge,
        iterations=cfg.distiller_iterations,
        seed=cfg.seed,
        knowledge=knowledge,
        train_cfg=train_config(run, config, cfg.budget.proxy_epochs, cfg.budget.proxy_data_fraction),
        known=known,
        on_evaluated=on_evaluated,
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
    checkpoints: Path | None = None,
) -> FinalResult:
    """Train the chosen student for ``--final-epochs`` with KD (or the distiller found) and, with
    ``compare_ce``, its cross-entropy-only twin; the two run as two processes when they can.
    With ``checkpoints`` (a folder), each training keeps its state there at each epoch's end and
    resumes from it (``epoch_checkpoint``)."""
    from .executors import run_jobs

    t0 = time.perf_counter()
    if cfg.compare_ce and distiller is None and workers > 1 and cfg.device == "cpu":
        # the KD student and its CE-only twin are independent: train them side by side
        reporter.stage(f"final training with KD and without (comparison), {workers} processes")
        jobs = [TrainJob(run, config, kd, checkpoint=epoch_checkpoint(checkpoints, kd)) for kd in (True, False)]
        (sd_kd, res_kd), (sd_ce, res_ce) = run_jobs(run_train_job, jobs, workers)
        _say_resumed(reporter, "final training with KD", res_kd)
        _say_resumed(reporter, "final training without KD", res_ce)
        student, twin = student_family(run).build(config), student_family(run).build(config)
        student.load_state_dict(sd_kd)
        twin.load_state_dict(sd_ce)
        return FinalResult(
            student.eval(), res_kd, res_ce, time.perf_counter() - t0,
            held_out_accuracy(student, run.data), held_out_accuracy(twin, run.data), twin.eval(),
        )  # fmt: skip
    reporter.stage("final training with KD")
    student, res_kd = _train_inline(run, config, True, reporter, teacher, distiller, checkpoints)
    _say_resumed(reporter, "final training with KD", res_kd)
    twin, res_ce, acc_ce = None, None, None
    if cfg.compare_ce:
        reporter.stage("final training without KD (comparison)")
        twin, res_ce = _train_inline(run, config, False, reporter, teacher, None, checkpoints)
        _say_resumed(reporter, "final training without KD", res_ce)
        acc_ce = held_out_accuracy(twin, run.data)
    acc = held_out_accuracy(student, run.data)
    return FinalResult(student, res_kd, res_ce, time.perf_counter() - t0, acc, acc_ce, twin)


def _say_resumed(reporter: Any, what: str, res: Any) -> None:
    say_resumed(reporter, what, res.resumed_at, res.checkpoint_error)


def say_resumed(reporter: Any, what: str, resumed_at: float | None, checkpoint_error: str | None) -> None:
    """Tell the user that training ``what`` resumed from its epoch checkpoint, or could not keep one."""
    if resumed_at:
        reporter.message(f"{what}: resumed at epoch {resumed_at:g} from its epoch checkpoint")
    if checkpoint_error:
        reporter.message(f"warning: {what}: its epoch checkpoints stopped being written ({checkpoint_error})")


def _train_inline(
    run: RunContext,
    config: Config,
    use_kd: bool,
    reporter: Any,
    teacher: nn.Module | None,
    distiller: tuple[Any, Any] | None,
    checkpoints: Path | None = None,
) -> tuple[nn.Module, Any]:
    from .distill import train_student, train_with_distiller

    model = _seeded_build(run, config)
    ckpt = epoch_checkpoint(checkpoints, use_kd)
    tcfg = train_config(run, config, run.budget.final_epochs, 1.0, use_kd=use_kd, checkpoint=ckpt)
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


def keep_final(out: Path, final: FinalResult) -> dict[str, Any] | str:
    """Write the final students' weights to ``out/FINAL_WEIGHTS`` (atomically, fsynced).

    Returns:
        the fields the journal's ``final`` record carries so :func:`restored_final` can rebuild
        ``final`` (the file's sha256, the training results), or, when the file cannot be written
        (a full disk, a read-only folder), why: the run goes on without this safety net.
    """
    from .distill.checkpoint import save_atomically

    blob = {"kd": final.student.state_dict(), "ce": None if final.twin is None else final.twin.state_dict()}
    why = save_atomically(blob, out / FINAL_WEIGHTS)
    if why is not None:
        return why
    try:
        digest = file_sha256(out / FINAL_WEIGHTS)
    except OSError as exc:
        return exc.strerror or str(exc)
    return {
        "weights": FINAL_WEIGHTS,
        "weights_sha256": digest,
        "kd_result": final.kd.to_dict(),
        "ce_result": None if final.ce is None else final.ce.to_dict(),
        "final_seconds": final.seconds,
    }


def restored_final(
    out: Path, record: dict[str, Any], config: Config, run: RunContext
) -> tuple[FinalResult | None, str]:
    """The final students an interrupted run trained and kept, from its journal's ``final``
    ``record`` and ``out/FINAL_WEIGHTS``, when both are there, intact, and for ``config`` (the
    student the replayed search chose).

    Returns:
        (the result, "") or (None, why the students are trained again).
    """
    from .distill import TrainResult

    if "weights_sha256" not in record:
        return None, "the interrupted run kept no weights of them"
    if record.get("config") != config:
        return None, "the replayed search chose another student"
    path = out / str(record.get("weights", FINAL_WEIGHTS))
    if path.name != FINAL_WEIGHTS or not path.is_file():
        return None, f"{FINAL_WEIGHTS} is missing from {out}"
    if file_sha256(path) != record["weights_sha256"]:
        return None, f"{path} does not match the journal (changed or damaged)"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        kd = TrainResult(**record["kd_result"])
        ce = None if record.get("ce_result") is None else TrainResult(**record["ce_result"])
        student = student_family(run).build(config)
        student.load_state_dict(blob["kd"])
        twin = None
        if blob.get("ce") is not None:
            twin = student_family(run).build(config)
            twin.load_state_dict(blob["ce"])
    except Exception as exc:  # noqa: BLE001 (any unreadable file means: train again)
        return None, f"{path} cannot be read back ({type(exc).__name__})"
    if (twin is None) != (ce is None):
        return None, f"{path} does not hold the students the journal names"
    result = FinalResult(
        student.eval(), kd, ce, 0.0, record.get("test_acc"), record.get("test_acc_ce"),
        None if twin is None else twin.eval(),
    )  # fmt: skip
    return result, ""
