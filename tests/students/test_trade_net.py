"""Tests of the TRADE student network (kd_compile/students/trade_net.py): modules, conv blocks,
exact parameter counts, feature layers and ONNX export of built students."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from students_support import samples
from torch import nn

from kd_compile.errors import UsageError
from kd_compile.students.common import deployed, feature_layers
from kd_compile.students.trade import TradeSpace
from kd_compile.students.trade_net import (
    BLOCK_TYPES,
    DENSE_TYPES,
    StagePlan,
    TokenTransformer,
    TradeNet,
    act_layer,
    block_params,
    conv_block,
    transformer_params,
)
from kd_compile.testing.spaces import param_count


def test_token_transformer_projects_to_a_dim_divisible_by_heads() -> None:
    tf = TokenTransformer(in_chs=6, grid=(3, 3), depth=1, num_heads=4, mlp_ratio=2.0)
    assert tf.dim == 8 and isinstance(tf.proj, nn.Linear)
    assert tf(torch.randn(2, 6, 3, 3)).shape == (2, 8, 3, 3)
    assert param_count(tf) == transformer_params(6, 9, 1, 4, 2.0)


@pytest.mark.parametrize("kind", ["fused", "mbconv"])
@pytest.mark.parametrize("expand", [1, 4])
@pytest.mark.parametrize("se", [0.0, 0.25])
def test_block_params_match_built_blocks(kind: str, expand: int, se: float) -> None:
    plan = StagePlan(1, kind, 1, 12, 16, 5, expand, se, 2, (4, 4))
    for in_chs, stride in ((12, 2), (16, 1)):
        block = conv_block(plan, in_chs, stride, nn.SiLU, 0.0)
        assert param_count(block) == block_params(kind, in_chs, 16, 5, expand, se)
        assert block(torch.randn(1, in_chs, 8, 8)).shape == (1, 16, 8 // stride, 8 // stride)


@pytest.mark.parametrize("kind", sorted(DENSE_TYPES))
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
def test_dense_block_params_match_built_blocks(kind: str, kernel: int, act: str) -> None:
    # every shape case: a downsampling first block, a width change at stride 1, a kept shape
    # (the residual shortcut and the RepVGG identity branch exist only in the last)
    plan = StagePlan(1, kind, 1, 12, 16, kernel, 4, 0.25, 2, (4, 4))
    for in_chs, stride in ((12, 2), (12, 1), (16, 2), (16, 1)):
        block = conv_block(plan, in_chs, stride, act_layer(act), 0.1)
        args = (kind, in_chs, 16, kernel, 4, 0.25)
        assert param_count(block) == block_params(*args, stride=stride), (in_chs, stride)
        folded = deployed(block)
        assert param_count(folded) == block_params(*args, stride=stride, deployed=True), (in_chs, stride)
        x = torch.randn(2, in_chs, 7, 7)
        assert block(x).shape == folded(x).shape == (2, 16, 4 if stride == 2 else 7, 4 if stride == 2 else 7)


def test_unknown_block_type() -> None:
    assert BLOCK_TYPES == ("fused", "mbconv", "conv", "residual", "repvgg")
    with pytest.raises(UsageError, match="block type"):
        conv_block(StagePlan(1, "vgg", 1, 8, 8, 3, 1, 0.0, 1, (4, 4)), 8, 1, nn.ReLU, 0.0)
    with pytest.raises(UsageError, match="block type"):
        block_params("vgg", 8, 8, 3, 1, 0.0)


def test_act_layer() -> None:
    assert act_layer("hardswish") is nn.Hardswish
    with pytest.raises(UsageError, match="relu"):
        act_layer("tanh")


def test_feature_layers_are_stage_outputs(glyph_space: TradeSpace) -> None:
    cfg = dict(glyph_space.default(), s2_depth=0, s4_depth=2, tf_depth=1)
    model = glyph_space.build(cfg).eval()
    assert isinstance(model, TradeNet)
    names = glyph_space.feature_layers(model)
    assert names == ["stages.s1", "stages.s3", "stages.s4", "tf"]
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
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
    cfgs = samples(space, 3, seed=11)
    tf = dict(cfgs[0], tf_depth=2, tf_heads=4, tf_mlp_ratio=2, s4_depth=1, s4_se=0.25)
    mb = dict(cfgs[1], s1_type="mbconv", s1_expand=1, s2_type="mbconv", s2_depth=2, tf_depth=0)
    dense = dict(cfgs[2], s1_type="conv", s2_type="residual", s2_depth=2, s3_type="repvgg", s3_depth=2, s4_depth=0)
    return [space.canonical(c) for c in (tf, mb, dense)]


def test_onnx_legacy_export_matches_onnxruntime(glyph_space: TradeSpace) -> None:
    pytest.importorskip("onnxruntime")
    cfgs = _onnx_configs(glyph_space)
    assert any(int(c["tf_depth"]) > 0 for c in cfgs)
    assert any("RV" in glyph_space.describe(c) for c in cfgs)
    for cfg in cfgs:
        torch.manual_seed(0)
        model = glyph_space.build(cfg).eval()
        for m in (model, deployed(model)):  # the training form and the folded one both export
            err = _onnx_check(m, torch.randn(2, 1, 24, 24), dynamo=False)
            assert err < 1e-4, (glyph_space.describe(cfg), err)


def test_onnx_dynamo_export_matches_onnxruntime(glyph_space: TradeSpace) -> None:
    # the default (dynamo) exporter needs onnxscript, which is not a dependency of kd-compile
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    cfg = _onnx_configs(glyph_space)[0]
    model = glyph_space.build(cfg).eval()
    assert _onnx_check(model, torch.randn(2, 1, 24, 24)) < 1e-4
