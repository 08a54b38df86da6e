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


def test_ofa_design_scales_each_active_block_by_the_input_area() -> None:
    rows = [{"spec": "ofa:224/2-2-2-2-3/k7e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3"},
            {"spec": "ofa:112/4-2-2-2-2/k3e3-k3e3-k3e3-k3e3|k3e3-k3e3|k3e3-k3e3|k3e3-k3e3|k3e3-k3e3"}]
    x = hc._ofa_design(rows)
    assert x.shape == (2, 5 * hc.OFA_SLOTS * 9 + 1)
    assert np.count_nonzero(x[0]) == 11 + 1 and set(x[0][x[0] > 0]) == {1.0}  # 11 blocks and the stem/head
    assert np.count_nonzero(x[1]) == 12 + 1 and set(x[1][x[1] > 0]) == {0.25}  # half the side: a quarter the area
    slot = (4 * hc.OFA_SLOTS + 2) * 9 + hc.OFA_OPS.index((5, 3))  # stage 5, third block: k5e3
    assert x[0, slot] == 1.0 and x[1, slot] == 0.0


def test_ofa_oracle_and_agreement_tell_a_noisy_column_from_a_clean_one() -> None:
    """Two GPUs' columns from the same per-block costs, one of them blurred: the oracle ranks the clean
    column near perfectly and the blurred one less; the agreement of each with the other is the same
    and below 1, and a third clean column agrees with the first one most."""
    from kd_compile.students.ofa import DEPTHS

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(500):
        depths = rng.choice(DEPTHS, 5)
        blocks = "|".join("-".join(f"k{rng.choice(hc.KERNELS)}e{rng.choice(hc.EXPANDS)}" for _ in range(d))
                          for d in depths)
        rows.append({"spec": f"ofa:{rng.integers(128, 225)}/{'-'.join(map(str, depths))}/{blocks}"})
    x = hc._ofa_design(rows)
    clean = x @ rng.uniform(0.1, 1.0, x.shape[1])
    noisy = clean * np.exp(rng.normal(0, 0.15, len(clean)))
    assert min(hc.ceiling(x, clean, 3, hc.TEST_OFA)) > 0.999
    assert max(hc.ceiling(x, noisy, 3, hc.TEST_OFA)) < 0.97
    agree = hc.agreement({"a": clean, "b": noisy, "c": 2 * clean + 0.01})
    assert agree["a"] == (1.0, "c") and agree["c"] == (1.0, "a")
    assert agree["b"][0] < 0.97
