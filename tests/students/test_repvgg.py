"""The deployed (folded) form of TRADE students: RepVGG folding keeps the function and drops
parameters, counts are exact for every block type in both forms, a candidate is costed on the
folded student, and the export writes the folded ONNX beside an unfolded, rebuildable
``student.pt``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from timm.models.byobnet import RepVggBlock
from torch import nn

from kd_compile.students import create_space
from kd_compile.students.common import deployed
from kd_compile.students.trade import TradeSpace
from kd_compile.students.trade_net import BLOCK_TYPES, StagePlan, conv_block
from kd_compile.targets import get_target
from kd_compile.testing.spaces import param_count, single_thread

GLYPH = {"input_shape": (1, 20, 20), "num_classes": 62}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def _perturb_bn(model: nn.Module, seed: int = 0) -> None:
    # fresh BatchNorms are the identity (mean 0, var 1, weight 1, bias 0): folding them would be
    # trivially right, so give every one the statistics and affine terms of a trained network
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


def _space() -> TradeSpace:
    space = create_space("trade", **GLYPH)
    assert isinstance(space, TradeSpace)
    return space


def _all_of(space: TradeSpace, kind: str, seed: int, **over: int) -> dict:
    """A random config (with the values ``over``) whose every stage has block type ``kind``."""
    cfg = {**space.sample(np.random.default_rng(seed)), **over}
    cfg.update({f"s{i}_type": kind for i in range(1, space.max_stages + 1)})
    return space.canonical(cfg)


@pytest.mark.parametrize(("in_chs", "stride", "kernel"), [(16, 1, 3), (8, 2, 3), (8, 1, 5), (16, 2, 5)])
def test_folded_repvgg_block_computes_the_same_with_fewer_params(in_chs: int, stride: int, kernel: int) -> None:
    torch.manual_seed(0)
    plan = StagePlan(1, "repvgg", 1, in_chs, 16, kernel, 1, 0.0, stride, (4, 4))
    block = conv_block(plan, in_chs, stride, nn.SiLU, 0.0)
    assert isinstance(block, RepVggBlock)
    _perturb_bn(block)
    block.eval()
    folded = deployed(block)
    # one conv with bias is left: no 1x1 branch, no identity BatchNorm
    assert folded.reparam_conv is not None and not hasattr(folded, "conv_1x1")
    assert [type(m) for m in folded.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))] == [nn.Conv2d]
    assert param_count(folded) < param_count(block)
    assert block.reparam_conv is None  # the original is untouched (deployed works on a copy)
    x = torch.randn(4, in_chs, 9, 9)
    with torch.no_grad():
        assert torch.allclose(folded(x), block(x), atol=1e-5, rtol=0)


def test_folded_student_computes_the_same_and_ships_fewer_params() -> None:
    space = _space()
    cfg = _all_of(space, "repvgg", 3, s1_depth=2, s2_depth=2, s3_depth=2, tf_depth=1)
    torch.manual_seed(0)
    model = space.build(cfg)
    _perturb_bn(model)
    model.train()
    folded = deployed(model)
    assert model.training and not folded.training  # the copy is in eval mode, the original as it was
    model.eval()
    x = torch.randn(8, *GLYPH["input_shape"])
    with torch.no_grad():
        err = float((folded(x) - model(x)).abs().max())
    assert err < 1e-5, err
    assert param_count(folded) == space.deployed_params(cfg) < param_count(model) == space.estimate_params(cfg)
    assert folded.feature_names == model.feature_names  # stage outputs keep their names
    assert not any(isinstance(m, RepVggBlock) and m.reparam_conv is None for m in folded.modules())
    # in place (the proposal screen's model, built only to be costed): the same fold, no copy
    with torch.no_grad():
        want = folded(x)
    same = deployed(model, inplace=True)
    assert same is model and not same.training
    with torch.no_grad():
        assert torch.equal(same(x), want)
    assert param_count(same) == param_count(folded)


@pytest.mark.parametrize("kind", BLOCK_TYPES)
def test_counts_are_exact_for_every_block_type(kind: str) -> None:
    for shape in (GLYPH, {"input_shape": (3, 32, 32), "num_classes": 10}):
        space = create_space("trade", **shape)
        assert isinstance(space, TradeSpace)
        for seed in range(6):
            cfg = _all_of(space, kind, seed)
            model = space.build(cfg)
            assert space.estimate_params(cfg) == param_count(model) == space.count_params_meta(cfg), space.describe(cfg)
            shipped = param_count(deployed(model))
            assert space.deployed_params(cfg) == shipped, space.describe(cfg)
            assert (shipped < param_count(model)) == (kind == "repvgg")


def test_mixed_block_types_count_exactly() -> None:
    space = _space()
    rng = np.random.default_rng(7)
    for _ in range(10):
        cfg = space.sample(rng)
        cfg.update({f"s{i}_type": BLOCK_TYPES[int(rng.integers(len(BLOCK_TYPES)))] for i in range(1, 5)})
        model = space.build(cfg)
        assert space.estimate_params(cfg) == param_count(model)
        assert space.deployed_params(cfg) == param_count(deployed(model))


# -- a candidate is costed on the folded student ------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from kd_compile.data import load_data

    return load_data("digits", image_size=12)


def _run(digits, **constraints):
    from kd_compile.config import Budget, Constraints
    from kd_compile.distill import TeacherCache
    from kd_compile.evaluate import Reference, RunContext
    from kd_compile.latency import plan_latency

    k = digits.num_classes
    g = torch.Generator().manual_seed(0)
    knowledge = TeacherCache.from_logits(
        torch.randn(len(digits.y_train), k, generator=g), torch.randn(len(digits.y_val), k, generator=g), digits.y_val
    )
    target = get_target("2080ti")
    return RunContext(
        space="trade",
        space_kwargs={"input_shape": list(digits.input_shape), "num_classes": k},
        target=target,
        constraints=Constraints(**{"max_latency": None, **constraints}),
        budget=Budget(proxy_epochs=0.2, proxy_data_fraction=0.3),
        seed=0,
        device="cpu",
        batch_size=64,
        augment_views=0,
        reference=Reference(params=1e5, flops=1e7, latency_ms=0.1, accuracy=0.9, acc_target=0.9),
        latency=plan_latency(target),
        data=digits,
        knowledge=knowledge,
    )


def test_candidate_costs_are_those_of_the_folded_student(digits) -> None:
    from kd_compile.evaluate import costs, evaluate_candidate
    from kd_compile.profilers import InputSpec
    from kd_compile.search.trial import TrialStatus

    space = create_space("trade", input_shape=digits.input_shape, num_classes=digits.num_classes)
    assert isinstance(space, TradeSpace)
    cfg = _all_of(space, "repvgg", 1, s1_depth=2, s2_depth=2, s3_depth=1, tf_depth=0)
    train_n, ship_n = space.estimate_params(cfg), space.deployed_params(cfg)
    assert ship_n < train_n
    # a params limit between the two forms: the folded student fits, so the candidate is built
    # and costed; max_flops=1 then rejects it before any training
    t = evaluate_candidate(_run(digits, max_params=(ship_n + train_n) // 2, max_flops=1), cfg, 1.0, 0)
    assert t.status is TrialStatus.INFEASIBLE and "FLOPs" in t.error and "params" not in t.error, t.error
    torch.manual_seed(0)
    folded = deployed(space.build(cfg))
    cnt, lat = costs(folded, InputSpec(tuple(space.input_shape)), get_target("2080ti"))
    assert t.metrics["params"] == cnt.params == ship_n
    assert t.metrics["flops"] == cnt.flops
    assert t.metrics["latency_ms"] == pytest.approx(lat.latency_ms, rel=1e-9)
    # and the folded latency is what ships: below the unfolded one (three branches, more kernels)
    _, lat_train = costs(space.build(cfg).eval(), InputSpec(tuple(space.input_shape)), get_target("2080ti"))
    assert lat.latency_ms < lat_train.latency_ms
    # a limit below the folded count still rejects before building
    t = evaluate_candidate(_run(digits, max_params=ship_n - 1), cfg, 1.0, 0)
    assert t.status is TrialStatus.INFEASIBLE and "params" in t.error and t.metrics["params"] == ship_n


def test_export_writes_the_folded_onnx_and_a_rebuildable_checkpoint(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    from kd_compile.export import export_student
    from kd_compile.profilers import InputSpec
    from kd_compile.teacher import load_teacher

    space = _space()
    cfg = _all_of(space, "repvgg", 2, s1_depth=2, s2_depth=2, tf_depth=0)
    torch.manual_seed(0)
    model = space.build(cfg)
    _perturb_bn(model)
    model.eval()
    paths = export_student(model, space, cfg, InputSpec(tuple(space.input_shape)), tmp_path, meta={}, engine=False)
    graph = onnx.load(str(paths["student.onnx"])).graph
    n_convs = sum(n.op_type == "Conv" for n in graph.node)
    # one Conv per folded block plus the stem and the head conv (no 1x1 branches)
    n_blocks = sum(p.depth for p in space.stage_plans(cfg))
    assert n_convs == 1 + n_blocks + (1 if int(cfg["head_width"]) > 0 else 0)
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)
    # student.pt keeps the unfolded weights: it rebuilds through the space, without trust
    back = load_teacher(paths["student.pt"]).module
    assert param_count(back) == space.estimate_params(cfg)
    x = torch.randn(3, *GLYPH["input_shape"])
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-6)


class _RepTeacher(nn.Module):
    """A user's teacher with a timm RepVGG block: it deploys folded."""

    def __init__(self) -> None:
        super().__init__()
        self.block = RepVggBlock(3, 8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


class _FuseMeansSomethingElse(nn.Module):
    """A module whose ``fuse`` is not timm's: folding it changes what the model computes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))

    def fuse(self) -> nn.Module:
        return _FiveMeans()  # smaller, same output form, another function


class _FiveMeans(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)).repeat(1, 2)[:, :5]


def test_a_teacher_is_costed_folded_only_when_folding_keeps_its_outputs() -> None:
    from kd_compile.students.common import deployed_if_equivalent

    teacher = _RepTeacher()
    _perturb_bn(teacher)
    teacher.train()
    got, note = deployed_if_equivalent(teacher, (3, 16, 16))
    assert got is not teacher and "folded" in note and not note.startswith("not")
    assert param_count(got) < param_count(teacher) and teacher.training  # the given model is untouched
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(got(x), teacher.eval()(x), rtol=1e-4, atol=1e-4)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert deployed_if_equivalent(plain, (3, 16, 16)) == (plain, "")  # nothing to fold: as given
    import threading

    plain.lock = threading.Lock()  # cannot be deep-copied; with nothing to fold it need not be
    assert deployed_if_equivalent(plain, (3, 16, 16)) == (plain, "")
    odd = nn.Sequential(_FuseMeansSomethingElse())
    got, note = deployed_if_equivalent(odd, (3, 16, 16))
    assert got is odd and note.startswith("not folded") and "differ" in note


def test_profile_gives_the_deployed_form_as_compile_costs_a_teacher() -> None:
    import kd_compile

    teacher = _RepTeacher()
    _perturb_bn(teacher)
    got = kd_compile.profile(teacher, target="2080ti", method="predict", image_size=16)
    assert got["params"] == param_count(deployed(teacher)) < param_count(teacher)
    assert "folded" in got["deploy_form"]
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    got = kd_compile.profile(plain, target="2080ti", method="predict", image_size=16)
    assert got["params"] == param_count(plain) and got["deploy_form"] is None
