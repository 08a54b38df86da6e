"""benchmarks/help_ceiling.py: the additive oracle's held-out ranks, the NAS-Bench-201 and FBNet
design matrices, and the FBNet block decomposition, on synthetic columns with known costs."""

from __future__ import annotations

import numpy as np
import pytest
from bench_support import load_benchmark

hc = load_benchmark("help_ceiling.py", "help_ceiling_bench")


def _fbnet_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [{"arch_str": "|".join(rng.choice(hc.FBNET_OPS, 22))} for _ in range(n)]


def test_nb201_design_one_op_per_edge() -> None:
    rows = [{"arch_str": "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_3x3~1|skip_connect~2|"}]
    x = hc._nb201_design(rows)
    assert x.shape == (1, 30) and x.sum() == 6
    ops = [hc.NB201_OPS[int(np.flatnonzero(x[0, 5 * e : 5 * e + 5])[0])] for e in range(6)]
    assert ops == ["avg_pool_3x3", "nor_conv_1x1", "skip_connect", "none", "nor_conv_3x3", "skip_connect"]


def test_oracle_ceiling_tracks_noise() -> None:
    rows = _fbnet_rows(3000)
    x = hc._fbnet_design(rows)
    cost = np.random.default_rng(1).uniform(0.1, 1.0, x.shape[1])
    clean = x @ cost
    noisy = clean * np.exp(np.random.default_rng(2).normal(0, 0.05, len(clean)))
    exact, blurred = hc.ceiling(x, clean, 3), hc.ceiling(x, noisy, 3)
    assert min(exact) > 0.999
    assert max(blurred) < 0.98 and min(blurred) > 0.5


def test_block_costs_recover_known_costs() -> None:
    rows = _fbnet_rows(3000, seed=3)
    x = hc._fbnet_design(rows)
    per_op = {"k3_e1": 0.4, "k3_e1_g2": 0.5, "skip": 0.0}  # ms; other ops cost 0.45
    cost = np.array([[per_op.get(op, 0.45) for op in hc.FBNET_OPS] for _ in range(22)])
    cost[list(hc.PROJ), hc.FBNET_OPS.index("skip")] = 0.15  # shape-changing skip: conv + BN + ReLU
    y = x @ cost.ravel() + 2.0
    got = hc.block_costs(x, y)
    assert got["block_us"] == pytest.approx(400, abs=0.5)
    assert got["proj_us"] == pytest.approx(150, abs=0.5)
    assert got["shuffle_us"] == pytest.approx(100, abs=0.5)
    assert got["shuffle_over_block"] == pytest.approx(0.25, abs=1e-3)
