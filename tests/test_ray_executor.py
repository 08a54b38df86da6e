"""Candidates as Ray tasks (``--executor ray``) on a local Ray cluster of two workers.

A fixed batch size gives the journal the local executor gives; the run's shared context goes to
the object store once; a worker killed mid-trial gets its trial retried once, and a trial whose
worker dies twice is recorded as failed with the reason, nothing lost; a cluster address that
does not answer, or Ray missing, is a one-line error with its exit code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from test_e2e import SMALL
from typer.testing import CliRunner

import kd_compile
from kd_compile.config import Budget, Constraints
from kd_compile.data import load_data
from kd_compile.distill import TeacherCache
from kd_compile.errors import BackendUnavailableError, UsageError
from kd_compile.evaluate import (
    Reference,
    RunContext,
    candidate_checkpoint,
    checkpoint_folder,
    evaluate_candidate,
    searched_space,
    share_candidate_checkpoints,
    student_family,
)
from kd_compile.executors import RayExecutor, check_executor
from kd_compile.export import space_kwargs
from kd_compile.latency import plan_latency
from kd_compile.search import Journal, create_strategy, run_search
from kd_compile.search.loop import Job
from kd_compile.search.trial import TrialStatus
from kd_compile.students import create_space
from kd_compile.targets import get_target
from kd_compile.testing.strategies import ToySpace, toy_evaluate

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

DEAD_ADDRESS = "127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with two CPUs: two candidates at once."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running one
    # this module's candidate functions travel by value: workers need not import the test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def run_ctx() -> RunContext:
    """A real run context: a small CNN family on 8-px digits, random teacher logits."""
    data = load_data("digits", image_size=8)
    family = create_space("cnn", input_shape=data.input_shape, num_classes=data.num_classes, max_depth=2)
    g = torch.Generator().manual_seed(0)
    k = data.num_classes
    knowledge = TeacherCache.from_logits(
        torch.randn(len(data.y_train), k, generator=g), torch.randn(len(data.y_val), k, generator=g), data.y_val
    )
    target = get_target("2080ti")
    return RunContext(
        space="cnn",
        space_kwargs=space_kwargs(family),
        target=target,
        constraints=Constraints(max_latency=None),
        budget=Budget(proxy_epochs=0.3, proxy_data_fraction=0.5),
        seed=0,
        device="cpu",
        batch_size=64,
        augment_views=0,
        reference=Reference(params=1e4, flops=1e6, latency_ms=0.1, accuracy=0.9, acc_target=0.9),
        latency=plan_latency(target),
        data=data,
        knowledge=knowledge,
    )


def _search(path: Path, space, evaluate, budget: int, batch_size: int, strategy: str = "evolution", **kw):
    journal = Journal(path)
    journal.open({"fingerprint": "x"}, resume=False)
    try:
        strat = create_strategy(strategy, space, seed=0, budget=budget)
        return run_search(space, strat, evaluate, budget, journal, batch_size=batch_size, **kw)
    finally:
        journal.close()


def _journal(path: Path) -> tuple[dict[int, dict], list[list[int]]]:
    recs = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return {r["trial"]["number"]: r["trial"] for r in recs if r["type"] == "trial"}, [
        r["numbers"] for r in recs if r["type"] == "told"
    ]


def test_a_fixed_batch_gives_the_local_executors_journal(cluster, run_ctx, tmp_path, monkeypatch):
    space = searched_space(student_family(run_ctx))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task runs (one CPU per trial): the same arithmetic
    try:
        local = _search(
            tmp_path / "local.jsonl", space, lambda c, f, n: evaluate_candidate(run_ctx, c, f, n), 6, batch_size=2
        )
    finally:
        torch.set_num_threads(threads)
    puts: list[object] = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda obj, **kw: puts.append(obj) or real_put(obj, **kw))
    with RayExecutor(cpus_per_trial=1) as ex:  # joins the running cluster; two CPUs: two workers
        assert ex.workers == 2
        remote = _search(tmp_path / "ray.jsonl", space, None, 6, **ex.search_options(evaluate_candidate, run_ctx))
    assert puts == [run_ctx] and ex.puts == 1  # the context went to the object store once, for every task
    assert ray.is_initialized()  # the executor leaves a Ray it did not start running

    (lt, lrounds), (rt, rrounds) = _journal(tmp_path / "local.jsonl"), _journal(tmp_path / "ray.jsonl")
    assert lrounds == rrounds and all(len(r) == 2 for r in lrounds)
    assert sorted(lt) == sorted(rt) == list(range(len(local.trials))) and len(remote.trials) == len(local.trials)
    for n in lt:
        a, b = lt[n], rt[n]
        assert (a["config"], a["status"], a["fidelity"]) == (b["config"], b["status"], b["fidelity"])
        for key in ("accuracy", "params", "flops", "latency_ms"):
            assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-4)
        assert b["score"] == pytest.approx(a["score"], rel=1e-4)


def _dying_candidate(shared: dict, config: dict, fidelity: float, number: int):
    """A toy candidate whose worker process dies mid-trial: trial ``once`` on its first attempt,
    trial ``always`` on every attempt. Attempts are counted in files (workers are processes)."""
    attempts = Path(shared["dir"]) / f"attempts-{number}"
    with attempts.open("a") as fh:
        fh.write("attempt\n")
    if number == shared["always"] or (number == shared["once"] and len(attempts.read_text().splitlines()) == 1):
        time.sleep(0.2)
        os._exit(1)
    return toy_evaluate(ToySpace())(config, fidelity, number)


def test_a_killed_worker_is_retried_once_then_its_trial_fails(cluster, tmp_path):
    shared = {"dir": str(tmp_path), "once": 1, "always": 2}
    with RayExecutor(workers=2) as ex:
        res = _search(
            tmp_path / "j.jsonl", ToySpace(), None, 4, strategy="random",
            **ex.search_options(_dying_candidate, shared),
        )  # fmt: skip
    trials, rounds = _journal(tmp_path / "j.jsonl")
    numbers = list(range(len(trials)))
    assert sorted(trials) == numbers == sorted(t.number for t in res.trials) and len(numbers) >= 4  # nothing lost
    assert sorted(n for r in rounds for n in r) == numbers and rounds[:2] == [[0, 1], [2, 3]]
    attempts = {n: len((tmp_path / f"attempts-{n}").read_text().splitlines()) for n in trials}
    assert attempts == {n: 2 if n in (1, 2) else 1 for n in numbers}
    assert trials[1]["status"] != "failed"  # the retry finished it
    assert trials[2]["status"] == "failed" and "worker died twice" in trials[2]["error"]


def _toy_candidate(shared: object, config: dict, fidelity: float, number: int):
    return toy_evaluate(ToySpace())(config, fidelity, number)


class DriverKilled(BaseException):
    """The driver stopping in the middle of a batch."""


def test_a_driver_killed_mid_batch_resumes_on_ray(cluster, tmp_path):
    local = tmp_path / "local.jsonl"
    _search(local, ToySpace(), toy_evaluate(ToySpace()), 6, batch_size=2)
    path, arrived = tmp_path / "j.jsonl", []
    with RayExecutor(workers=2) as ex:

        def dies_after_three(jobs):
            for trial in ex.evaluate_batch(_toy_candidate, None, jobs):
                if len(arrived) == 3:
                    raise DriverKilled
                arrived.append(trial.number)
                yield trial

        with pytest.raises(DriverKilled):
            _search(path, ToySpace(), None, 6, batch_size=2, evaluate_batch=dies_after_three)
        journal = Journal(path)
        past = journal.open({"fingerprint": "x"}, resume=True)
        try:
            strat = create_strategy("evolution", ToySpace(), seed=0, budget=6)
            opts = ex.search_options(_toy_candidate, None)
            res = run_search(ToySpace(), strat, None, 6, journal, past, **opts)
        finally:
            journal.close()
    assert len(past) == 3 and res.resumed == 3
    got, want = _journal(path), _journal(local)
    for trials in (got[0], want[0]):
        for t in trials.values():
            t.pop("duration_s")
    assert got == want  # same trials under the same numbers, same rounds: nothing lost or redone


def _dies_after_an_epoch(shared: tuple, config: dict, fidelity: float, number: int):
    """``evaluate_candidate`` in a worker that dies, on the first attempt, as soon as the
    candidate's first epoch checkpoint is kept (attempts counted in a file: workers are processes)."""
    run, attempts = shared
    with open(attempts, "a") as fh:
        fh.write("attempt\n")
    first = len(Path(attempts).read_text().splitlines()) == 1
    path = Path(candidate_checkpoint(checkpoint_folder(run), number, config, fidelity))

    def progress(share: float) -> None:
        if first and path.is_file():
            os._exit(1)

    return evaluate_candidate(run, config, fidelity, number, progress)


def test_a_worker_dying_mid_candidate_goes_on_from_its_epoch_checkpoint(cluster, run_ctx, tmp_path):
    """Where the task's machine sees the driver's checkpoint folder (here the same machine; a
    shared file system on a cluster), Ray's retry of a candidate whose worker died resumes its
    proxy training at the epoch it had kept, and scores as an uninterrupted training does."""
    run = dataclasses.replace(run_ctx, budget=Budget(proxy_epochs=3, proxy_data_fraction=0.5))
    config = searched_space(student_family(run)).default()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray task runs
    try:
        whole = evaluate_candidate(run, config, 1.0, 0)
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path / "ckpts"
    shared = dataclasses.replace(run, checkpoints=str(folder), checkpoints_token=share_candidate_checkpoints(folder))
    with RayExecutor(workers=1) as ex:
        (trial,) = ex.evaluate_batch(_dies_after_an_epoch, (shared, str(tmp_path / "attempts")), [Job(config, 1.0, 0)])
    assert len((tmp_path / "attempts").read_text().splitlines()) == 2  # died once, retried once
    assert trial.status is TrialStatus.OK and trial.metrics["resumed_at_epoch"] == 1.0
    assert trial.score == pytest.approx(whole.score, rel=1e-5)
    assert trial.metrics["accuracy"] == pytest.approx(whole.metrics["accuracy"], abs=1e-6)


def test_tasks_get_the_drivers_checkpoint_folder_by_absolute_path_with_its_token(run_ctx, tmp_path, monkeypatch):
    from kd_compile.api import _for_workers
    from kd_compile.config import CompileConfig

    monkeypatch.chdir(tmp_path)  # --out given relative: a task's working folder is not the driver's
    cfg = CompileConfig.from_options("teacher.pt", executor="ray")
    ctx = _for_workers(cfg, dataclasses.replace(run_ctx, checkpoints="out/candidate-checkpoints"))
    assert ctx.checkpoints == str(tmp_path / "out" / "candidate-checkpoints") and ctx.checkpoints_token
    assert checkpoint_folder(ctx) == ctx.checkpoints  # this machine sees it
    assert _for_workers(cfg, run_ctx).checkpoints is None  # a run that keeps none gives its tasks none
    (tmp_path / "full").write_text("")  # the token cannot be written (here: a file in the way)
    blocked = _for_workers(cfg, dataclasses.replace(run_ctx, checkpoints="full/candidate-checkpoints"))
    assert blocked.checkpoints is None and checkpoint_folder(blocked) is None


class _KillAfterFirstTrial(kd_compile.api.Reporter):
    def trial(self, trial):  # noqa: ANN001
        raise KeyboardInterrupt  # the driver is killed once the first result is journaled


class _Messages(kd_compile.api.Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.slow
def test_compile_runs_its_candidates_on_ray_and_resumes_after_a_kill(cluster, digits_teacher, tmp_path, monkeypatch):
    """The driver killed once the first result is journaled; the resumed run takes that result and
    evaluates the other candidate, here on tasks that do not see ``--out`` (the driver's token
    never reaches the folder they read, as on machines without shared storage): that candidate
    keeps no epoch checkpoints, and the run says so once."""
    import kd_compile.evaluate as evaluate

    out = tmp_path / "out"
    opts = {**SMALL, "budget": 2, "compare_ce": False, "executor": "ray", "parallel_trials": 2}
    with pytest.raises(KeyboardInterrupt):
        kd_compile.compile(str(digits_teacher), out=out, reporter=_KillAfterFirstTrial(), **opts)
    assert len(_journal(out / "journal.jsonl")[0]) == 1  # one result in, the round unfinished
    monkeypatch.setattr(evaluate, "share_candidate_checkpoints", lambda folder: "written-elsewhere")
    rep = _Messages()
    res = kd_compile.compile(str(digits_teacher), out=out, resume=True, reporter=rep, **opts)
    assert res.report["search"]["resumed"] == 1 and len(res.trials) == 2 and (out / "student.onnx").is_file()
    trials, rounds = _journal(out / "journal.jsonl")
    assert sorted(trials) == [0, 1] and rounds == [[0, 1]]  # both candidates in one batch of two, none redone
    seen = [n for n, t in trials.items() if not t["metrics"].get("checkpoints_unseen")]
    assert len(seen) == 1  # the first run's task saw the driver's --out (one machine); the resumed one's did not
    said = [line for line in rep.lines if "does not see" in line]
    assert len(said) == 1 and "keep no epoch checkpoints" in said[0] and str(out) in said[0], rep.lines
    assert not (out / "candidate-checkpoints").exists()


def test_a_cluster_that_does_not_answer_is_one_line_exit_8(digits_teacher, tmp_path):
    from kd_compile.cli import app

    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailableError, match="does not answer"):
        RayExecutor(DEAD_ADDRESS, connect_timeout_s=2).start()
    res = CliRunner().invoke(
        app,
        ["compile", str(digits_teacher), "--executor", "ray", "--ray-address", DEAD_ADDRESS, "--out", str(tmp_path)],
    )
    assert time.perf_counter() - t0 < 30
    assert res.exit_code == BackendUnavailableError.exit_code == 8
    errors = [line for line in res.output.strip().splitlines() if line.startswith("kd-compile: error:")]
    assert len(errors) == 1 and DEAD_ADDRESS in errors[0] and "Traceback" not in res.output


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError) as err:
        check_executor("ray", None)
    assert err.value.exit_code == 2 and "kd-compile[ray]" in err.value.line() and "\n" not in err.value.line()
