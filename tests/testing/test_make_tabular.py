"""benchmarks/make_tabular.py on a tiny real table: the main run, then the replicate mode
(top-N by full-fidelity KD accuracy, other training seeds, appended, resumable), read back by
``TabularBenchmark`` as means over seeds."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from bench_support import load_benchmark

from kd_compile.testing.tabular import TabularBenchmark

# 4 students, 10 classes, 16 px, 60 train / 20 val images, a 1-epoch teacher, 2-epoch KD runs on
# all the data only (no CE runs): a few seconds in all
TINY = [
    "--archs", "4", "--classes", "10", "--train", "60", "--val", "20", "--teacher-epochs", "1",
    "--epochs", "2", "--fractions", "1", "--ce-fractions", "", "--batch-size", "20",
    "--min-params", "0", "--max-flops", "1e9", "--workers", "1",
]  # fmt: skip


def _module() -> ModuleType:
    return load_benchmark("make_tabular.py", "make_tabular")


@pytest.fixture(scope="module")
def mt() -> ModuleType:
    return _module()


@pytest.fixture(scope="module")
def table(mt: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny table built by the generator's main run; returns (table, workdir)."""
    d = tmp_path_factory.mktemp("tabular")
    out, work = d / "t.jsonl", d / "work"
    assert mt.main([*TINY, "--out", str(out), "--workdir", str(work)]) == 0
    return out, work


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _replicate(mt: ModuleType, out: Path, work: Path, *extra: str) -> int:
    args = ["--replicate-top", "2", "--replicate-seeds", "1,2", "--out", str(out), "--workdir", str(work), *extra]
    return mt.main(args)


def test_replicates_the_top_archs_with_other_seeds_and_resumes(mt: ModuleType, table: tuple[Path, Path]) -> None:
    out, work = table
    recs = _lines(out)
    archs = [r for r in recs if r["kind"] == "arch"]
    assert len(archs) == 4
    settings = recs[0]["settings"]
    full = {a["index"]: mt.full_accuracy(a, settings) for a in archs}
    top = sorted(full, key=lambda i: (-full[i], i))[:2]

    assert _replicate(mt, out, work) == 0
    reps = [r for r in _lines(out) if r["kind"] == "replicate"]
    assert sorted((r["arch"], r["seed"]) for r in reps) == sorted((i, s) for i in top for s in (1, 2))
    for r in reps:
        assert "error" not in r, r
        assert len(r["val_acc_by_epoch"]) == 2 and r["val_acc"] == r["val_acc_by_epoch"][-1]
        assert 0.0 <= r["val_acc"] <= 1.0 and r["loss"] == "kd" and r["fraction"] == 1.0

    # finished: a rerun trains nothing; a line cut by a kill is redone, and only it
    n = len(out.read_text().splitlines())
    assert _replicate(mt, out, work) == 0
    assert len(out.read_text().splitlines()) == n
    text = out.read_text().splitlines()
    cut = json.loads(text[-1])
    out.write_text("\n".join(text[:-1]) + "\n" + text[-1][:25] + "\n")
    assert _replicate(mt, out, work) == 0
    again = [r for r in _lines_skipping_cut(out) if r["kind"] == "replicate"]
    assert sorted((r["arch"], r["seed"]) for r in again) == sorted((r["arch"], r["seed"]) for r in reps)
    redone = next(r for r in again if (r["arch"], r["seed"]) == (cut["arch"], cut["seed"]))
    assert redone["val_acc_by_epoch"] == cut["val_acc_by_epoch"]  # the same seed trains the same

    # the benchmark's full-fidelity value is the mean over seed 0 and the replicates
    bench = TabularBenchmark(out, score="error")
    assert sorted(bench.replicated) == sorted(top)
    for i in top:
        accs = bench.seed_accuracies(i)
        assert sorted(accs) == [0, 1, 2] and accs[0] == full[i]
        assert bench.full_accuracy(i) == pytest.approx(np.mean(list(accs.values())))
        assert bench.full_scores[i] == pytest.approx(1 - np.mean(list(accs.values())))


def _lines_skipping_cut(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def test_replicate_seeds_must_be_positive_distinct_integers(mt: ModuleType) -> None:
    assert mt.parse_seeds("1,2") == [1, 2]
    for bad in ("0,1", "1,1", "a", "", "-1"):
        with pytest.raises(ValueError, match="replicate-seeds"):
            mt.parse_seeds(bad)


def test_replicate_needs_a_table(mt: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _replicate(mt, tmp_path / "none.jsonl", tmp_path / "w") == 2
    assert "no table to replicate" in capsys.readouterr().err
    assert _replicate(mt, tmp_path / "none.jsonl", tmp_path / "w", "--replicate-seeds", "0") == 2


def test_init_seeds_are_the_tables_for_seed_0_and_distinct_otherwise(mt: ModuleType) -> None:
    assert mt.init_seed(7, 0) == 1007  # the committed table's initial weights
    seeds = {mt.init_seed(i, s) for i in range(300) for s in range(3)}
    assert len(seeds) == 900


def test_refresh_latency_rewrites_latencies_only_and_refuses_a_changed_builder(
    mt: ModuleType, table: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--refresh-latency`` re-predicts each student's and the teacher's latency from its config
    with the current predictor (and recounts FLOPs), keeps every other field, and records it in
    the header; a table whose recorded params no longer match its configs is left untouched (exit 2)."""
    src, _ = table
    out = tmp_path / "t.jsonl"
    orig = list(mt._records(src))  # the other tests may have left a line cut by a kill
    stale = json.loads(json.dumps(orig))
    for r in stale:  # what an older predictor and counter would have written
        if r["kind"] == "arch":
            r["latency_ms"] *= 3.0
            r["flops"] += 8
    stale[0]["teacher"]["latency_ms"] *= 3.0
    out.write_text("".join(json.dumps(r) + "\n" for r in stale))
    assert mt.main(["--refresh-latency", "--out", str(out)]) == 0
    fresh = _lines(out)
    assert fresh[0]["latency_refreshed"]["flops_recounted"] == sum(r["kind"] == "arch" for r in orig)
    assert "latency_refreshed" in fresh[0] and "calibration" in fresh[0]["latency_refreshed"]["predictor"]
    assert fresh[0]["teacher"]["latency_ms"] == pytest.approx(orig[0]["teacher"]["latency_ms"])
    for new, old in zip(fresh[1:], orig[1:], strict=True):
        if new["kind"] == "arch":
            assert new["latency_ms"] == pytest.approx(old["latency_ms"])  # the same predictor as the build
            assert new["flops"] == old["flops"]
        assert {**new, "latency_ms": 0} == {**old, "latency_ms": 0}
    broken = _lines(out)
    next(r for r in broken if r["kind"] == "arch")["params"] += 1
    text = "".join(json.dumps(r) + "\n" for r in broken)
    out.write_text(text)
    capsys.readouterr()
    assert mt.main(["--refresh-latency", "--out", str(out)]) == 2
    assert "params no longer match" in capsys.readouterr().err
    assert out.read_text() == text
