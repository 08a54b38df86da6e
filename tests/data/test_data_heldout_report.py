"""A compile run reads the held-out test split once, at the end, and quotes it with validation beside it."""

from __future__ import annotations

import json

import pytest

import kd_compile
from kd_compile.data import load_data
from kd_compile.distill import evaluate
from kd_compile.final import held_out_accuracy
from kd_compile.teacher import load_teacher

TINY = dict(
    target="2080ti", max_params="12K", budget=2, proxy_epochs=0.5, proxy_fraction=0.5, final_epochs=1,
    strategy="random", seed=0, max_latency="none",
)  # fmt: skip


@pytest.fixture(scope="module")
def run(digits_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout") / "run"
    res = kd_compile.compile(str(digits_teacher), out=out, min_accuracy=0.01, max_accuracy_drop=100, **TINY)
    return res, out


def test_report_quotes_test_accuracy_with_validation_beside_it(run, digits_teacher) -> None:
    res, out = run
    r = json.loads((out / "report.json").read_text())
    data = load_data(None, hint=load_teacher(str(digits_teacher)).meta["data"])
    d, t, s = r["run"]["data"], r["teacher"], r["student"]
    assert d["accuracy_split"] == "test" and d["test"] == len(data.x_test) > 0
    assert t["accuracy_split"] == s["accuracy_split"] == "test"
    # the headline figures are the models' accuracies on the test images, measured independently here
    teacher = load_teacher(str(digits_teacher)).module
    assert t["accuracy"] == pytest.approx(evaluate(teacher, *data.test_tensors()), abs=1e-6)
    assert s["accuracy"] == pytest.approx(held_out_accuracy(res.student, data), abs=1e-6)
    assert 0 <= t["val_accuracy"] <= 1 and 0 <= s["val_accuracy"] <= 1
    assert s["val_accuracy_without_kd"] is not None and s["kd_gain"] == pytest.approx(
        s["accuracy"] - s["accuracy_without_kd"]
    )
    # the gates judge the test figures
    assert r["gates"]["min_accuracy"]["value"] == s["accuracy"] and r["gates"]["min_accuracy"]["split"] == "test"
    md = (out / "report.md").read_text()
    assert f"{d['test']:,} held-out test images" in md and "| test accuracy |" in md
    assert "| validation accuracy (used for choices) |" in md


def test_journal_records_the_test_figures_once_at_the_end(run) -> None:
    _, out = run
    rows = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines() if line.strip()]
    final = [row for row in rows if row.get("type") == "final"]
    assert len(final) == 1 and final[0]["test_acc"] is not None and final[0]["teacher_test_acc"] is not None
    assert not any("test_acc" in row for row in rows if row.get("type") != "final")


def test_a_bundle_without_test_has_no_held_out_accuracy() -> None:
    data = load_data("digits:size=8")
    assert held_out_accuracy(None, data.replace(x_test=None, y_test=None)) is None  # type: ignore[arg-type]
