"""The counting profiler against hand-computed params, FLOPs and bytes."""

from __future__ import annotations

import torch
from torch import nn

from kd_compile.profilers import InputSpec, create_profiler
from kd_compile.profilers.counting import count, trace_ops

torch.set_num_threads(1)


class Tiny(nn.Module):
    """conv 3->8 k3 p1 on 8x8, BN, ReLU, global pool, linear 8->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.bn(self.conv(x)))).flatten(1))


def test_params_and_flops_by_hand() -> None:
    m = count(Tiny(), InputSpec((3, 8, 8), batch=1))
    conv_p, bn_p, fc_p = 8 * 3 * 9, 2 * 8, 8 * 10 + 10
    assert m.params == conv_p + bn_p + fc_p
    conv_flops = 2 * (8 * 8) * 8 * (3 * 9)  # 2 x MACs: every output pixel x out ch x (in ch x k^2)
    fc_flops = 2 * 8 * 10
    assert m.flops == conv_flops + fc_flops
    by_name = {layer.name: layer for layer in m.layers}
    assert by_name["conv"].flops == conv_flops and by_name["fc"].flops == fc_flops
    assert by_name["conv"].params == conv_p and by_name["conv"].op == "conv"
    # conv bytes = weights + input + output (fp32)
    assert by_name["conv"].bytes == 4 * (conv_p + 3 * 64 + 8 * 64)
    assert m.method == "counted" and m.device == "any" and m.runtime == "none"
    # BN keeps weight, bias and two running stats (buffers).
    assert m.weight_bytes == 4 * (conv_p + 4 * 8 + fc_p) + 8  # + num_batches_tracked (int64)


def test_batch_scaling_and_layer_sum() -> None:
    m1 = count(Tiny(), InputSpec((3, 8, 8), batch=1))
    m4 = count(Tiny(), InputSpec((3, 8, 8), batch=4))
    assert m4.flops == 4 * m1.flops
    assert m4.activation_bytes == 4 * m1.activation_bytes
    assert m4.weight_bytes == m1.weight_bytes
    assert sum(layer.flops for layer in m4.layers) == m4.flops
    # Leaf outputs: conv, bn, act (8x8x8 each), pool (8), fc (10), in fp32.
    assert m1.activation_bytes == 4 * (3 * 512 + 8 + 10)
    assert m1.peak_activation_bytes >= 4 * (512 + 512)


def test_depthwise_classified_and_mode_restored() -> None:
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 1))
    net.train()
    tr = trace_ops(net, (16, 10, 10))
    assert [r.op for r in tr.ops] == ["dwconv", "conv"]
    assert tr.ops[0].flops == 2 * 100 * 16 * 9
    assert net.training


def test_meta_model_and_registry() -> None:
    with torch.device("meta"):
        net = Tiny()
    with create_profiler("counting") as p:
        m = p.profile(net, InputSpec((3, 8, 8)))
    assert m.flops == count(Tiny(), InputSpec((3, 8, 8))).flops


def test_functional_ops_in_parent_are_attributed() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.matmul(x, self.a(x).transpose(-1, -2)) @ x

    m = count(Res(), InputSpec((1, 4, 6)))
    assert sum(layer.flops for layer in m.layers) == m.flops
    assert m.flops == 2 * 4 * 6 * 6 + 2 * 4 * 6 * 4 + 2 * 4 * 4 * 6
    assert any(layer.name == "(model)" and layer.flops > 0 for layer in m.layers)


class _Shuffle(nn.Module):
    """HW-NAS-Bench's channel shuffle, then a 3-D linear (whose internal views are not calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = x.view(n, 2, c // 2, h, w)
        y = torch.transpose(y, 1, 2).contiguous()
        y = y.view(n, -1, h, w).relu_()  # in place: returns its input, not a view call
        return self.fc(y.flatten(2))


def test_python_level_view_calls_are_recorded_once_each() -> None:
    tr = trace_ops(_Shuffle(), (4, 2, 2))
    assert [r.op for r in tr.ops] == ["view", "view", "copy", "view", "elementwise", "view", "matmul"]
    views = [r for r in tr.ops if r.op == "view"]
    assert all((r.flops, r.in_bytes, r.out_bytes, r.weight_bytes) == (0, 0, 0, 0) for r in views)
    assert views[-1].module == ""  # the flatten is the root's own call; linear's views are internal
    m = count(_Shuffle(), InputSpec((4, 2, 2)))
    assert m.extra["ops"] == 3 and all(layer.op != "view" for layer in m.layers)


class _Tokens(nn.Module):
    """A transformer-like block on a (tokens, features) input: 3-D linears and attention."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)
        self.proj = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def test_linear_on_tokens_reads_its_weight_as_weight_and_attention_has_flops() -> None:
    """``linear`` on a 3-D input multiplies by a transposed view of the weight: those bytes are
    weight bytes (read once per batch), not activation bytes (read per sample). Attention on this
    machine's CPU kernel is counted with PyTorch's own attention formula, and the ops' FLOPs add up
    to the total."""
    tr = trace_ops(_Tokens(), (10, 32))
    qkv = next(r for r in tr.ops if r.module == "qkv" and r.op == "matmul")
    assert qkv.weight_bytes == (32 * 96 + 96) * 4
    assert qkv.in_bytes == 10 * 32 * 4
    attn = next(r for r in tr.ops if r.op == "attention")
    assert attn.flops == 2 * 2 * (2 * 10 * 10 * 16)  # QK^T and AV, 2 heads of 16 dims, 10 tokens
    assert sum(r.flops for r in tr.ops) == tr.total_flops


class _TokenBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, xs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, tok = xs
        return self.fc(x), self.fc(tok)


class _ClassToken(nn.Module):
    """PiT/CaiT-like: a parameter goes into a submodule as part of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Parameter(torch.zeros(1, 1, 8))
        self.block = _TokenBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, t = self.block((x, self.tok.expand(x.shape[0], -1, -1)))
        return y.sum(1) + t.sum(1)


def test_parameter_passed_as_module_input_is_counted_and_grads_restored() -> None:
    m = _ClassToken()
    m.block.fc.weight.requires_grad_(False)
    tr = trace_ops(m, (4, 8))  # batch 1: the token is expanded to one copy
    assert tr.total_flops == 2 * (4 + 1) * 8 * 8
    assert m.tok.requires_grad and m.block.fc.bias.requires_grad and not m.block.fc.weight.requires_grad


class _SelfAttention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, masked: bool = False) -> None:
        super().__init__()
        self.qkv, self.heads, self.masked = nn.Linear(dim, 3 * dim), heads, masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)  # (B, HW, C) tokens
        b, n, c = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril() if self.masked else None
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_attention_counts_the_same_on_meta_as_on_the_cpu() -> None:
    """The calibration counts its models on the meta device, ``profile`` on the CPU: scaled dot-product
    attention is the CPU's one fused op on both (on meta PyTorch would otherwise take its math
    path: matmuls, softmax and copies), so both count one graph, with the same FLOPs and bytes."""
    for masked in (False, True):
        cpu = trace_ops(_SelfAttention(masked=masked).eval(), (32, 4, 4))
        with torch.device("meta"):
            meta_model = _SelfAttention(masked=masked)
        meta = trace_ops(meta_model, (32, 4, 4))
        assert [r.to_list()[1:] for r in meta.ops] == [r.to_list()[1:] for r in cpu.ops]
        assert meta.total_flops == cpu.total_flops > 0
        assert sum(r.op == "attention" for r in cpu.ops) == 1 and not any(r.op == "copy" for r in cpu.ops)


def test_tensors_are_found_in_tree_flatten_order() -> None:
    """The tracer's own walk over an op's arguments finds what ``tree_flatten`` finds, in its order
    (the order of a concat's inputs), for plain and other containers alike."""
    import collections

    from torch.utils._pytree import tree_flatten

    from kd_compile.profilers.counting import _tensors

    a, b, c = torch.ones(1), torch.zeros(2), torch.ones(3)
    pair = collections.namedtuple("pair", "x y")
    cases = [
        (a, [b, {"k": c, "j": a}]),
        {"z": b, "a": a},
        pair(c, b),
        collections.OrderedDict(q=c, p=a),
        [1, None, (a, 2.0, torch.float32, "x")],
        a,
        3,
    ]
    for obj in cases:
        want = [x for x in tree_flatten(obj)[0] if isinstance(x, torch.Tensor)]
        got = _tensors(obj)
        assert len(got) == len(want) and all(g is w for g, w in zip(got, want, strict=True)), obj
