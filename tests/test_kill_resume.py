"""kill -9 at seven points of a run, then ``--resume``: the student is the one an uninterrupted
run gives (issue 14). The points are found by watching what the run writes: its progress lines
(teacher caching), the journal (trials, the distiller search's and the final training's notes),
the candidates' epoch checkpoints and the staging folder (export). Killed during a candidate's or
the final training, the resumed run goes on from its last epoch checkpoint; killed in or after
``--distiller auto``'s search, it takes the distillers the journal kept; killed during the export,
it restores the final students it kept (``final.keep_final``) rather than training them again.
With ``--executor ray`` (a local Ray instance, whose tasks see ``--out``), a candidate in flight
when the driver is killed goes on from its task's last epoch checkpoint too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ARGS = [
    "--target", "2080ti", "--max-params", "12K", "--budget", "3", "--proxy-epochs", "0.5",
    "--proxy-fraction", "0.5", "--final-epochs", "3", "--strategy", "random", "--seed", "0", "--no-compare-ce",
]  # fmt: skip


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "KD_COMPILE_CACHE": str(cache), "COLUMNS": "200"}


def _cmd(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kd_compile", str(teacher), *ARGS, "--out", str(out), *extra]


def _run(teacher: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(teacher, out, *extra), capture_output=True, text=True, env=_env(cache), timeout=300)


def _journal(out: Path) -> list[dict]:
    try:
        text = (out / "journal.jsonl").read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line being written
    return rows


def _trials(out: Path) -> int:
    return sum(1 for r in _journal(out) if "trial" in r)


def _has_final(out: Path) -> bool:
    return any(r.get("type") == "final" for r in _journal(out))


def _student(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    ckpt = torch.load(out / "student.pt", map_location="cpu", weights_only=True)
    return ckpt["config"], ckpt["state_dict"]


def _kill_when(teacher: Path, out: Path, cache: Path, ready: Callable[[Path, Path], bool], *extra: str) -> None:
    """Start a run (``ARGS``, then ``extra``) and SIGKILL it as soon as ``ready(out, stderr_file)`` holds."""
    log = out.parent / f"{out.name}.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(_cmd(teacher, out, *extra), stdout=subprocess.DEVNULL, stderr=err, env=_env(cache))
        try:
            deadline = time.monotonic() + 240
            while not ready(out, log):
                if proc.poll() is not None:
                    tail = log.read_text()[-500:]
                    pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point: {tail}")
                if time.monotonic() > deadline:
                    pytest.fail("the kill point was never reached")
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "student.pt").exists() or ready is _exporting  # nothing shipped half-way


def _caching(out: Path, log: Path) -> bool:
    return "caching logits" in log.read_text()


def _exporting(out: Path, log: Path) -> bool:
    return _has_final(out)


@pytest.fixture(scope="module")
def reference(digits_teacher: Path, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("reference")
    done = _run(digits_teacher, d / "out", d / "cache")
    assert done.returncode == 0, done.stderr[-2000:]
    trials = _trials(d / "out")
    assert trials >= 2 and _has_final(d / "out")
    return {"student": _student(d / "out"), "trials": trials}


def _same_student(out: Path, reference: dict) -> None:
    config, sd = _student(out)
    ref_config, ref_sd = reference["student"]
    assert config == ref_config
    assert sd.keys() == ref_sd.keys()
    for k in sd:
        assert torch.equal(sd[k], ref_sd[k]), k


POINTS: dict[str, Callable[[dict], Callable[[Path, Path], bool]]] = {
    "teacher caching": lambda ref: _caching,
    "mid-search": lambda ref: lambda out, log: _trials(out) >= 2,
    # after the final training's first epoch checkpoint, before its journal record
    "final training": lambda ref: lambda out, log: (out / "final-training-kd.ckpt").is_file() and not _has_final(out),
    "export": lambda ref: _exporting,
}


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_then_resume_gives_the_same_student(digits_teacher: Path, tmp_path: Path, reference: dict, point: str):
    out, cache = tmp_path / "out", tmp_path / "cache"
    _kill_when(digits_teacher, out, cache, POINTS[point](reference))
    resumed = _run(digits_teacher, out, cache, "--resume")
    if point == "teacher caching" and resumed.returncode == 11:
        # killed before the journal's first line: nothing to resume (exit 11, documented); a
        # plain rerun into the folder starts afresh, over whatever the cache kept
        assert "nothing to resume" in resumed.stderr
        resumed = _run(digits_teacher, out, cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr and "internal error" not in resumed.stderr
    _same_student(out, reference)
    # killed after the final training's journal record: its students were kept, not trained again;
    # killed during it: it went on from its last epoch checkpoint
    assert ("final students restored" in resumed.stderr) == (point == "export"), resumed.stderr[-2000:]
    assert ("resumed at epoch" in resumed.stderr) == (point == "final training"), resumed.stderr[-2000:]
    final = json.loads((out / "report.json").read_text())["final_training"]
    assert final["restored"] == (point == "export")
    assert (final["kd"]["resumed_at"] > 0) == (point == "final training")
    assert not list(out.glob("final-training-*.ckpt")) and not (out / "final-students.pt").exists()
    assert not (out / "candidate-checkpoints").exists()
    assert not list(out.glob(".staging-*")) and not list(cache.rglob("*.tmp"))


MID_CANDIDATE = ("--proxy-epochs", "3", "--proxy-fraction", "1", "--budget", "2")  # the later option wins


def _killed_mid_candidate_and_resumed(teacher: Path, out: Path, cache: Path, *extra: str) -> str:
    """SIGKILL a run (``MID_CANDIDATE``, then ``extra``) once a candidate's epoch checkpoint is kept,
    resume it, check it went on from that checkpoint and left none, and return its stderr."""
    ckpts = out / "candidate-checkpoints"

    def kept(out: Path, log: Path) -> bool:
        return ckpts.is_dir() and any(p.suffix == ".ckpt" for p in ckpts.iterdir())

    _kill_when(teacher, out, cache, kept, *MID_CANDIDATE, *extra)
    resumed = _run(teacher, out, cache, *MID_CANDIDATE, *extra, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert re.search(r"candidate \d+: resumed at epoch [12] from its epoch checkpoint", resumed.stderr), resumed.stderr
    assert not ckpts.exists()
    return resumed.stderr


def test_killed_mid_candidate_the_resumed_run_goes_on_from_its_epoch_checkpoint(digits_teacher: Path, tmp_path: Path):
    """Candidates whose proxy training spans epochs keep a checkpoint at each epoch's end: killed
    during one, the resumed run trains it on from there and ends with the uninterrupted run's
    student; once journaled (and when the search is over) the checkpoints are gone."""
    ref = tmp_path / "reference"
    done = _run(digits_teacher, ref, tmp_path / "cache-ref", *MID_CANDIDATE)
    assert done.returncode == 0, done.stderr[-2000:]
    _killed_mid_candidate_and_resumed(digits_teacher, tmp_path / "out", tmp_path / "cache")
    _same_student(tmp_path / "out", {"student": _student(ref)})


def test_killed_mid_candidate_on_ray_the_resumed_run_goes_on_from_its_epoch_checkpoint(
    digits_teacher: Path, tmp_path: Path
):
    """With ``--executor ray`` on one machine the tasks see ``--out``: a candidate in flight when
    the driver is killed goes on from its task's last epoch checkpoint in the resumed run."""
    pytest.importorskip("ray")
    extra = ("--final-epochs", "1", "--executor", "ray")
    stderr = _killed_mid_candidate_and_resumed(digits_teacher, tmp_path / "out", tmp_path / "cache", *extra)
    assert "does not see" not in stderr


def _noted(out: Path, kind: str) -> bool:
    return any(r.get("type") == kind for r in _journal(out))


DISTILLER_ARGS = ("--distiller", "auto", "--distiller-iterations", "3", "--final-epochs", "4")
DISTILLER_POINTS: dict[str, Callable[[Path], bool]] = {
    # after the search's first distiller was trained and journaled, before its choice was
    "during the distiller search": lambda out: _noted(out, "distiller_eval") and not _noted(out, "distiller"),
    "after the distiller search": lambda out: _noted(out, "distiller"),
}


@pytest.fixture(scope="module")
def distiller_reference(digits_teacher: Path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("distiller-reference")
    done = _run(digits_teacher, d / "out", d / "cache", *DISTILLER_ARGS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "distiller search (MCTS" in done.stderr and "from the journal" not in done.stderr
    return d / "out"


@pytest.mark.parametrize("point", list(DISTILLER_POINTS))
def test_killed_in_or_after_the_distiller_search_the_resumed_run_trains_no_distiller_again(
    digits_teacher: Path, tmp_path: Path, distiller_reference: Path, point: str
):
    """``--distiller auto``: each distiller the search trains is journaled as it is scored, and the
    search's choice before the final training, so a run killed in the search takes the distillers
    already trained from the journal (the tree search, deterministic for its seed and rewards,
    makes the same choices) and a run killed after it goes on with the distiller it found; either
    way it ships the uninterrupted run's student and reports the same search."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    _kill_when(digits_teacher, out, cache, lambda out, log: DISTILLER_POINTS[point](out), *DISTILLER_ARGS)
    assert not _has_final(out)
    resumed = _run(digits_teacher, out, cache, *DISTILLER_ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    if point == "after the distiller search":
        assert "distiller search restored from the journal" in resumed.stderr, resumed.stderr[-2000:]
        assert "distiller search (MCTS" not in resumed.stderr
    else:
        assert re.search(r"distiller search: [12] distillers trained before the run stopped", resumed.stderr), (
            resumed.stderr[-2000:]
        )
    _same_student(out, {"student": _student(distiller_reference)})
    search, ref_search = (json.loads((d / "report.json").read_text())["distiller"] for d in (out, distiller_reference))
    assert search["best"] == ref_search["best"]  # the report keeps the search the killed run made
    assert [r["reward"] for r in search["rewards"]] == [r["reward"] for r in ref_search["rewards"]]

