"""Static counts: parameters, FLOPs, activation and weight bytes, per layer and in total.

One forward pass at batch 1 (on the device the model's parameters live on: CPU, or ``meta``
for a model built under ``torch.device("meta")``, which costs no real compute) is traced at the
ATen level. Every non-view ATen op becomes an :class:`OpRecord` attributed to the innermost
module that was running when it was dispatched, and so does every call the model makes from Python
that returns only views of its inputs (``x.view``, ``transpose``, ``permute``, ``flatten``,
``chunk``, slicing: op class ``view``). A view moves no data and launches no kernel, but eager
PyTorch dispatches it on the host like any other call (a channel shuffle, three views and a
copy, adds 0.18-0.25 of an FBNet block's time on every HELP GPU, about twice what its copy alone
was predicted to: ``benchmarks/help_ceiling.py``); views that an ATen op makes internally
(``linear``'s transposed weight) are part of that op's dispatch and are not counted. A *layer* is
the set of ops of one module (leaf modules, plus the functional ops a non-leaf module runs
itself, such as a residual add or ``scaled_dot_product_attention``). Counts at batch 1 are scaled
to the requested batch: FLOPs and activation bytes are per sample, weight bytes are not.

FLOPs come from ``torch.utils.flop_counter``: each op is counted with the same formula table
(``flop_registry``) that ``FlopCounterMode`` uses, and ``FlopCounterMode`` runs around the trace
so that the total it reports is the total we return. FLOPs = 2 x MACs, as that counter reports.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

from .base import InputSpec, LayerCost, Measurement, Profiler, register_profiler

# PyTorch counts the FLOPs of its CUDA attention kernels but not of the CPU one a model traced on
# this machine dispatches to (it would count 0 FLOPs for every attention): the same formula.
_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _CPU_SDPA is not None and _CPU_SDPA not in flop_registry:

    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                       **kwargs: Any) -> int:
        return int(sdpa_flop_count(query_shape, key_shape, value_shape))


# Op classes the roofline model gives distinct efficiencies to.
OP_CLASSES = ("conv", "dwconv", "matmul", "attention", "batchnorm", "norm", "pool", "elementwise", "copy", "concat",
              "view")

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_scaled_mm"}
# BatchNorm is its own class: inference runtimes fold it into the preceding conv.
_BATCHNORM = {"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "batch_norm"}
_NORM = {
    "native_layer_norm",
    "native_group_norm",
    "_fused_rms_norm",
}
_POOL_PREFIX = ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "mean", "sum", "amax")
# Data movement that a graph runtime cannot fold into a neighbouring kernel's epilogue: a copy
# into a new layout (a transpose/shuffle made contiguous) runs as a kernel of its own.
_COPY = {"clone", "copy", "copy_"}
_CONCAT = {"cat", "concat", "concatenate", "stack"}
# Ops that allocate or describe memory without moving activations.
_NO_COST = {"empty", "empty_like", "zeros", "ones", "full", "arange", "empty_strided", "scalar_tensor", "lift_fresh"}


@dataclass(frozen=True)
class OpRecord:
    """One ATen kernel of a forward pass at batch 1, fp32.

    Attributes:
        module: fully qualified name of the innermost module that ran it ("" = the root).
        op: op class, one of ``OP_CLASSES``.
        flops: floating-point operations (2 x MACs).
        weight_bytes: bytes of parameters/buffers read.
        in_bytes: bytes of activation inputs read.
        out_bytes: bytes of outputs written.
        ch: the smaller GEMM dimension for conv/matmul/attention (input channels per group vs
            output channels, K vs N, head dim); for a concat, how many of its inputs a graph
            runtime must copy (see ``moved_bytes``); 0 for other ops. Small GEMM dimensions waste
            tensor-core tiles, which the roofline model charges for.
        moved_bytes: for a concat, the bytes of the inputs that cannot be written in place into
            the output (TensorRT's concat elimination needs every input produced by a layer and
            read by nothing else; an input that other layers also read, or that is a view of
            another tensor, is copied, as in a DenseNet block); 0 for other ops.
    """

    module: str
    op: str
    flops: int
    weight_bytes: int
    in_bytes: int
    out_bytes: int
    ch: int = 0
    moved_bytes: int = 0

    def to_list(self) -> list[Any]:
        return [self.module, self.op, self.flops, self.weight_bytes, self.in_bytes, self.out_bytes, self.ch,
                self.moved_bytes]

    @classmethod
    def from_list(cls, v: Sequence[Any]) -> OpRecord:
        return cls(str(v[0]), str(v[1]), int(v[2]), int(v[3]), int(v[4]), int(v[5]), int(v[6]),
                   int(v[7]) if len(v) > 7 else 0)


@dataclass(frozen=True)
class OpTrace:
    """Everything counted in one forward at batch 1.

    Attributes:
        ops: non-view ATen ops and Python-level view calls (op ``view``, no cost but the
            host's dispatch) in execution order.
        params: number of parameters.
        weight_bytes: bytes of parameters and buffers.
        total_flops: ``FlopCounterMode.get_total_flops()`` for the same forward.
        layer_types: module FQN -> module class name, for the layers that ran ops.
        leaf_out_bytes: sum of the output sizes of leaf modules (activation bytes).
        peak_act_bytes: max over leaf-module calls of input + output bytes.
    """

    ops: tuple[OpRecord, ...]
    params: int
    weight_bytes: int
    total_flops: int
    layer_types: dict[str, str]
    leaf_out_bytes: int
    peak_act_bytes: int


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


_LEAVES = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in ``obj`` in ``tree_flatten``'s order. Tuples, lists and dicts (the structures
    of nearly every op's arguments) are walked here: ``tree_flatten`` on each of the hundreds of
    ops a forward makes was a fifth of a trace's time; other containers go to it."""
    out: list[torch.Tensor] = []
    _collect(obj, out)
    return out


def _collect(obj: Any, out: list[torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, _LEAVES):
        return
    elif type(obj) in (tuple, list):
        for x in obj:
            _collect(x, out)
    elif type(obj) is dict:
        for x in obj.values():
            _collect(x, out)
    else:
        flat, _ = tree_flatten(obj)
        out.extend(x for x in flat if isinstance(x, torch.Tensor))


def _classify(name: str, args: tuple[Any, ...], out: Any) -> tuple[str, int]:
    """Op class and the small GEMM dimension of one ATen op (by overload-packet name)."""
    if name in ("convolution", "_convolution", "cudnn_convolution", "convolution_overrideable"):
        x, w = args[0], args[1]
        groups = int(args[8]) if len(args) > 8 else 1
        cin = x.shape[1]
        if groups > 1 and groups == cin:
            return "dwconv", 1
        return "conv", int(min(w.shape[1], w.shape[0]))
    if name in _MATMUL:
        ts = [a for a in args if isinstance(a, torch.Tensor)]
        a, b = ts[-2], ts[-1]
        return "matmul", int(min(a.shape[-1], b.shape[-1]))
    if "scaled_dot_product" in name or "attention" in name:
        return "attention", int(args[0].shape[-1])
    if name in _BATCHNORM:
        return "batchnorm", 0
    if name in _NORM:
        return "norm", 0
    if name.startswith(_POOL_PREFIX):
        return "pool", 0
    if name in _COPY:
        return "copy", 0
    if name in _CONCAT:
        return "concat", 0
    return "elementwise", 0


class _Tracer(TorchDispatchMode):
    """Records every costed ATen op with the module that dispatched it.

    It also follows which op produced each activation and how many ops read it, so that each
    concat can be told which of its inputs a graph runtime must copy (:meth:`finish`).
    """

    def __init__(self, weight_ids: set[int], stack: list[str]) -> None:
        super().__init__()
        self.weight_ids = weight_ids
        self.stack = stack
        self.ops: list[OpRecord] = []
        self._made: dict[int, tuple[weakref.ref, int]] = {}  # id(tensor) -> (tensor, producing op)
        self._readers: dict[int, int] = defaultdict(int)  # producing op -> ops reading its output
        self._concats: list[tuple[int, list[tuple[int | None, int]]]] = []  # op, [(producer, bytes)]

    def _is_weight(self, t: torch.Tensor) -> bool:
        """A parameter or buffer, or a view of one (``linear`` on a 3-D input multiplies by the
        transposed weight, a view: its bytes are read once per batch, not once per sample)."""
        return id(t) in self.weight_ids or (t._base is not None and id(t._base) in self.weight_ids)

    def _producer(self, t: torch.Tensor) -> int | None:
        hit = self._made.get(id(t))
        return hit[1] if hit is not None and hit[0]() is t else None

    def finish(self) -> list[OpRecord]:
        """The records, each concat carrying the inputs a graph runtime must copy."""
        ops = list(self.ops)
        for i, ins in self._concats:
            moved = [b for p, b in ins if p is None or self._readers[p] > 1]
            ops[i] = dataclasses.replace(ops[i], ch=len(moved), moved_bytes=sum(moved))
        return ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        name = packet.__name__
        # Views and allocations move no data; an in-place op is a real kernel and is kept.
        if getattr(func, "is_view", False) or name in _NO_COST or name.startswith(("_to_copy_noop",)):
            return out
        ins = _tensors((args, kwargs))
        outs = _tensors(out)
        if not outs:
            return out
        weight = [self._is_weight(t) for t in ins]
        acts = [t for t, is_w in zip(ins, weight, strict=True) if not is_w]
        w = sum(_nbytes(t) for t, is_w in zip(ins, weight, strict=True) if is_w)
        a = sum(_nbytes(t) for t in acts)
        o = sum(_nbytes(t) for t in outs)
        flops = 0
        if packet in flop_registry:
            flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
        op, ch = _classify(name, args, out)
        for t in acts:
            p = self._producer(t)
            if p is not None:
                self._readers[p] += 1
        if op == "concat":
            self._concats.append((len(self.ops), [(self._producer(t), _nbytes(t)) for t in acts]))
        for t in outs:
            self._made[id(t)] = (weakref.ref(t), len(self.ops))
        self.ops.append(OpRecord(self.stack[-1], op, flops, w, a, o, ch))
        return out


class _ViewCalls(TorchFunctionMode):
    """Records each Python-level call that returns only views of its inputs as a ``view`` op.

    A torch-function mode sees the calls the model's Python code makes, not the ATen ops they
    decompose into (the mode is off while its handler runs), so ``x.view(...)`` counts once and
    ``linear``'s internal weight transpose not at all. An in-place op returns its input and is not
    a view call; a copy (``contiguous`` of a transposed tensor, ``reshape`` that must copy) is an
    ATen op the dispatch tracer records.
    """

    def __init__(self, tracer: _Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = _tensors(out)
        if outs:
            ins = _tensors((args, kwargs))
            roots = {id(t._base if t._base is not None else t) for t in ins}
            # a view of an input (not one of an internal result, as a 3-D ``linear``'s output is)
            if all(t._base is not None and id(t._base) in roots for t in outs) and not any(
                    t is i for t in outs for i in ins):
                self.tracer.ops.append(OpRecord(self.tracer.stack[-1], "view", 0, 0, 0, 0, 0))
        return out


class _AttentionAsOnCpu(TorchFunctionMode):
    """On the meta device, ``F.scaled_dot_product_attention`` takes PyTorch's math path (matmuls,
    softmax, copies), where on a real device it runs one fused kernel; this runs, on meta, the op the
    CPU would pick (``torch._fused_sdp_choice`` on empty CPU tensors of the same shapes), so a model
    counted on meta (the calibration's op counts) is the graph ``profile`` counts on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and _CPU_SDPA is not None:
            q, k, v = args[:3]
            if q.device.type == "meta":
                mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
                dropout = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
                causal = kwargs.get("is_causal", args[5] if len(args) > 5 else False)
                scale = kwargs.get("scale")
                like = [torch.empty(t.shape, dtype=t.dtype) for t in (q, k, v)]
                cpu_mask = None if mask is None else torch.empty(mask.shape, dtype=mask.dtype)
                choice = torch._fused_sdp_choice(*like, cpu_mask, dropout, causal, scale=scale)
                if choice == int(torch.nn.attention.SDPBackend.FLASH_ATTENTION) and not kwargs.get("enable_gqa"):
                    if mask is not None and mask.dtype == torch.bool:  # as ATen turns it additive first
                        zero, ninf = (torch.scalar_tensor(x, dtype=q.dtype, device=q.device) for x in (0.0, -math.inf))
                        mask = torch.where(mask, zero, ninf)
                    return _CPU_SDPA(q, k, v, dropout, causal, attn_mask=mask, scale=scale)[0]
        return func(*args, **kwargs)


def trace_ops(model: nn.Module, input_shape: tuple[int, ...]) -> OpTrace:
    """Run one forward at batch 1 and record its ops (see module docstring).

    Args:
        model: the network; it runs where its parameters are (``meta`` costs nothing).
        input_shape: (C, H, W) of one input image.

    Returns:
        The trace. The model's train/eval mode is restored afterwards.
    """
    p0 = next(iter(model.parameters()), None)
    device = p0.device if p0 is not None else torch.device("cpu")
    dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
    names: dict[int, str] = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), n)
    leaves = {id(m) for m in model.modules() if not any(True for _ in m.children())}
    weights = list(model.parameters()) + list(model.buffers())
    weight_ids = {id(t) for t in weights}
    stack: list[str] = [""]
    layer_types: dict[str, str] = {}
    leaf_out = 0
    peak = 0

    def pre(mod: nn.Module, _inp: Any) -> None:
        stack.append(names.get(id(mod), type(mod).__name__))

    def post(mod: nn.Module, inp: Any, out: Any) -> None:
        nonlocal leaf_out, peak
        stack.pop()
        if id(mod) in leaves:
            ob = sum(_nbytes(t) for t in _tensors(out))
            ib = sum(_nbytes(t) for t in _tensors(inp))
            leaf_out += ob
            peak = max(peak, ib + ob)

    handles = []
    for m in model.modules():
        # ScriptModules refuse Python hooks; their ops (the tracer still sees them) count
        # towards the innermost eager module around them, the root for a TorchScript model
        if m is model or isinstance(m, torch.jit.ScriptModule):
            continue
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    # a parameter handed to a submodule as its input (PiT's and CaiT's class token) would make
    # FlopCounterMode's module tracker hook its gradient, which cannot be done under no_grad
    grads = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in grads:
        p.requires_grad_(False)
    x = torch.zeros((1, *input_shape), device=device, dtype=dtype)
    fc = FlopCounterMode(display=False)
    tracer = _Tracer(weight_ids, stack)
    try:
        with torch.no_grad(), fc, tracer, _ViewCalls(tracer), _AttentionAsOnCpu():
            out = model(x)
        peak = max(peak, _nbytes(x) + sum(_nbytes(t) for t in _tensors(out)))
    finally:
        for h in handles:
            h.remove()
        for p, req in grads:
            p.requires_grad_(req)
        model.train(was_training)
    for n, m in model.named_modules():
        layer_types.setdefault(n, type(m).__name__)
    used = {r.module for r in tracer.ops}
    layer_types = {k: v for k, v in layer_types.items() if k in used}
    return OpTrace(
        ops=tuple(tracer.finish()),
        params=sum(p.numel() for p in model.parameters()),
        weight_bytes=sum(_nbytes(t) for t in weights),
        total_flops=int(fc.get_total_flops()),
        layer_types=layer_types,
        leaf_out_bytes=int(leaf_out),
        peak_act_bytes=int(peak),
    )


def layers_from_ops(
    ops: Iterable[OpRecord], batch: int = 1, params: dict[str, int] | None = None
) -> list[LayerCost]:
    """Group op records by module into ``LayerCost`` rows (execution order of first op).

    ``bytes`` = weights + batch x (input + output activations); ``op`` is the class of the
    layer's costliest op (by FLOPs, then by bytes).
    """
    order: dict[str, list[OpRecord]] = {}
    for r in ops:
        if r.op == "view":  # no FLOPs, no bytes: not a layer of its own
            continue
        order.setdefault(r.module, []).append(r)
    out: list[LayerCost] = []
    for name, rs in order.items():
        main = max(rs, key=lambda r: (r.flops, r.in_bytes + r.out_bytes))
        out.append(
            LayerCost(
                name=name or "(model)",
                op=main.op,
                flops=batch * sum(r.flops for r in rs),
                params=(params or {}).get(name, 0),
                bytes=sum(r.weight_bytes + batch * (r.in_bytes + r.out_bytes) for r in rs),
            )
        )
    return out


def _direct_params(model: nn.Module) -> dict[str, int]:
    return {n: sum(p.numel() for p in m.parameters(recurse=False)) for n, m in model.named_modules()}


def count(model: nn.Module, input_spec: InputSpec, trace: OpTrace | None = None) -> Measurement:
    """Count params, FLOPs, bytes and per-layer costs of ``model`` for ``input_spec``.

    Args:
        model: the network (CPU or ``meta`` parameters; one forward at batch 1 is run).
        input_spec: image shape (C, H, W) and batch; counts are scaled to ``input_spec.batch``.

    Returns:
        ``Measurement(method="counted", device="any", runtime="none")`` with ``params``,
        ``flops`` (2 x MACs per batch), ``activation_bytes`` (sum of leaf-module outputs),
        ``weight_bytes``, ``peak_activation_bytes`` and ``layers``; ``extra["ops"]`` holds the
        number of costed ATen ops (view calls not included). The sum of layer FLOPs equals ``flops``.
        ``trace``: a ``trace_ops`` result for this model and shape, to avoid a second forward.
    """
    tr = trace if trace is not None else trace_ops(model, tuple(input_spec.shape))
    b = input_spec.batch
    layers = layers_from_ops(tr.ops, b, _direct_params(model))
    missing = b * (tr.total_flops - sum(r.flops for r in tr.ops))
    if missing:
        # An op FlopCounterMode counts but our tracer did not see (a higher-order op such as
        # flex_attention); keep it visible rather than let layer FLOPs disagree with the total.
        layers.append(LayerCost(name="(unattributed)", op="matmul", flops=missing))
    # Layers whose module holds parameters but ran no op (weights used elsewhere) still own
    # those parameters; they are rare and dropped from the per-layer list, not from totals.
    return Measurement(
        method="counted",
        device="any",
        runtime="none",
        precision="fp32",
        batch=b,
        params=tr.params,
        flops=b * tr.total_flops,
        activation_bytes=b * tr.leaf_out_bytes,
        weight_bytes=tr.weight_bytes,
        peak_activation_bytes=b * tr.peak_act_bytes,
        layers=tuple(layers),
        extra={"ops": sum(r.op != "view" for r in tr.ops), "input_shape": list(input_spec.shape)},
    )


@register_profiler("counting")
class CountingProfiler(Profiler):
    """Static counts (no latency). ``with create_profiler("counting") as p: p.profile(m, spec)``."""

    name = "counting"

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        return count(model, input_spec)

