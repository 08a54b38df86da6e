"""ONNX lint for TensorRT: which nodes the TensorRT 10 ONNX parser would reject, without TensorRT.

The operator tables are data from onnx-tensorrt ``docs/operators.md`` (TensorRT 10.15, opset 9
to 24; ``TRT_OPS_SOURCE``): "Y" rows are ``TRT_SUPPORTED_OPS``, "N" rows
``TRT_UNSUPPORTED_OPS``. ``lint_onnx_for_tensorrt`` checks every node (If/Loop/Scan bodies too)
against them and against the statically checkable per-operator restrictions of that page.
Needs ``onnx`` only (imported lazily).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ..base import lazy_import
from ..onnx_export import ONNX_HINT

# ---------------------------------------------------------------------------------------------
# ONNX operator support of the TensorRT ONNX parser, as data.
# Source: onnx/onnx-tensorrt, docs/operators.md, "TensorRT 10.15 supports operators in the
# inclusive range of opset 9 to opset 24" (https://github.com/onnx/onnx-tensorrt/blob/main/
# docs/operators.md). "Y" rows go to TRT_SUPPORTED_OPS, "N" rows to TRT_UNSUPPORTED_OPS.
# ---------------------------------------------------------------------------------------------
TRT_OPS_SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15, opset 9-24)"
TRT_OPSET_RANGE = (9, 24)

TRT_SUPPORTED_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
    Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax
    Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan
    Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

TRT_UNSUPPORTED_OPS: frozenset[str] = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im
    CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
    ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
    NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
    QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
    SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
    StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()
)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    onnx = lazy_import("onnx", ONNX_HINT)
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _restriction(node: Any) -> str | None:
    """The documented per-operator restriction this node breaks, if one is checkable statically."""
    op = node.op_type
    if op in ("MaxPool", "AveragePool", "LpPool"):
        dil = _attr(node, "dilations")
        if dil and any(int(d) != 1 for d in dil):
            return "`dilations` must be empty or all ones"
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            return "`Indices` output tensor unsupported"
    if op == "LayerNormalization" and any(o for o in list(node.output)[1:]):
        return "only the first output `Y` is supported"
    if op == "Resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode not in ("nearest", "linear"):
            return f"resize mode '{mode}' unsupported (supported: nearest, linear)"
        if int(_attr(node, "antialias", 0) or 0):
            return "antialiasing is not supported"
    if op == "ScatterND":
        red = _attr(node, "reduction", b"none")
        red = red.decode() if isinstance(red, bytes) else str(red)
        if red != "none":
            return "`reduction` other than `none` is not supported"
    if op == "TopK" and int(_attr(node, "sorted", 1)) != 1:
        return "`sorted` must be 1"
    if op == "Dropout" and len(node.input) > 2 and node.input[2]:
        return "`is_training` must be an initializer evaluating to False"
    return None


def iter_nodes(graph: Any) -> Iterable[Any]:
    """Every node of ``graph``, including the bodies of If/Loop/Scan, depth first."""
    onnx = lazy_import("onnx", ONNX_HINT)
    for node in graph.node:
        yield node
        for a in node.attribute:
            # bodies of If/Loop/Scan are parsed by TensorRT too
            if a.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from iter_nodes(g)


def lint_onnx_for_tensorrt(onnx_path_or_model: str | Path | Any) -> list[str]:
    """List the reasons TensorRT's ONNX parser would reject (part of) a model.

    Checks every node (including If/Loop/Scan bodies) against the onnx-tensorrt operator
    table for TensorRT 10.15 (``TRT_OPS_SOURCE``): operators marked unsupported, operators the
    table does not list, operators of non-default domains (need a plugin), statically
    checkable restrictions (pool dilations, MaxPool indices, Resize modes, ...), and the
    supported opset range 9-24. The table says a "Y" does not promise every configuration
    builds, so an empty list means "nothing known to fail", not a guarantee.

    Args:
        onnx_path_or_model: path to an ``.onnx`` file or an ``onnx.ModelProto``.

    Returns:
        One message per problem kind, sorted, e.g.
        ``"MaxUnpool: not supported by the TensorRT ONNX parser (1 node: 'unpool')"``.
    """
    onnx = lazy_import("onnx", ONNX_HINT)
    if isinstance(onnx_path_or_model, (str, Path)):
        p = Path(onnx_path_or_model)
        if not p.is_file():
            raise UsageError(f"ONNX file not found: {p}")
        model = onnx.load(str(p), load_external_data=False)
    elif isinstance(onnx_path_or_model, onnx.ModelProto):
        model = onnx_path_or_model
    else:
        raise UsageError(
            "lint_onnx_for_tensorrt needs a path or onnx.ModelProto, "
            f"got {type(onnx_path_or_model).__name__}"
        )
    problems: dict[str, list[str]] = defaultdict(list)
    lo, hi = TRT_OPSET_RANGE
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not lo <= imp.version <= hi:
            problems[f"opset {imp.version}: outside TensorRT's supported range {lo}-{hi}"].append(
                ""
            )
    for i, node in enumerate(iter_nodes(model.graph)):
        name = node.name or f"#{i}"
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            problems[
                f"{node.domain}::{op}: custom-domain operator, needs a TensorRT plugin"
            ].append(name)
        elif op in TRT_UNSUPPORTED_OPS:
            problems[f"{op}: not supported by the TensorRT ONNX parser"].append(name)
        elif op not in TRT_SUPPORTED_OPS:
            problems[f"{op}: not in the TensorRT ONNX operator table"].append(name)
        else:
            why = _restriction(node)
            if why:
                problems[f"{op}: {why}"].append(name)
    out = []
    for msg, nodes in problems.items():
        nodes = [n for n in nodes if n]
        if nodes:
            shown = ", ".join(repr(n) for n in nodes[:3]) + (", ..." if len(nodes) > 3 else "")
            msg = f"{msg} ({len(nodes)} node{'s' if len(nodes) > 1 else ''}: {shown})"
        out.append(msg)
    return sorted(out)


__all__ = [
    "TRT_OPSET_RANGE",
    "TRT_OPS_SOURCE",
    "TRT_SUPPORTED_OPS",
    "TRT_UNSUPPORTED_OPS",
    "iter_nodes",
    "lint_onnx_for_tensorrt",
]
