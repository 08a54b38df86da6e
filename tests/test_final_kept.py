"""The final students are kept until the run is published: a run that fails after the final
training (here: a full disk while exporting) resumes without training them again, and ships
exactly the students it trained; a kept file that does not match the journal is trained again."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from test_e2e import SMALL

import kd_compile
import kd_compile.export
import kd_compile.final
from kd_compile.api import Reporter
from kd_compile.errors import ExportError, OutputExistsError, write_failure
from kd_compile.final import FINAL_WEIGHTS


def _run(teacher, out, **kw):
    return kd_compile.compile(str(teacher), out=out, **{**SMALL, "budget": 2, "compare_ce": False, **kw})


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_training(*args, **kwargs):
    raise AssertionError("the final students were trained again")


@pytest.fixture
def failed_export(digits_teacher, tmp_path, monkeypatch):
    """A run whose student.pt cannot be written: the disk is full once the final training is done."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(kd_compile.export, "save_checkpoint", _disk_full)
        with pytest.raises(OutputExistsError) as e:
            _run(digits_teacher, out)
    assert e.value.exit_code == 7
    assert "no space left on device" in e.value.line() and "--resume" in e.value.line()
    assert not (out / "student.pt").exists() and not list(out.glob(".staging-*"))
    kept = torch.load(out / FINAL_WEIGHTS, weights_only=True)
    return out, kept


def test_a_run_that_failed_to_export_resumes_with_the_students_it_trained(digits_teacher, failed_export, monkeypatch):
    out, kept = failed_export
    record = next(json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines() if '"final"' in x)
    monkeypatch.setattr(kd_compile.final, "train_final", _no_training)
    res = _run(digits_teacher, out, resume=True)
    shipped = torch.load(out / "student.pt", weights_only=True)["state_dict"]
    assert shipped.keys() == kept["kd"].keys()
    assert all(torch.equal(shipped[k], kept["kd"][k]) for k in shipped)
    assert res.report["student"]["accuracy_with_kd"] == pytest.approx(record["test_acc"])
    assert res.report["final_training"]["restored"] is True
    assert res.report["final_training"]["kd"]["steps"] == record["kd_result"]["steps"] > 0
    assert "restored from the ones it kept" in (out / "report.md").read_text()
    assert not (out / FINAL_WEIGHTS).exists()  # published: student.pt holds the student


def test_a_kept_file_that_does_not_match_the_journal_is_trained_again(digits_teacher, failed_export, monkeypatch):
    out, kept = failed_export
    kept["kd"] = {k: v + 1 if v.is_floating_point() else v for k, v in kept["kd"].items()}
    torch.save(kept, out / FINAL_WEIGHTS)
    messages = []
    rep = Reporter()
    rep.message = messages.append
    _run(digits_teacher, out, resume=True, reporter=rep)
    assert any("trained again" in m and "does not match the journal" in m for m in messages), messages
    shipped = torch.load(out / "student.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(shipped[k], kept["kd"][k]) for k in shipped)


@pytest.mark.parametrize(
    ("exc", "why"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 70784 vs 70680"), "written short"),
        (ExportError("torch.onnx.export failed: OSError: [Errno 28] No space left on device"), "no space left"),
        (OSError(errno.ENOENT, "No such file or directory"), None),
        (RuntimeError("shape mismatch"), None),
    ],
)
def test_write_failures_are_told_from_other_errors(exc, why):
    got = write_failure(exc)
    assert (got is None) if why is None else (why in got)


def test_a_write_failure_is_found_behind_the_error_it_caused():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ExportError("ONNX export of the student failed") from inner
    except ExportError as outer:
        assert write_failure(outer) == "no space left on device"


def test_a_journaled_distiller_search_is_reused_only_for_its_student_and_iterations():
    from kd_compile.distill import DistillerChoice
    from kd_compile.final import kept_distiller

    best = DistillerChoice("attention", "l2", 5.0, 2.0)
    record = {"type": "distiller", "config": {"w1": 8}, "iterations": 4, "report": {"best": best.to_dict()}}
    choice, report = kept_distiller(record, {"w1": 8}, 4)
    assert choice == best and report is record["report"]
    assert kept_distiller(record, {"w1": 16}, 4) is None  # the replayed search chose another student
    assert kept_distiller(record, {"w1": 8}, 8) is None  # a search of another size
    assert kept_distiller(None, {"w1": 8}, 4) is None
    broken = {**record, "report": {"best": {"transform": "no-such-transform"}}}
    assert kept_distiller(broken, {"w1": 8}, 4) is None  # does not read back: searched again
