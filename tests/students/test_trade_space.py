"""Tests of the TRADE search space (kd_compile/students/trade.py): parameters, encoding,
canonical form, stride rule, counts, describe, and its composition with the KD space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from students_support import GLYPH, samples
from torch import nn

from kd_compile.errors import UsageError
from kd_compile.search.space import ComposedSpace
from kd_compile.students import create_space, list_spaces
from kd_compile.students.trade import TradeSpace, stride_plan
from kd_compile.testing.spaces import param_count

RGB32 = {"input_shape": (3, 32, 32), "num_classes": 10}
SEEDS = range(30)
# The parameter order of the TRADE space at its defaults (4 stage slots, with Transformer): the
# order of the unit-cube encoding, which journals and model-based strategies depend on.
TRADE_PARAMS = [
    "stem_width",
    *[f"s{i}_{k}" for i in range(1, 5) for k in ("type", "depth", "width", "kernel", "expand", "se")],
    "tf_depth",
    "tf_heads",
    "tf_mlp_ratio",
    "head_width",
]





def test_registered() -> None:
    assert "trade" in list_spaces()
    assert isinstance(create_space("trade", **GLYPH), TradeSpace)


def test_unit_round_trip_is_canonical(glyph_space: TradeSpace) -> None:
    for cfg in samples(glyph_space, 40, seed=1):
        assert cfg == glyph_space.canonical(cfg)
        u = glyph_space.to_unit(cfg)
        assert u.shape == (glyph_space.dim,) and np.all((u >= 0) & (u <= 1))
        back = glyph_space.from_unit(u)
        # floats pass through exactly; everything else is equal
        assert back.keys() == cfg.keys()
        for k, v in cfg.items():
            assert back[k] == pytest.approx(v, rel=1e-12) if isinstance(v, float) else back[k] == v, k
        assert glyph_space.validate(cfg) == cfg


@pytest.mark.parametrize("shape", [GLYPH, RGB32], ids=["24x24x1-62", "32x32x3-10"])
def test_every_sample_builds_and_counts_exactly(shape: dict) -> None:
    space = create_space("trade", **shape)
    c, h, w = shape["input_shape"]
    x = torch.randn(2, c, h, w)
    describes = set()
    for seed in SEEDS:
        cfg = space.sample(np.random.default_rng(seed))
        model = space.build(cfg).eval()
        with torch.no_grad():
            y = model(x)
        assert y.shape == (2, shape["num_classes"]) and y.dtype == torch.float32
        assert torch.isfinite(y).all()
        assert space.estimate_params(cfg) == param_count(model), space.describe(cfg)
        describes.add(space.describe(cfg))
    # 30 seeds should give 30 different architectures, not one collapsed default
    assert len(describes) == len(SEEDS)


def test_estimate_matches_meta_build() -> None:
    # the analytic count must follow timm's layer layout; the meta build is the same code as build
    for shape in (GLYPH, {"input_shape": (3, 224, 224), "num_classes": 1000}):
        space = create_space("trade", **shape)
        for cfg in samples(space, 15, seed=5):
            assert space.estimate_params(cfg) == space.count_params_meta(cfg), space.describe(cfg)


def test_canonical_dedups_dropped_stages_and_transformer(glyph_space: TradeSpace) -> None:
    base = glyph_space.default()
    base.update(s3_depth=0, tf_depth=0)
    base = glyph_space.canonical(base)
    other = dict(
        base,
        s3_type="fused",
        s3_width=48,
        s3_kernel=5,
        s3_expand=6,
        s3_se=0.25,
        tf_heads=4,
        tf_mlp_ratio=4,
    )
    assert other != base
    assert glyph_space.canonical(other) == base
    assert glyph_space.key(other) == glyph_space.key(base)
    assert glyph_space.estimate_params(other) == glyph_space.estimate_params(base)
    # a change of an active stage or of an active transformer is a different student
    assert glyph_space.key(dict(base, s2_width=32)) != glyph_space.key(dict(base, s2_width=8))
    with_tf = dict(base, tf_depth=1)
    assert glyph_space.key(dict(with_tf, tf_heads=1)) != glyph_space.key(dict(with_tf, tf_heads=4))
    # unit vectors that differ only in dead coordinates decode to one key
    u = glyph_space.to_unit(base)
    u2 = u.copy()
    i = 0
    for p in glyph_space.params:
        if p.name in ("s3_width", "s3_kernel", "tf_heads"):
            u2[i] = 1.0 - u2[i]
        i += p.width
    assert not np.allclose(u, u2)
    assert glyph_space.key(glyph_space.from_unit(u2)) == glyph_space.key(base)


def test_dense_in_small_region(glyph_space: TradeSpace) -> None:
    counts = np.array([glyph_space.estimate_params(c) for c in samples(glyph_space, 300, seed=7)])
    frac = float((counts < 60_000).mean())
    print(
        f"\ntrade 24x24x1/62, 300 samples: <60K {frac:.2f}, 10K-200K "
        f"{float(((counts >= 10_000) & (counts < 200_000)).mean()):.2f}, "
        f"min {counts.min()}, median {int(np.median(counts))}, max {counts.max()}"
    )
    assert frac >= 0.25
    assert counts.min() < 10_000 and counts.max() > 500_000


@pytest.mark.parametrize(
    ("side", "stem", "n_down", "final"),
    [
        (16, 1, 2, 4),
        (20, 2, 2, 3),
        (24, 2, 2, 3),
        (28, 2, 2, 4),
        (32, 2, 2, 4),
        (48, 2, 3, 3),
        (64, 2, 3, 4),
        (224, 2, 4, 7),
    ],
)
def test_stride_rule(side: int, stem: int, n_down: int, final: int) -> None:
    assert stride_plan((side, side), 4) == (stem, n_down)
    space = TradeSpace(input_shape=(1, side, side), num_classes=5)
    cfg = space.default()
    cfg.update(
        {f"s{i}_depth": 1 for i in range(1, 5)},
        **{f"s{i}_width": 8 for i in range(1, 5)},
        stem_width=8,
    )
    plans = space.stage_plans(cfg)
    assert [p.stride for p in plans] == [1] * (4 - n_down) + [2] * n_down
    assert plans[-1].out_hw == (final, final) and final >= 3
    if side <= 64:  # the real forward agrees with the plan (224 px costs too much CPU here)
        model = space.build(cfg).eval()
        with torch.no_grad():
            f = model.forward_features(torch.randn(1, 1, side, side))
        assert f.shape[-2:] == (final, final)


def test_stride_rule_dropped_stages_and_non_square(glyph_space: TradeSpace) -> None:
    cfg = dict(glyph_space.default(), s2_depth=0, s3_depth=1, s4_depth=0)
    plans = glyph_space.stage_plans(cfg)
    # two active stages for two allowed steps after the stride-2 stem: both downsample, none is
    # lost to the hole left by the dropped stage 2
    assert [(p.index, p.stride) for p in plans] == [(1, 2), (3, 2)]
    assert plans[-1].out_hw == (3, 3)
    assert stride_plan((20, 64), 4) == (2, 2)  # the short side decides
    assert stride_plan((12, 64), 4) == (1, 2)
    assert stride_plan((64, 64), 2) == (2, 2)  # never more steps than stages (3 would fit)


def test_deterministic_init_and_kd_keys_ignored(glyph_space: TradeSpace) -> None:
    from kd_compile.distill.hparams import kd_hparams

    # a config with a Transformer (the first ONNX config of test_trade_net.py)
    tf = dict(samples(glyph_space, 1, seed=11)[0], tf_depth=2, tf_heads=4, tf_mlp_ratio=2, s4_depth=1, s4_se=0.25)
    cfg = dict(glyph_space.canonical(tf), kd_tau=2.0, kd_alpha=0.3)
    torch.manual_seed(123)
    a = glyph_space.build(cfg).state_dict()
    torch.manual_seed(123)
    b = glyph_space.build(dict(cfg, kd_tau=7.5, kd_alpha=0.9)).state_dict()
    torch.manual_seed(124)
    c = glyph_space.build(cfg).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert kd_hparams(cfg) == {"tau": 2.0, "alpha": 0.3}


def test_describe_dense_types(glyph_space: TradeSpace) -> None:
    cfg = dict(
        glyph_space.default(),
        stem_width=16,
        s1_type="conv",
        s1_depth=1,
        s1_width=16,
        s2_type="residual",
        s2_depth=2,
        s2_width=32,
        s3_type="repvgg",
        s3_depth=2,
        s3_width=48,
        s3_se=0.25,
        s4_depth=0,
        tf_depth=0,
        head_width=0,
    )
    assert glyph_space.describe(cfg) == "stem16 /2 | C16x1 | R32x2 /2 | RV48x2 /2 | head-"


def test_describe(glyph_space: TradeSpace) -> None:
    cfg = dict(
        glyph_space.default(),
        stem_width=16,
        s1_type="fused",
        s1_depth=2,
        s1_width=16,
        s1_kernel=3,
        s1_expand=1,
        s1_se=0.0,
        s2_depth=0,
        s3_depth=0,
        s4_type="mbconv",
        s4_depth=1,
        s4_width=64,
        s4_kernel=5,
        s4_expand=4,
        s4_se=0.25,
        tf_depth=1,
        tf_heads=2,
        tf_mlp_ratio=2,
        head_width=128,
    )
    assert glyph_space.describe(cfg) == "stem16 /2 | FMB16x2 k3 e1 /2 | MB64x1 k5 e4 se.25 /2 | T1 h2 m2 | head128"


def test_space_options_and_errors() -> None:
    no_tf = TradeSpace(**GLYPH, transformer=False)
    assert not any(n.startswith("tf_") for n in no_tf.param_names)
    for cfg in samples(no_tf, 10):
        assert "T" not in no_tf.describe(cfg).split(" | ")[-2]
        assert isinstance(no_tf.build(cfg).tf, nn.Identity)
    wide = TradeSpace(**GLYPH, width_scale=2.0)
    narrow = TradeSpace(**GLYPH)
    assert max(wide._by_name["s4_width"].choices) == 2 * max(narrow._by_name["s4_width"].choices)
    six = TradeSpace(**GLYPH, max_stages=6)
    assert len(six.stage_plans(six.default())) >= 1
    with pytest.raises(UsageError, match="input_shape"):
        TradeSpace(input_shape=(1, 24), num_classes=3)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="num_classes"):
        TradeSpace(input_shape=(1, 24, 24), num_classes=0)
    with pytest.raises(UsageError, match="max_stages"):
        TradeSpace(**GLYPH, max_stages=9)
    with pytest.raises(UsageError, match="width_scale"):
        TradeSpace(**GLYPH, width_scale=0)
    with pytest.raises(UsageError, match="activation"):
        TradeSpace(**GLYPH, act="tanh")
    with pytest.raises(UsageError):
        narrow.validate(dict(narrow.default(), s1_depth=0))  # stage 1 cannot be dropped
    with pytest.raises(UsageError):
        narrow.validate(dict(narrow.default(), s2_width=20))


# -- the family composed with the KD hyper-parameters (what the API searches) ------------------
def _composed(**shape) -> tuple[TradeSpace, ComposedSpace]:
    from kd_compile.distill.hparams import kd_space

    family = create_space("trade", **shape)
    assert isinstance(family, TradeSpace)
    return family, ComposedSpace([family, kd_space()])


def test_composed_space_keeps_the_old_encoding() -> None:
    family, composed = _composed(input_shape=(1, 16, 16), num_classes=10, block_types=("fused", "mbconv"))
    # the TRADE space before the KD keys left it (and before the dense block types): 33
    # architecture coordinates, then kd_tau and kd_alpha; journals and GP encodings written then
    # line up with the composed space of the original two block types
    assert family.param_names == TRADE_PARAMS and family.dim == 33
    assert composed.param_names == [*TRADE_PARAMS, "kd_tau", "kd_alpha"]
    assert composed.dim == 35
    assert composed.name == "trade"
    for seed in range(10):
        c = composed.sample(np.random.default_rng(seed))
        arch, kd = composed.split(c)
        assert set(kd) == {"kd_tau", "kd_alpha"} and 1.0 <= kd["kd_tau"] <= 8.0 and 0.1 <= kd["kd_alpha"] <= 0.95
        # the same draw gives the same architecture as the family alone (KD coordinates are last)
        assert arch == family.sample(np.random.default_rng(seed))
        np.testing.assert_array_equal(composed.to_unit(c)[: family.dim], family.to_unit(arch))
        assert composed.describe(c) == family.describe(arch)


def test_composed_canonical_and_key_follow_the_family() -> None:
    family, composed = _composed(**GLYPH)
    for c in samples(composed, 20, seed=3):
        arch = {k: v for k, v in c.items() if k in family.param_names}
        canon = composed.canonical(c)
        assert {k: canon[k] for k in family.param_names} == family.canonical(arch)
        assert (canon["kd_tau"], canon["kd_alpha"]) == (c["kd_tau"], c["kd_alpha"])
        kd_parts = {f"kd_tau={c['kd_tau']}", f"kd_alpha={c['kd_alpha']}"}
        assert set(composed.key(c).split("|")) == set(family.key(arch).split("|")) | kd_parts
        assert composed.validate(c) == canon
    # dead coordinates of the family collapse in the composed key too
    base = dict(composed.default(), s3_depth=0, tf_depth=0)
    assert composed.key(dict(base, s3_width=48, tf_heads=4)) == composed.key(base)
    assert composed.key(dict(base, kd_tau=2.0)) != composed.key(base)


def test_block_types_extend_the_one_hot_type() -> None:
    # the dense types come after the original two, so an old config keeps its meaning; each of
    # the four s{i}_type one-hots grows from 2 to 5 coordinates
    full, old = TradeSpace(**GLYPH), TradeSpace(**GLYPH, block_types=("fused", "mbconv"))
    assert full.param_names == old.param_names == TRADE_PARAMS
    assert full.param("s1_type").choices == ("fused", "mbconv", "conv", "residual", "repvgg")
    assert full.dim == old.dim + 4 * 3 == 45
    cfg = old.sample(np.random.default_rng(0))
    assert full.validate(cfg) == old.validate(cfg)
    old_coords = [i for i, n in enumerate(_coord_names(full)) if not n.endswith(("=conv", "=residual", "=repvgg"))]
    np.testing.assert_array_equal(full.to_unit(cfg)[old_coords], old.to_unit(cfg))
    # a subset is kept in the canonical order; its defaults fall back to the first type
    dense = TradeSpace(**GLYPH, block_types=("repvgg", "conv"))
    assert dense.block_types == ("conv", "repvgg") and dense.param("s1_type").default == "conv"
    assert dense.to_dict()["block_types"] == ["conv", "repvgg"]
    for bad in ((), ("fused", "fused"), ("resnet",)):
        with pytest.raises(UsageError, match="block_types"):
            TradeSpace(**GLYPH, block_types=bad)


def _coord_names(space: TradeSpace) -> list[str]:
    # one name per unit-cube coordinate: a cat parameter "name=choice" per choice
    out: list[str] = []
    for p in space.params:
        out += [f"{p.name}={c}" for c in p.choices] if p.kind == "cat" else [p.name]
    return out


@pytest.mark.parametrize("kind", ["conv", "residual", "repvgg"])
def test_dense_types_canonical_describe_and_counts(glyph_space: TradeSpace, kind: str) -> None:
    cfg = dict(glyph_space.default(), s2_type=kind, s2_depth=2, s2_width=32, s2_kernel=5, s2_expand=6, s2_se=0.25)
    canon = glyph_space.canonical(cfg)
    # a dense type is 3x3 without expansion or SE: those are reset to the slot's defaults, one key
    assert (canon["s2_kernel"], canon["s2_expand"], canon["s2_se"]) == (3, glyph_space.param("s2_expand").default, 0.0)
    assert glyph_space.key(cfg) == glyph_space.key(dict(cfg, s2_kernel=3, s2_expand=2, s2_se=0.0))
    assert glyph_space.key(cfg) != glyph_space.key(dict(cfg, s2_width=24))
    assert [p.kernel for p in glyph_space.stage_plans(cfg) if p.index == 2] == [3]
    tag = {"conv": "C", "residual": "R", "repvgg": "RV"}[kind]
    assert f"| {tag}32x2 /2 |" in glyph_space.describe(cfg)
    model = glyph_space.build(cfg)
    assert glyph_space.estimate_params(cfg) == param_count(model) == glyph_space.count_params_meta(cfg)
    from kd_compile.students.common import deployed

    folded = param_count(deployed(model))
    assert glyph_space.deployed_params(cfg) == folded
    if kind == "repvgg":
        assert folded < param_count(model)
    else:
        assert folded == param_count(model)


def test_kd_hparams_of_composed_configs() -> None:
    from kd_compile.distill.hparams import kd_hparams, kd_space

    family, composed = _composed(input_shape=(1, 16, 16), num_classes=10)
    assert kd_space().default() == {"kd_tau": 4.0, "kd_alpha": 0.7}
    c = composed.sample(np.random.default_rng(0))
    arch = composed.split(c)[0]
    assert kd_hparams(c) == {"tau": c["kd_tau"], "alpha": c["kd_alpha"]}
    assert "kd_tau" not in arch and kd_hparams(arch) == {"tau": 4.0, "alpha": 0.7}
    # the architecture part builds the same network with or without the KD keys
    torch.manual_seed(0)
    a = family.build(arch)
    torch.manual_seed(0)
    b = family.build({**arch, "kd_tau": 2.0, "kd_alpha": 0.5})
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(a.eval()(x), b.eval()(x))
