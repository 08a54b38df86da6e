"""How each runtime groups a model's ATen ops into the kernels it launches (the roofline's units).

Fusion rules per runtime (the graph rewrites each runtime is documented to do):

* ``tensorrt``: BatchNorm after a conv/linear is folded into its weights; pointwise ops
  (activations, residual adds, scales) are fused into the preceding kernel; LayerNorm/GroupNorm,
  pools and layout copies (a transpose or channel shuffle made contiguous) start a kernel of
  their own (which absorbs following pointwise ops). A concat costs nothing when its producers
  can write into the output in place (concat elimination); each input it must copy (one that
  other layers also read, or a view) is a copy kernel of its own, so a DenseNet block, whose
  every concat re-reads all earlier features, launches one copy per earlier layer.
* ``inductor`` (``torch.compile``, its default mode on a GPU): convolutions and matmuls stay library
  calls (cuDNN/cuBLAS) that nothing fuses into; BatchNorm is not folded (Inductor folds it only
  with ``freezing``); each run of pointwise ops, norms and pools between two library calls is one
  generated Triton kernel; a concat is eliminated as TensorRT's is. (Its library calls' speed
  against eager PyTorch's is a fitted constant, ``s_compile``: :mod:`.roofline`.)
* ``onnxruntime``: BN folded into conv; one activation fused into the preceding conv/GEMM
  (ORT's ``FusedConv``/``FusedGemm``); every other op is its own kernel.
* ``torch`` (eager): no fusion, every ATen op is a kernel, and each pays the framework's
  dispatch on the host. A concat is one kernel (ONNX Runtime's too). A Python-level view call
  (``view``, ``transpose``, slicing) is a host-only "kernel": dispatched like any op, no GPU work.
  Graph runtimes resolve views at build time: they launch nothing for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .counting import OpRecord

# Kernel classes: GEMM-like classes have their own compute efficiency.
KERNEL_CLASSES = ("conv", "dwconv", "matmul", "attention", "elementwise", "view")
_CLASS_INDEX = {c: i for i, c in enumerate(KERNEL_CLASSES)}
# op class from counting -> kernel class; norm/pool are memory-bound like pointwise ops.
_TO_KERNEL = {"conv": "conv", "dwconv": "dwconv", "matmul": "matmul", "attention": "attention",
              "batchnorm": "elementwise", "norm": "elementwise", "pool": "elementwise", "elementwise": "elementwise",
              "copy": "elementwise", "concat": "elementwise", "view": "view"}
# ATen ops that go through a library call (cuDNN/cuBLAS/fused norm kernels): heavier to dispatch.
LIBRARY_OPS = frozenset({"conv", "dwconv", "matmul", "attention", "batchnorm", "norm"})
# Ops a compiler leaves to cuDNN/cuBLAS (``torch.compile``): what lies between two of them is generated code.
GEMM_OPS = frozenset({"conv", "dwconv", "matmul", "attention"})


@dataclass(frozen=True)
class RuntimeRules:
    """How a runtime groups ops into kernels and what it pays on the host to issue them.

    Attributes:
        fold_bn: BatchNorm after conv/linear disappears (weights folded at build time).
        fuse_pointwise: every pointwise op after any kernel joins it.
        fuse_one_activation: only a single activation right after conv/GEMM joins it.
        eliminate_concat: a concat's producers write into its output; only the inputs that
            cannot (``OpRecord.moved_bytes``) are copied, one kernel each.
        per_op_host: the host pays per ATen op by op class (eager framework dispatch) rather
            than a flat cost per launched kernel.
        fuse_between_library: every op but a conv/matmul/attention (``GEMM_OPS``) joins a
            preceding kernel that is not one of those: a compiler's generated kernels between
            library calls (``torch.compile``).
    """

    fold_bn: bool
    fuse_pointwise: bool
    fuse_one_activation: bool
    per_op_host: bool
    eliminate_concat: bool = False
    fuse_between_library: bool = False


RUNTIME_RULES: dict[str, RuntimeRules] = {
    "tensorrt": RuntimeRules(True, True, False, False, eliminate_concat=True),
    "inductor": RuntimeRules(False, False, False, False, eliminate_concat=True, fuse_between_library=True),
    "onnxruntime": RuntimeRules(True, False, True, False),
    "torch": RuntimeRules(False, False, False, True),
}


@dataclass(frozen=True)
class Kernel:
    """One launched kernel (a fused group of ops), at batch 1, fp32 bytes.

    Attributes:
        name: module of the kernel's first op.
        op: kernel class (``KERNEL_CLASSES``).
        flops: FLOPs of its ops.
        act_bytes: activation bytes read and written.
        weight_bytes: parameter bytes read.
        ch: small GEMM dimension of the head op (0 for non-GEMM kernels).
        n_ops: ATen ops fused into it.
        n_lib: of those, library ops (``LIBRARY_OPS``).
    """

    name: str
    op: str
    flops: int
    act_bytes: int
    weight_bytes: int
    ch: int
    n_ops: int
    n_lib: int = 0


def fuse(ops: Sequence[OpRecord], runtime: str) -> list[Kernel]:
    """Group ATen ops into the kernels ``runtime`` launches (rules in the module docstring).

    A fused follower's output replaces the head's output in the traffic, and any input of the
    follower that is not the chained tensor (a residual) is still read.
    """
    rules = RUNTIME_RULES[runtime]
    kernels: list[dict[str, Any]] = []
    for r in ops:
        if r.op == "view" and not rules.per_op_host:
            continue  # resolved when the graph is built
        prev = kernels[-1] if kernels else None
        if r.op == "concat" and rules.eliminate_concat:
            if r.ch == 0 and prev is not None:
                prev["n"] += 1  # written in place; what follows cannot fold into the producers
                prev["n_pw"] += 1
                continue
            each = r.moved_bytes // r.ch if r.ch else 0
            for _ in range(r.ch):
                kernels.append({"name": r.module or "(model)", "op": "concat", "cls": "elementwise", "flops": 0,
                                "act": 2 * each, "out": each, "w": 0, "ch": 0, "n": 1, "n_pw": 1, "lib": 0})
            continue
        absorb = False
        if prev is not None:
            gemm_head = prev["op"] in ("conv", "dwconv", "matmul")
            if (r.op == "batchnorm" and rules.fold_bn and gemm_head and prev["n_pw"] == 0) or (
                r.op == "elementwise" and rules.fuse_pointwise
            ):
                absorb = True
            elif r.op == "elementwise" and rules.fuse_one_activation and gemm_head and prev["n_pw"] == 0:
                absorb = r.in_bytes <= prev["out"]  # a unary activation, not a residual add
            elif rules.fuse_between_library:
                absorb = r.op not in GEMM_OPS and prev["op"] not in GEMM_OPS
        if absorb and prev is not None:
            prev["act"] += max(0, r.in_bytes - prev["out"]) + r.out_bytes - prev["out"]
            prev["out"] = r.out_bytes
            prev["w"] += r.weight_bytes
            prev["flops"] += r.flops
            prev["n"] += 1
            prev["lib"] += int(r.op in LIBRARY_OPS)
            prev["n_pw"] += 0 if r.op == "batchnorm" else 1
            continue
        kernels.append({"name": r.module or "(model)", "op": r.op, "cls": _TO_KERNEL[r.op], "flops": r.flops,
                        "act": r.in_bytes + r.out_bytes, "out": r.out_bytes, "w": r.weight_bytes,
                        "ch": r.ch, "n": 1, "n_pw": 0, "lib": int(r.op in LIBRARY_OPS)})
    return [Kernel(d["name"], d["cls"], d["flops"], max(0, d["act"]), d["w"], d["ch"], d["n"], d["lib"])
            for d in kernels]


_KCOLS = ("cls", "flops", "act", "w", "ch", "n", "lib")


def kernel_rows(kernels: Sequence[Kernel]) -> np.ndarray:
    """Kernels as an array (K, 7): class index, flops, act bytes, weight bytes, ch, n_ops, n_lib."""
    return np.array([[_CLASS_INDEX[k.op], k.flops, k.act_bytes, k.weight_bytes, k.ch, k.n_ops, k.n_lib]
                     for k in kernels], dtype=float).reshape(-1, len(_KCOLS))
