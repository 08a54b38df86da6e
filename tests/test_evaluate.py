"""Candidate evaluation (``kd_compile.evaluate``): the failure policy, with real faults.

A test-only student family builds students that break in a chosen way — a NaN loss, an ONNX
export the exporter refuses, an out-of-memory error in training, a model the counting profiler
cannot run, a user error raised by a plugin — and every one must come back as a ``failed``
trial with its reason, never as an exception that stops the search. An interrupt still stops it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kd_compile.config import Budget, Constraints
from kd_compile.data import load_data
from kd_compile.distill import TeacherCache
from kd_compile.errors import UsageError
from kd_compile.evaluate import Reference, RunContext, evaluate_candidate
from kd_compile.latency import plan_latency
from kd_compile.search.space import Param
from kd_compile.search.trial import TrialStatus
from kd_compile.students.base import StudentSpace
from kd_compile.targets import get_target

FAULTS = ("none", "nan", "export", "oom", "profile", "usage", "interrupt", "class0")


class _Faulty(nn.Module):
    def __init__(self, fault: str, in_chs: int, num_classes: int) -> None:
        super().__init__()
        self.fault = fault
        self.conv = nn.Conv2d(in_chs, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        if self.fault == "nan":
            h = h * float("nan")
        if self.fault == "export":  # an op the ONNX exporter does not support
            h = h + torch.linalg.svdvals(h.reshape(h.shape[0], 2, 4)).sum(1, keepdim=True)
        if self.fault == "oom" and self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if self.fault == "profile" and not self.training:
            raise RuntimeError("cannot run this model in inference")
        if self.fault == "interrupt" and self.training:
            raise KeyboardInterrupt
        if self.fault == "class0" and not self.training:  # answers class 0 whatever it sees
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), self.fc.out_features).float()
        return self.fc(h)


class FaultySpace(StudentSpace):
    """One parameter: which fault the student has."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__(input_shape, num_classes, [Param("fault", "cat", choices=FAULTS, default="none")], "faulty")

    def build(self, config: dict) -> nn.Module:
        if config["fault"] == "usage":
            raise UsageError("this plugin refuses the config")
        return _Faulty(config["fault"], self.input_shape[0], self.num_classes)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", image_size=8)


@pytest.fixture
def run_for(digits, monkeypatch):
    from kd_compile.students import base

    monkeypatch.setitem(base._SPACES._items, "faulty", FaultySpace)
    g = torch.Generator().manual_seed(0)
    k = digits.num_classes
    knowledge = TeacherCache.from_logits(
        torch.randn(len(digits.y_train), k, generator=g), torch.randn(len(digits.y_val), k, generator=g), digits.y_val
    )

    def make(target: str = "2080ti", constraints: Constraints | None = None) -> RunContext:
        return RunContext(
            space="faulty",
            space_kwargs={"input_shape": list(digits.input_shape), "num_classes": k},
            target=get_target(target),
            constraints=constraints or Constraints(max_latency=None),
            budget=Budget(proxy_epochs=0.2, proxy_data_fraction=0.3),
            seed=0,
            device="cpu",
            batch_size=64,
            augment_views=0,
            reference=Reference(params=1e4, flops=1e6, latency_ms=0.1, accuracy=0.9, acc_target=0.9),
            latency=plan_latency(get_target(target)),
            data=digits,
            knowledge=knowledge,
        )

    return make


def test_a_sound_candidate_is_ok_and_scored(run_for):
    t = evaluate_candidate(run_for(), {"fault": "none", "kd_tau": 2.0, "kd_alpha": 0.5}, 1.0, 0)
    assert t.status is TrialStatus.OK and t.score is not None and t.score > 0
    assert 0 <= t.metrics["accuracy"] <= 1 and t.metrics["params"] > 0 and t.metrics["latency_method"] == "predicted"


@pytest.mark.parametrize(
    ("fault", "target", "reason"),
    [
        ("nan", "2080ti", "non-finite training loss"),
        ("export", "cpu", "svd"),  # the cpu target measures with ONNX Runtime, so it exports
        ("oom", "2080ti", "OutOfMemoryError"),
        ("profile", "2080ti", "cannot run this model"),
        ("usage", "2080ti", "refuses the config"),
    ],
)
def test_a_failing_candidate_is_recorded_not_raised(run_for, fault, target, reason):
    t = evaluate_candidate(run_for(target), {"fault": fault}, 1.0, 3)
    assert t.status is TrialStatus.FAILED and t.score is None
    assert reason in t.error
    assert t.metrics["traceback"]  # kept in the journal for the post-mortem, not in the report


def test_a_candidate_that_scores_nothing_keeps_its_accuracy_and_a_finite_score(run_for, digits):
    """The scores divide by the accuracy, so they floor it; the trial's metrics (the search line,
    the report's candidates table) say what the student scored: 0%, not the floor."""
    import dataclasses

    run = run_for()
    no_zeros = dataclasses.replace(digits, y_val=digits.y_val.clamp(min=1))  # the student only ever says 0
    t = evaluate_candidate(dataclasses.replace(run, data=no_zeros), {"fault": "class0"}, 1.0, 0)
    assert t.status is TrialStatus.OK and t.metrics["accuracy"] == 0.0
    assert t.score is not None and 0 < t.score < float("inf")
    sound = evaluate_candidate(run, {"fault": "none"}, 1.0, 0)
    assert t.score > sound.score  # ranked last


def test_an_interrupt_still_stops_the_run(run_for):
    with pytest.raises(KeyboardInterrupt):
        evaluate_candidate(run_for(), {"fault": "interrupt"}, 1.0, 0)


def test_constraints_reject_before_training(run_for):
    t = evaluate_candidate(run_for(constraints=Constraints(max_flops=10)), {"fault": "nan"}, 1.0, 0)
    assert t.status is TrialStatus.INFEASIBLE and "FLOPs" in t.error and "accuracy" not in t.metrics


def test_the_run_context_crosses_a_process_boundary(run_for):
    run = run_for()
    back = pickle.loads(pickle.dumps(run))
    a = evaluate_candidate(run, {"fault": "none"}, 0.5, 1)
    b = evaluate_candidate(back, {"fault": "none"}, 0.5, 1)
    assert a.metrics["accuracy"] == b.metrics["accuracy"] and a.score == b.score


def test_a_measured_latency_limit_is_recorded_for_the_strategy_to_learn(run_for):
    """On the cpu target the latency is measured, so its limit is a constraint only the
    evaluator finds: the trial carries ``latency / limit - 1`` (SCBO's constraint value); a
    predicted latency (2080ti) is screened before proposal and carries none."""
    from kd_compile.config import LatencyLimit
    from kd_compile.search.gp import CONSTRAINT_METRIC

    tight = Constraints(max_latency=LatencyLimit(1e-6))  # no student is that fast
    t = evaluate_candidate(run_for("cpu", constraints=tight), {"fault": "none"}, 1.0, 0)
    assert t.status is TrialStatus.INFEASIBLE and t.metrics["latency_method"] == "measured"
    assert t.metrics[CONSTRAINT_METRIC]["latency"] == pytest.approx(t.metrics["latency_ms"] / 1e-6 - 1.0)
    loose = Constraints(max_latency=LatencyLimit(1e6))
    loose = evaluate_candidate(run_for("2080ti", constraints=loose), {"fault": "none"}, 1.0, 0)
    assert loose.status is TrialStatus.OK and CONSTRAINT_METRIC not in loose.metrics


def test_a_candidate_killed_mid_training_resumes_from_its_epoch_checkpoint(run_for, tmp_path):
    """With ``checkpoints``, a candidate's proxy training keeps its state at each epoch's end: a
    run stopped during its second epoch goes on from there, and the trial is the one an
    uninterrupted training gives, bit for bit on the CPU (``distill.checkpoint``)."""
    import dataclasses

    from kd_compile.evaluate import candidate_checkpoint, drop_candidate_checkpoint

    run = dataclasses.replace(run_for(), budget=Budget(proxy_epochs=3, proxy_data_fraction=0.3))
    config = {"fault": "none", "kd_tau": 2.0, "kd_alpha": 0.5}
    whole = evaluate_candidate(run, config, 1.0, 4)
    assert "resumed_at_epoch" not in whole.metrics

    kept = dataclasses.replace(run, checkpoints=str(tmp_path / "ckpts"))
    path = Path(candidate_checkpoint(kept.checkpoints, 4, config, 1.0))

    def stop_once_kept(share: float) -> None:
        if path.is_file():  # epoch 1 is kept: stop during epoch 2, as a kill would
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_candidate(kept, config, 1.0, 4, stop_once_kept)
    resumed = evaluate_candidate(kept, config, 1.0, 4)
    assert resumed.metrics["resumed_at_epoch"] == 1.0
    assert resumed.status is TrialStatus.OK and resumed.score == whole.score
    assert resumed.metrics["accuracy"] == whole.metrics["accuracy"]
    # the checkpoint is another candidate's for another config, fidelity or number: never resumed
    for other in ((5, config, 1.0), (4, {**config, "kd_tau": 4.0}, 1.0), (4, config, 0.5)):
        assert candidate_checkpoint(kept.checkpoints, *other) != str(path)
    drop_candidate_checkpoint(kept.checkpoints, resumed)  # the journal holds it now
    assert not path.exists()


def test_a_candidate_whose_checkpoint_cannot_be_written_is_still_evaluated(run_for, tmp_path):
    import dataclasses

    run = dataclasses.replace(run_for(), budget=Budget(proxy_epochs=2, proxy_data_fraction=0.3))
    config = {"fault": "none", "kd_tau": 2.0, "kd_alpha": 0.5}
    whole = evaluate_candidate(run, config, 1.0, 2)
    (tmp_path / "a-file").write_text("")  # the checkpoint folder cannot be made
    blocked = evaluate_candidate(dataclasses.replace(run, checkpoints=str(tmp_path / "a-file")), config, 1.0, 2)
    assert blocked.status is TrialStatus.OK and blocked.score == whole.score
    assert blocked.metrics["checkpoint_error"] and "checkpoint_error" not in whole.metrics


def test_a_task_keeps_checkpoints_only_where_it_sees_the_drivers_folder(run_for, tmp_path):
    """A Ray task gets the driver's checkpoint folder with a token in it (``_for_workers``): where
    the folder holds that token the candidate keeps its epoch checkpoints there; where it is
    missing, or a namesake holds another token (another machine's folder of the same path), it
    keeps none, is evaluated all the same, and its trial says so."""
    import dataclasses

    from kd_compile.evaluate import candidate_checkpoint, checkpoint_folder, share_candidate_checkpoints

    run = dataclasses.replace(run_for(), budget=Budget(proxy_epochs=2, proxy_data_fraction=0.3))
    config = {"fault": "none", "kd_tau": 2.0, "kd_alpha": 0.5}
    seen = tmp_path / "seen"
    token = share_candidate_checkpoints(seen)
    assert share_candidate_checkpoints(tmp_path / "other") != token  # a fresh token each time
    shared = dataclasses.replace(run, checkpoints=str(seen), checkpoints_token=token)
    assert checkpoint_folder(shared) == str(seen)
    written: list[bool] = []
    path = Path(candidate_checkpoint(seen, 3, config, 1.0))
    kept = evaluate_candidate(shared, config, 1.0, 3, lambda f: written.append(path.is_file()))
    assert kept.status is TrialStatus.OK and any(written) and "checkpoints_unseen" not in kept.metrics

    for folder in (tmp_path / "other", tmp_path / "missing"):  # another token; no token at all
        unseen = dataclasses.replace(run, checkpoints=str(folder), checkpoints_token=token)
        assert checkpoint_folder(unseen) is None
        trial = evaluate_candidate(unseen, config, 1.0, 3)
        assert trial.status is TrialStatus.OK and trial.score == kept.score
        assert trial.metrics["checkpoints_unseen"] is True
        assert not list(folder.glob("candidate-*"))
    assert checkpoint_folder(run) is None and checkpoint_folder(dataclasses.replace(run, checkpoints="x")) == "x"
