"""TensorRT ONNX lint (``kd_compile.profilers.tensorrt.lint``) on real exported and hand-built ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from kd_compile.errors import UsageError
from kd_compile.profilers import InputSpec
from kd_compile.profilers.onnx_export import export_onnx
from kd_compile.profilers.tensorrt import (
    TRT_OPS_SOURCE,
    TRT_OPSET_RANGE,
    TRT_SUPPORTED_OPS,
    TRT_UNSUPPORTED_OPS,
    lint_onnx_for_tensorrt,
)
from kd_compile.testing.profilers import tiny_cnn

SPEC = InputSpec((3, 16, 16), batch=2)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_cnn(), SPEC, tmp_path_factory.mktemp("onnx") / "cnn.onnx").path


def test_operator_table_is_consistent() -> None:
    assert not TRT_SUPPORTED_OPS & TRT_UNSUPPORTED_OPS
    assert {
        "Conv",
        "Gemm",
        "MatMul",
        "Softmax",
        "LayerNormalization",
        "Relu",
        "Resize",
    } <= TRT_SUPPORTED_OPS
    assert {"MaxUnpool", "Unique", "QLinearConv"} <= TRT_UNSUPPORTED_OPS
    assert TRT_OPSET_RANGE == (9, 24)


def test_lint_clean_cnn(cnn_onnx: Path) -> None:
    assert lint_onnx_for_tensorrt(cnn_onnx) == []
    assert lint_onnx_for_tensorrt(onnx.load(str(cnn_onnx))) == []


def test_lint_flags_maxunpool(tmp_path: Path) -> None:
    # (torch 2.15's TorchScript exporter cannot export nn.MaxUnpool2d, so the graph is built
    # directly, as another exporter would write it, and validated by the ONNX checker)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    g = helper.make_graph(
        [
            helper.make_node(
                "MaxPool", ["x"], ["p", "idx"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
            ),
            helper.make_node(
                "MaxUnpool", ["p", "idx"], ["y"], name="unpool", kernel_shape=[2, 2], strides=[2, 2]
            ),
        ],
        "g",
        [x],
        [y],
    )
    path = tmp_path / "u.onnx"
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    assert lint_onnx_for_tensorrt(path) == [
        "MaxPool: `Indices` output tensor unsupported (1 node: 'pool')",
        "MaxUnpool: not supported by the TensorRT ONNX parser (1 node: 'unpool')",
    ]


def _graph_model(
    nodes: list[Any], opset: int = 17, extra_opsets: list[Any] = ()
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def test_lint_reports_each_problem_kind() -> None:
    then_g = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], name="inner_unique")],
        "then",
        [],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("Unique", ["a"], ["b"], name="uniq"),
        helper.make_node("FooBar", ["a"], ["c"], name="foo"),
        helper.make_node("FusedConv", ["a"], ["d"], name="ms", domain="com.microsoft"),
        helper.make_node(
            "MaxPool", ["a"], ["e"], name="dil", kernel_shape=[2, 2], dilations=[2, 2]
        ),
        helper.make_node("Resize", ["a", "", "s"], ["f"], name="cubic", mode="cubic"),
        helper.make_node(
            "If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=then_g
        ),
    ]
    problems = lint_onnx_for_tensorrt(
        _graph_model(nodes, opset=8, extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    )
    text = "\n".join(problems)
    assert "opset 8: outside TensorRT's supported range 9-24" in text
    assert (
        "Unique: not supported by the TensorRT ONNX parser "
        "(3 nodes: 'uniq', 'inner_unique', 'inner_unique')" in text
    )
    assert "FooBar: not in the TensorRT ONNX operator table (1 node: 'foo')" in text
    assert "com.microsoft::FusedConv: custom-domain operator, needs a TensorRT plugin" in text
    assert "MaxPool: `dilations` must be empty or all ones (1 node: 'dil')" in text
    assert "Resize: resize mode 'cubic' unsupported" in text
    assert not any("Relu" in p or "If" in p.split(":")[0] for p in problems)
    assert problems == sorted(problems)


def test_lint_rejects_bad_argument(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        lint_onnx_for_tensorrt(tmp_path / "missing.onnx")
    with pytest.raises(UsageError):
        lint_onnx_for_tensorrt(42)


def test_operator_table_cites_its_source() -> None:
    assert "onnx-tensorrt" in TRT_OPS_SOURCE and "operators.md" in TRT_OPS_SOURCE
