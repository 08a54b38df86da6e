"""benchmarks/latency_accuracy.py: the issue's bars, read off the summaries it prints."""

from __future__ import annotations

from bench_support import load_benchmark

la = load_benchmark("latency_accuracy.py", "latency_accuracy_bench")


def _row(batch: str, rhos: dict[str, float], method: str = "predictor", runtime: str = "torch") -> dict:
    return {"runtime": runtime, "batch": batch, "method": method, "spearman": rhos,
            "spearman_min": min(rhos.values()), "spearman_median": sorted(rhos.values())[len(rhos) // 2]}


def test_the_eager_rank_bar_names_every_group_and_is_also_given_without_the_package_tables() -> None:
    lodo = [_row("32", {"2080ti|help-fbnet-latency.csv": 0.96, "2080ti|help-ofa-latency.csv": 0.78}),
            _row("64", {"2080ti|help-fbnet-latency.csv": 0.97, "2080ti|help-ofa-latency.csv": 0.96}),
            _row("32", {"2080ti|help-fbnet-latency.csv": 0.5}, method="flops")]
    out = la.bars(lodo, [], ["help-ofa-latency.csv", "torch2trt-jetson-nano-trt-fp16-bs1.csv"])
    b32 = [line for line in out if line.startswith("LODO eager batch 32")]
    assert len(b32) == 2
    assert "Spearman min 0.780" in b32[0] and "FAIL (min)" in b32[0] and "help-ofa-latency.csv: 0.780" in b32[0]
    assert b32[1].startswith("LODO eager batch 32 without help-ofa-latency.csv: Spearman min 0.960 over 1 groups")
    assert b32[1].endswith("PASS")
    b64 = [line for line in out if line.startswith("LODO eager batch 64")]
    assert "PASS" in b64[0] and "PASS" in b64[1]
    # a package table without groups in the row is not named; without package tables, one line per batch
    assert all("jetson-nano" not in line for line in out)
    assert len([line for line in la.bars(lodo, []) if line.startswith("LODO eager")]) == 2
