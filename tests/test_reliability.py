"""Results are never lost and never faked: validation before deletion, one run per output folder,
resume only from an intact journal, no broken student shipped."""

from __future__ import annotations

import json

import pytest
from test_e2e import SMALL

import kd_compile
from kd_compile.errors import DataError, OutputExistsError, ResumeError, TrainingError
from kd_compile.inputs import OutputLock


def _run(teacher, out, **kw):
    return kd_compile.compile(str(teacher), out=out, **{**SMALL, "budget": 1, "compare_ce": False, **kw})


@pytest.fixture(scope="module")
def finished(digits_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    _run(digits_teacher, out)
    return out


def _snapshot(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"data": "/nonexistent/data.npz"}, DataError),
        ({"max_params": "10"}, kd_compile.errors.ConstraintError),
        ({"strategy": "nope"}, kd_compile.errors.UsageError),
        ({"seed": -1}, kd_compile.errors.UsageError),
    ],
)
def test_force_deletes_nothing_before_every_input_is_valid(digits_teacher, finished, tmp_path, bad, error):
    out = tmp_path / "copy"
    out.mkdir()
    for name, data in _snapshot(finished).items():
        (out / name).write_bytes(data)
    before = _snapshot(out)
    with pytest.raises(error):
        _run(digits_teacher, out, force=True, **bad)
    assert _snapshot(out) == before


def test_a_second_run_into_a_locked_folder_exits_7(digits_teacher, tmp_path):
    out = tmp_path / "busy"
    with OutputLock(out):
        with pytest.raises(OutputExistsError, match="another kd-compile run is writing") as e:
            _run(digits_teacher, out, force=True)
    assert e.value.exit_code == 7
    assert not (out / "journal.jsonl").exists()


def test_resume_without_a_journal_exits_11(digits_teacher, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    (out / "student.pt").write_bytes(b"an old result")
    with pytest.raises(ResumeError, match="no journal") as e:
        _run(digits_teacher, out, resume=True)
    assert e.value.exit_code == 11 and (out / "student.pt").read_bytes() == b"an old result"


def test_a_tampered_journal_line_stops_resume_with_its_line_number(digits_teacher, finished, tmp_path):
    out = tmp_path / "tampered"
    out.mkdir()
    lines = (finished / "journal.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec["type"] == "trial" and rec["trial"]["status"] == "ok":
            rec["trial"]["score"] = 1e-9  # claims a better result than was measured
            lines[i] = json.dumps(rec, sort_keys=True)
            break
    (out / "journal.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ResumeError, match=rf"line {i + 1} does not match its checksum") as e:
        _run(digits_teacher, out, resume=True)
    assert e.value.exit_code == 11


def test_resume_refused_for_other_settings_says_which(digits_teacher, finished, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "journal.jsonl").write_bytes((finished / "journal.jsonl").read_bytes())
    with pytest.raises(ResumeError, match=r"seed 0 -> 1"):
        _run(digits_teacher, out, resume=True, seed=1)


def test_a_diverging_final_training_ships_nothing(digits_teacher, tmp_path):
    out = tmp_path / "diverged"
    with pytest.raises(TrainingError) as e:
        _run(digits_teacher, out, lr=1e6, proxy_epochs=0.1)
    assert e.value.exit_code == 12
    assert not (out / "student.pt").exists() and not (out / "student.onnx").exists()
    assert not any(p.name.startswith(".staging") for p in out.iterdir())


def test_a_killed_runs_folder_is_free_at_once_though_its_forked_workers_live(tmp_path):
    """A DataLoader worker is a forked child: it must not keep the dead run's folder locked."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from kd_compile.inputs import OutputLock\n"
        f"lock = OutputLock(Path({str(out)!r}))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(OutputExistsError):  # held while the run lives
            OutputLock(out)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the forked worker outlives it
        OutputLock(out).release()  # and the folder is free at once
    finally:
        proc.kill()
        os.kill(child, signal.SIGKILL)
