"""Tests of the TRADE and CNN search spaces (kd_compile/students/trade.py)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from kd_compile.errors import UsageError
from kd_compile.students import create_space, list_spaces
from kd_compile.students.trade import (
    CnnSpace,
    TokenTransformer,
    TradeNet,
    TradeSpace,
    _transformer_params,
    feature_layers,
    stride_plan,
)

GLYPH = {"input_shape": (1, 24, 24), "num_classes": 62}
RGB32 = {"input_shape": (3, 32, 32), "num_classes": 10}
SEEDS = range(30)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _samples(space: TradeSpace | CnnSpace, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny: with several OpenMP threads on a loaded machine each small conv
    # waits for busy-spinning workers (measured 20x slower forwards on 2 shared cores).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def glyph_space() -> TradeSpace:
    space = create_space("trade", **GLYPH)
    assert isinstance(space, TradeSpace)
    return space


def test_registered() -> None:
    assert {"trade", "cnn"} <= set(list_spaces())
    assert isinstance(create_space("cnn", **GLYPH), CnnSpace)


@pytest.mark.parametrize("kind", ["trade", "cnn"])
def test_unit_round_trip_is_canonical(kind: str) -> None:
    space = create_space(kind, **GLYPH)
    for cfg in _samples(space, 40, seed=1):
        assert cfg == space.canonical(cfg)
        u = space.to_unit(cfg)
        assert u.shape == (space.dim,) and np.all((u >= 0) & (u <= 1))
        back = space.from_unit(u)
        # floats pass through exactly; everything else is equal
        assert back.keys() == cfg.keys()
        for k, v in cfg.items():
            assert (
                back[k] == pytest.approx(v, rel=1e-12) if isinstance(v, float) else back[k] == v
            ), k
        assert space.validate(cfg) == cfg


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
        assert space.estimate_params(cfg) == _count(model), space.describe(cfg)
        describes.add(space.describe(cfg))
    # 30 seeds should give 30 different architectures, not one collapsed default
    assert len(describes) == len(SEEDS)


@pytest.mark.parametrize("kind", ["trade", "cnn"])
def test_estimate_matches_meta_build(kind: str) -> None:
    # the analytic count must follow timm's layer layout; the meta build is the same code as build
    for shape in (GLYPH, {"input_shape": (3, 224, 224), "num_classes": 1000}):
        space = create_space(kind, **shape)
        for cfg in _samples(space, 15, seed=5):
            assert space.estimate_params(cfg) == space.count_params_meta(cfg), space.describe(cfg)


def test_token_transformer_projects_to_a_dim_divisible_by_heads() -> None:
    tf = TokenTransformer(in_chs=6, grid=(3, 3), depth=1, num_heads=4, mlp_ratio=2.0)
    assert tf.dim == 8 and isinstance(tf.proj, nn.Linear)
    assert tf(torch.randn(2, 6, 3, 3)).shape == (2, 8, 3, 3)
    assert _count(tf) == _transformer_params(6, 9, 1, 4, 2.0)


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
    counts = np.array([glyph_space.estimate_params(c) for c in _samples(glyph_space, 300, seed=7)])
    frac = float((counts < 60_000).mean())
    print(
        f"\ntrade 24x24x1/62, 300 samples: <60K {frac:.2f}, 10K-200K "
        f"{float(((counts >= 10_000) & (counts < 200_000)).mean()):.2f}, "
        f"min {counts.min()}, median {int(np.median(counts))}, max {counts.max()}"
    )
    assert frac >= 0.25
    assert counts.min() < 10_000 and counts.max() > 500_000


def _onnx_check(model: nn.Module, x: torch.Tensor, **kw) -> float:
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
            **kw,
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    # a different batch size than at export: the batch axis must really be dynamic
    x3 = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        ref = model(x3).numpy()
    out = sess.run(None, {"input": x3.numpy()})[0]
    return float(np.abs(out - ref).max())


def _onnx_configs(space: TradeSpace) -> list[dict]:
    cfgs = _samples(space, 3, seed=11)
    tf = dict(cfgs[0], tf_depth=2, tf_heads=4, tf_mlp_ratio=2, s4_depth=1, s4_se=0.25)
    mb = dict(cfgs[1], s1_type="mbconv", s1_expand=1, s2_type="mbconv", s2_depth=2, tf_depth=0)
    return [space.canonical(c) for c in (tf, mb, cfgs[2])]


def test_onnx_legacy_export_matches_onnxruntime(glyph_space: TradeSpace) -> None:
    pytest.importorskip("onnxruntime")
    cfgs = _onnx_configs(glyph_space)
    assert any(int(c["tf_depth"]) > 0 for c in cfgs)
    for cfg in cfgs:
        torch.manual_seed(0)
        model = glyph_space.build(cfg).eval()
        err = _onnx_check(model, torch.randn(2, 1, 24, 24), dynamo=False)
        assert err < 1e-4, (glyph_space.describe(cfg), err)


def test_onnx_dynamo_export_matches_onnxruntime(glyph_space: TradeSpace) -> None:
    # the default (dynamo) exporter needs onnxscript, which is not a dependency of kd-compile
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    cfg = _onnx_configs(glyph_space)[0]
    model = glyph_space.build(cfg).eval()
    assert _onnx_check(model, torch.randn(2, 1, 24, 24)) < 1e-4


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
    cfg = dict(_onnx_configs(glyph_space)[0], kd_tau=2.0, kd_alpha=0.3)
    torch.manual_seed(123)
    a = glyph_space.build(cfg).state_dict()
    torch.manual_seed(123)
    b = glyph_space.build(dict(cfg, kd_tau=7.5, kd_alpha=0.9)).state_dict()
    torch.manual_seed(124)
    c = glyph_space.build(cfg).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert glyph_space.kd_hparams(cfg) == {"tau": 2.0, "alpha": 0.3}


def test_feature_layers_are_stage_outputs(glyph_space: TradeSpace) -> None:
    cfg = dict(glyph_space.default(), s2_depth=0, s4_depth=2, tf_depth=1)
    model = glyph_space.build(cfg).eval()
    assert isinstance(model, TradeNet)
    names = glyph_space.feature_layers(model)
    assert names == ["stages.s1", "stages.s3", "stages.s4", "tf"]
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))
        )
        for n in names
    ]
    with torch.no_grad():
        model(torch.randn(2, 1, 24, 24))
    for h in hooks:
        h.remove()
    for p in model.plans:
        assert shapes[f"stages.s{p.index}"] == (2, p.out_chs, *p.out_hw)
    assert shapes["tf"] == shapes["stages.s4"]
    with pytest.raises(UsageError):
        feature_layers(nn.Linear(2, 2))


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
    assert (
        glyph_space.describe(cfg)
        == "stem16 /2 | FMB16x2 k3 e1 /2 | MB64x1 k5 e4 se.25 /2 | T1 h2 m2 | head128"
    )


def test_space_options_and_errors() -> None:
    no_tf = TradeSpace(**GLYPH, transformer=False)
    assert not any(n.startswith("tf_") for n in no_tf.param_names)
    for cfg in _samples(no_tf, 10):
        assert "T" not in no_tf.describe(cfg).split(" | ")[-2]
        assert isinstance(no_tf.build(cfg).tf, nn.Identity)
    wide = TradeSpace(**GLYPH, width_scale=2.0)
    narrow = TradeSpace(**GLYPH)
    assert max(wide._by_name["s4_width"].choices) == 2 * max(narrow._by_name["s4_width"].choices)
    assert (
        len(
            TradeSpace(**GLYPH, max_stages=6).stage_plans(
                TradeSpace(**GLYPH, max_stages=6).default()
            )
        )
        >= 1
    )
    with pytest.raises(UsageError):
        TradeSpace(input_shape=(1, 24), num_classes=3)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        TradeSpace(**GLYPH, max_stages=9)
    with pytest.raises(UsageError):
        narrow.validate(dict(narrow.default(), s1_depth=0))  # stage 1 cannot be dropped
    with pytest.raises(UsageError):
        narrow.validate(dict(narrow.default(), s2_width=20))


def test_cnn_space() -> None:
    space = create_space("cnn", **RGB32)
    assert isinstance(space, CnnSpace)
    x = torch.randn(2, 3, 32, 32)
    for cfg in _samples(space, 10, seed=3):
        model = space.build(cfg).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 10)
        assert space.estimate_params(cfg) == _count(model)
        strides = space.strides(cfg)
        assert strides[0] == 1 and len(strides) == cfg["depth"]
        # the final map keeps at least 3x3 (32 -> 16 -> 8 -> 4 at most)
        assert math.ceil(32 / 2 ** strides.count(2)) >= 3
        assert len(space.feature_layers(model)) == cfg["depth"]
    cfg = {
        "depth": 2,
        "w1": 16,
        "w2": 32,
        "w3": 64,
        "w4": 8,
        "w5": 8,
        "kd_tau": 4.0,
        "kd_alpha": 0.7,
    }
    assert space.describe(cfg) == "conv16 | conv32 /2"
    assert space.key(cfg) == space.key(dict(cfg, w3=128, w4=256))
    assert space.estimate_params(cfg) == (3 * 9 * 16 + 2 * 16) + (16 * 9 * 32 + 2 * 32) + (
        32 * 10 + 10
    )


def test_search_kd_false_searches_the_architecture_only() -> None:
    full = create_space("trade", input_shape=(1, 16, 16), num_classes=10)
    arch = create_space("trade", input_shape=(1, 16, 16), num_classes=10, search_kd=False)
    assert set(full.param_names) - set(arch.param_names) == {"kd_tau", "kd_alpha"}
    assert arch.dim == full.dim - 2
    c = arch.sample(np.random.default_rng(0))
    assert "kd_tau" not in c and arch.kd_hparams(c) == {"tau": 4.0, "alpha": 0.7}
    # the same architecture builds the same network in both spaces
    torch.manual_seed(0)
    a = arch.build(c)
    torch.manual_seed(0)
    b = full.build({**c, "kd_tau": 2.0, "kd_alpha": 0.5})
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(a.eval()(x), b.eval()(x))
