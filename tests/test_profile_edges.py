"""`kd-compile profile` and `kd_compile.profile` at their edges, as a demanding user drives them: what a
target cannot run is refused rather than predicted, every failure is one line with its documented exit
code (and a JSON error object under --json), and what is printed agrees with itself."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import kd_compile
from kd_compile import api
from kd_compile.cli import app
from kd_compile.errors import CheckpointError, UsageError

NB201 = "nb201:|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
OFA = "ofa:136/2-3-4-3-4/k7e4-k3e6|k3e4-k7e4-k3e4|k3e3-k7e6-k3e6-k7e4|k3e4-k7e6-k7e6|k5e3-k5e6-k7e6-k3e4"


def _predict(spec: str = NB201, **kw):
    return api.profile(spec, method="predict", **kw)


@pytest.mark.parametrize(("runtime", "precision"), [("tensorrt", None), ("inductor", None), (None, "fp16"),
                                                    (None, "bf16")])
def test_the_cpu_target_refuses_what_it_cannot_run(runtime, precision):
    """TensorRT and the GPU-rule torch.compile model on a CPU, or fp16/bf16 on a CPU whose profile has no
    native rate for them: refused, as measuring them is, instead of a number."""
    with pytest.raises(UsageError) as info:
        _predict(target="cpu", runtime=runtime, precision=precision, batch=64)
    assert "\n" not in info.value.line()
    d = _predict(target="cpu", runtime="torch", precision="fp32", batch=64)  # what it runs is predicted
    assert d["latency_ms"] > 0 and d["method"] == "predicted"


@pytest.mark.parametrize("target", ["jetson-nano", "v100"])
def test_int8_without_an_int8_rate_is_predicted_as_the_fp16_it_runs_as(target):
    """No DP4A (Jetson Nano) or tensor cores without int8 (V100): TensorRT runs int8 builds in fp16, so
    int8 is not predicted faster than fp16, and the prediction says why."""
    fp16 = _predict(target=target, runtime="tensorrt", precision="fp16", batch=8)
    int8 = _predict(target=target, runtime="tensorrt", precision="int8", batch=8)
    assert int8["latency_ms"] == pytest.approx(fp16["latency_ms"], rel=1e-9)
    assert int8["precision"] == "int8" and "runs an int8 build in fp16" in int8["extra"]["note"]
    t4 = [_predict(target="t4", runtime="tensorrt", precision=p, batch=8)["latency_ms"] for p in ("fp16", "int8")]
    assert t4[1] < t4[0]  # a GPU with an int8 rate predicts int8 faster


@pytest.mark.parametrize("bad", [2.5, True, "4", None, math.nan, 0, -3])
def test_the_api_refuses_a_batch_that_is_not_a_whole_number(bad):
    with pytest.raises(UsageError, match="batch must be a whole number"):
        _predict(target="t4", batch=bad)


def test_the_api_refuses_a_bad_image_size():
    with pytest.raises(UsageError, match="image_size must be a whole number"):
        _predict(target="t4", image_size="32")


class _FixedSize(nn.Module):
    """Runs only on 32x32 inputs, as a ViT runs only at its image size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (32, 32), f"Wrong image size! Expected 32 but got {x.shape[-1]}!"
        return self.fc(x.flatten(1))


def test_a_model_that_does_not_run_at_the_size_asked_is_a_checkpoint_error():
    assert _predict(_FixedSize(), target="t4", image_size=32)["params"] == 3 * 32 * 32 * 10 + 10
    with pytest.raises(CheckpointError, match=r"does not run on input of shape \(3, 48, 48\).*Wrong image size"):
        _predict(_FixedSize(), target="t4", image_size=48)


def test_cli_a_vit_at_another_image_size_is_exit_3_not_an_internal_error():
    res = CliRunner().invoke(app, ["profile", "torchvision:vit_b_16", "--image-size", "160", "--target", "t4",
                                   "--method", "predict", "--json"])
    assert res.exit_code == 3, res.output
    assert "internal error" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    err = json.loads(res.stdout)["error"]  # --json: a JSON error object on stdout, as compile gives
    assert err["exit_code"] == 3 and err["type"] == "CheckpointError" and "(3, 160, 160)" in err["message"]


@pytest.mark.parametrize(("spec", "code"), [("torchvision:not_a_model", 3), ("timm:not_a_model", 3),
                                            ("ofa:204/2-2", 2), ("nb201:garbage", 2)])
def test_cli_unknown_models_and_malformed_specs_have_one_exit_code_each(spec, code):
    """An unknown model, in either zoo, is exit 3 (as a missing checkpoint); a malformed spec is a bad option."""
    res = CliRunner().invoke(app, ["profile", spec, "--target", "t4", "--method", "predict"])
    assert res.exit_code == code, res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_a_spec_of_no_family_says_what_specs_look_like():
    res = CliRunner().invoke(app, ["profile", "foo:bar", "--target", "t4", "--method", "predict"])
    assert res.exit_code == 3 and "not found" in res.stderr
    assert "model spec is <family>:<encoding>" in res.stderr and "nb201" in res.stderr


def test_image_size_on_a_spec_is_the_size_reported_everywhere():
    d = _predict(OFA, target="titan-rtx", runtime="torch", precision="fp32", batch=64, image_size=160)
    assert d["input_shape"] == [3, 160, 160] and d["preprocessing"]["input_shape"] == [3, 160, 160]
    d = _predict(NB201, target="2080ti", image_size=64)
    assert d["input_shape"] == [3, 64, 64] and d["preprocessing"]["input_shape"] == [3, 64, 64]


def test_ofa_resolution_outside_what_the_network_can_take_is_refused():
    with pytest.raises(UsageError, match="resolution 1 is outside 8-1024"):
        _predict("ofa:1" + OFA[len("ofa:136"):], target="t4")


def test_predicted_layers_carry_their_parameters():
    d = _predict(NB201, target="2080ti", layers=True)
    per_layer = [layer["params"] for layer in d["layers"]]
    assert all(p >= 0 for p in per_layer) and sum(per_layer) > 0.9 * d["params"]


def test_measured_layers_say_why_there_are_none():
    d = api.profile(NB201, target="cpu", method="measure", layers=True)
    assert d["method"] == "measured" and d["layers"] == []
    assert "no per-layer times" in d["layers_note"]


def test_a_batch_between_the_measured_regimes_carries_a_caveat():
    band = lambda b: _predict(target="t4", runtime="torch", precision="fp16", batch=b)["extra"]["error_band"]  # noqa: E731
    assert "between the measured regimes" in band(7)["caveat"]
    assert "caveat" not in band(1) and "caveat" not in band(32)


def test_the_error_types_are_exported_at_the_top_level():
    from kd_compile import errors

    for name in ("UsageError", "CheckpointError", "TargetError", "BackendUnavailableError", "ConstraintError"):
        assert getattr(kd_compile, name) is getattr(errors, name) and name in kd_compile.__all__


def test_an_onnx_file_is_measured_on_this_cpu_as_it_is(tmp_path):
    """``profile x.onnx``: ONNX Runtime on this CPU times the file itself (its weights counted from
    its initializers, its batch dimension honoured); predicting it, or a GPU target, is refused
    with the reason, and so is a file that is no ONNX model."""
    import onnx

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    from kd_compile.profilers.base import InputSpec
    from kd_compile.profilers.onnx_export import export_onnx

    path = tmp_path / "m.onnx"
    export_onnx(net.eval(), InputSpec((3, 16, 16)), path, simplify=False)  # a symbolic batch
    weights = sum(int(math.prod(i.dims)) for i in onnx.load(str(path)).graph.initializer)
    assert weights == sum(p.numel() for p in net.parameters())
    d = kd_compile.profile(path, target="cpu", batch=3)
    assert d["method"] == "measured" and d["runtime"] == "onnxruntime" and d["batch"] == 3
    assert d["params"] == weights and d["input_shape"] == [3, 16, 16] and d["flops"] is None and d["latency_ms"] > 0
    with pytest.raises(UsageError, match="cannot be predicted on 2080ti"):
        kd_compile.profile(path, target="2080ti")
    with pytest.raises(UsageError, match="cannot resize an ONNX file"):
        kd_compile.profile(path, target="cpu", image_size=32)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(UsageError, match="not a readable ONNX model"):
        kd_compile.profile(bad, target="cpu")
    res = CliRunner().invoke(app, ["profile", str(path), "--target", "cpu"])
    assert res.exit_code == 0 and "FLOPs not counted (an ONNX file)" in res.output
    # a batch whose fp32 input alone outgrows this machine's memory is refused before ONNX Runtime runs
    from kd_compile.profilers.memory_fit import host_memory_bytes

    huge = host_memory_bytes() // (4 * 3 * 16 * 16) + 1
    with pytest.raises(UsageError, match=f"batch {huge} cannot run on this machine"):
        kd_compile.profile(path, target="cpu", batch=huge)


def test_a_batch_that_cannot_fit_the_target_is_refused_not_predicted():
    """A Jetson Nano has 4 GB: ResNet-ish input at 224 px in fp16 is 0.3 MB an image, its first conv's output
    1.6 MB, so a batch of 10,000 needs 16 GB before anything else and never runs; batch 8 is predicted."""
    net = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 10))
    assert _predict(net, target="jetson-nano", image_size=224, batch=8)["latency_ms"] > 0
    with pytest.raises(UsageError, match=r"batch 10000 cannot run on jetson-nano: .* 16.1 GB, and jetson-nano has 4"):
        _predict(net, target="jetson-nano", image_size=224, batch=10_000)
    # the same batch fits a 141 GB H200
    assert _predict(net, target="h200", image_size=224, batch=10_000)["latency_ms"] > 0


def test_the_memory_bound_counts_weights_input_and_conv_outputs_at_the_precision():
    from kd_compile.profilers.counting import trace_ops
    from kd_compile.profilers.memory_fit import resident_lower_bound

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 4096))
    tr = trace_ops(net, (3, 16, 16))
    conv_out = 8 * 16 * 16 * 4  # larger than the input (3 x 16 x 16) and than the matmul's output, left out
    assert resident_lower_bound(tr.ops, (3, 16, 16), tr.weight_bytes, 10, "fp32") == tr.weight_bytes + 10 * conv_out
    assert resident_lower_bound(tr.ops, (3, 16, 16), tr.weight_bytes, 10, "fp16") * 2 == \
        tr.weight_bytes + 10 * conv_out


def test_a_measurement_that_runs_out_of_memory_is_a_usage_error(monkeypatch):
    """The bound is a lower one: a batch it lets through may still fail to allocate, and that is a one-line
    exit-2 error naming the batch, not an internal error."""
    from kd_compile.profilers import onnxrt

    def no_memory(self, model, spec):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 64225280000 bytes.\nmore")

    monkeypatch.setattr(onnxrt.OnnxRuntimeProfiler, "_impl", no_memory)
    with pytest.raises(UsageError, match=r"batch 2 ran out of memory on this machine: RuntimeError: .*can't allocate"):
        api.profile(NB201, target="cpu", method="measure", batch=2)
    monkeypatch.setattr(onnxrt.OnnxRuntimeProfiler, "_impl", lambda self, m, s: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # any other failure is not dressed up as a memory one
        api.profile(NB201, target="cpu", method="measure", batch=2)


def test_an_empty_model_argument_is_refused_as_such():
    with pytest.raises(UsageError, match="model is empty"):
        api.profile("  ", method="predict", target="t4")


class _NoMemoryAbove64(nn.Module):
    """Runs at 64 px; above it the allocator fails, as a 100,000-px forward does on any machine."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 64:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 120000000000 bytes. Error code 12")
        return self.conv(x).mean((2, 3))


def test_a_forward_that_runs_out_of_memory_is_blamed_on_the_size_not_the_model():
    assert _predict(_NoMemoryAbove64(), target="t4", image_size=64)["latency_ms"] > 0
    with pytest.raises(UsageError, match=r"at input \(3, 128, 128\) .* ran out of this machine's memory") as info:
        _predict(_NoMemoryAbove64(), target="t4", image_size=128)
    assert "smaller --image-size" in str(info.value.hint)


@pytest.mark.parametrize(("kw", "message"), [
    ({"layers": "yes"}, "layers must be True or False, got 'yes'"),
    ({"trust_checkpoint": "no"}, "trust_checkpoint must be True or False, got 'no'"),
    ({"model": 123}, "model must be a checkpoint path, a model spec or an nn.Module, got int"),
    ({"model": ["timm:resnet18"]}, "got list"),
])
def test_the_api_refuses_wrong_types_by_name(kw, message):
    kw = dict(kw)  # the parameter's own dict stays as pytest gave it
    model = kw.pop("model", NB201)
    with pytest.raises(UsageError, match=message):
        api.profile(model, target="t4", method="predict", **kw)


def test_load_student_refuses_what_is_no_path_and_names_the_student(tmp_path):
    with pytest.raises(UsageError, match="load_student takes the path of a student.pt, got int"):
        kd_compile.load_student(123)
    with pytest.raises(CheckpointError, match=f"student checkpoint not found: {tmp_path / 'student.pt'}"):
        kd_compile.load_student(tmp_path / "student.pt")
    with pytest.raises(CheckpointError, match="student checkpoint is not a file"):
        kd_compile.load_student(tmp_path)
