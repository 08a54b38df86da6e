"""benchmarks/strategies.py: the confidence intervals over seeds, the GP settings and the results
file of another table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from bench_support import load_benchmark
from test_tabular_benchmark import write_table  # the synthetic table of the benchmark's tests

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sb() -> ModuleType:
    return load_benchmark("strategies.py", "strategies_bench")


def test_ci95_brackets_the_median_and_the_mean(sb: ModuleType) -> None:
    v = [0.0, 0.01, 0.02, 0.02, 0.03, 0.05, 0.08, 0.1]
    ci = sb.ci95(v)
    assert ci["median"][0] <= np.median(v) <= ci["median"][1]
    assert ci["median"][0] >= min(v) and ci["median"][1] <= max(v)
    half = 1.96 * np.std(v, ddof=1) / math.sqrt(len(v))
    assert ci["mean"] == pytest.approx([np.mean(v) - half, np.mean(v) + half])
    assert sb.ci95(v) == ci  # seeded bootstrap: reproducible
    same = sb.ci95([0.02] * 5)
    assert same["median"] == [0.02, 0.02] and same["mean"] == pytest.approx([0.02, 0.02])
    # a seed that found nothing (inf) widens the interval instead of making it nan
    wide = sb.ci95([0.0, 0.01, 0.02, math.inf])
    assert wide["median"][1] == math.inf and not math.isnan(wide["median"][0])
    assert all(math.isnan(x) for x in sb.ci95([0.1])["mean"])


def test_another_table_gets_its_own_results_file(sb: ModuleType) -> None:
    assert sb.default_results(sb.DEFAULT_TABLE, False).name == "strategies.json"
    assert sb.default_results(sb.DEFAULT_TABLE, True).name == "strategies_charge_repeats.json"
    other = ROOT / "benchmarks" / "data" / "nas_kd_glyphs10.jsonl"
    assert sb.default_results(other, False) == sb.RESULTS_DIR / "strategies_glyphs10.json"
    assert sb.default_results(Path("/x/my.jsonl.gz"), True).name == "strategies_my_charge_repeats.json"


def test_run_records_gp_settings_and_confidence_intervals(sb: ModuleType, tmp_path: Path, capsys) -> None:
    table = tmp_path / "t.jsonl"
    write_table(table)
    res = tmp_path / "r.json"
    common = ["--table", str(table), "--only", "random,turbo", "--seeds", "3", "--budget", "2", "--checkpoints", "1"]
    assert sb.main([*common, "--results", str(res), "--gp-settings", "fast"]) == 0
    out = capsys.readouterr().out
    assert "median CI95@2" in out and "gp settings fast" in out
    doc = json.loads(res.read_text())
    assert doc["settings"]["gp_settings"] == "fast" and doc["settings"]["gp_options"] == sb.GP_OPTIONS
    row = doc["strategies"]["random"]
    assert {"regret", "mean", "best", "match", "seeds", "ci95_median", "ci95_mean"} <= set(row)
    med = row["regret"]["2"]["median"]
    assert row["ci95_median"][0] <= med <= row["ci95_median"][1]
    assert row["ci95_mean"][0] <= row["mean"] <= row["ci95_mean"][1]
    assert "turbo" in doc["strategies"]
    # shipped (the default): no overrides, recorded; other settings replace the file's rows
    assert sb.main([*common, "--results", str(res), "--only", "random"]) == 0
    doc = json.loads(res.read_text())
    assert doc["settings"]["gp_settings"] == "shipped" and doc["settings"]["gp_options"] == {}
    assert set(doc["strategies"]) == {"random"}


def test_a_missing_table_is_a_one_line_error(sb: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        sb.main(["--table", str(tmp_path / "nope.jsonl"), "--results", "none"])
