"""``trtexec`` (``kd_compile.profilers.tensorrt.trtexec``): command line, JSON export parsing,
and the ``"trtexec"`` profiler (for real only where trtexec and a GPU exist).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from trt_helpers import real_tensorrt_or_skip

from kd_compile.errors import BackendUnavailableError, ExportError, UsageError
from kd_compile.profilers import InputSpec
from kd_compile.profilers.tensorrt import (
    TrtexecProfiler,
    build_trtexec_command,
    parse_trtexec_layer_info,
    parse_trtexec_profile,
    parse_trtexec_times,
)
from kd_compile.testing.profilers import check_measurement, tiny_cnn

SPEC = InputSpec((3, 16, 16), batch=2)


def test_trtexec_command_fp16() -> None:
    cmd = build_trtexec_command(
        "/opt/trt/bin/trtexec",
        "/m/model.onnx",
        input_name="input",
        input_shape=(4, 3, 224, 224),
        precision="fp16",
        times_path="/o/t.json",
        profile_path="/o/p.json",
        layer_info_path="/o/l.json",
        warmup_ms=500,
        duration_s=5,
        iterations=200,
        opt_level=4,
        workspace_mib=2048,
        timing_cache_path="/c/timing.cache",
    )
    assert cmd == [
        "/opt/trt/bin/trtexec",
        "--onnx=/m/model.onnx",
        "--shapes=input:4x3x224x224",
        "--fp16",
        "--builderOptimizationLevel=4",
        "--memPoolSize=workspace:2048MiB",
        "--timingCacheFile=/c/timing.cache",
        "--warmUp=500",
        "--duration=5",
        "--iterations=200",
        "--noDataTransfers",
        "--useSpinWait",
        "--exportTimes=/o/t.json",
        "--profilingVerbosity=detailed",
        "--separateProfileRun",
        "--exportProfile=/o/p.json",
        "--exportLayerInfo=/o/l.json",
    ]


def test_trtexec_command_precisions() -> None:
    base = dict(input_name="x", input_shape=(1, 3, 8, 8))
    fp32 = build_trtexec_command("trtexec", "m.onnx", precision="fp32", **base)
    assert not {"--fp16", "--bf16", "--int8"} & set(fp32)
    assert "--exportTimes" not in " ".join(fp32) and "--separateProfileRun" not in fp32
    assert "--bf16" in build_trtexec_command("trtexec", "m.onnx", precision="bf16", **base)
    assert "--useCudaGraph" in build_trtexec_command(
        "trtexec", "m.onnx", use_cuda_graph=True, **base
    )
    int8 = build_trtexec_command(
        "trtexec", "m.onnx", precision="int8", calibration_cache="c.cache", **base
    )
    assert ["--int8", "--fp16", "--calib=c.cache"] == int8[3:6]
    with pytest.raises(UsageError, match="calibration cache"):
        build_trtexec_command("trtexec", "m.onnx", precision="int8", **base)
    with pytest.raises(UsageError):
        build_trtexec_command("trtexec", "m.onnx", precision="fp8", **base)


# samples in the format trtexec writes (samples/common/sampleReporting.cpp, exportJSONTrace and
# exportJSONProfile): one object per timed inference; a count header then one object per layer
TIMES_SAMPLE = [
    {
        "startEnqMs": 0.10,
        "endEnqMs": 0.15,
        "startH2dMs": 0.15,
        "endH2dMs": 0.15,
        "startComputeMs": 0.16,
        "endComputeMs": 1.36,
        "startD2hMs": 1.36,
        "endD2hMs": 1.36,
        "h2dMs": 0.0,
        "computeMs": 1.20,
        "d2hMs": 0.0,
        "latencyMs": 1.20,
    },
    {
        "startEnqMs": 1.40,
        "endEnqMs": 1.46,
        "startH2dMs": 1.46,
        "endH2dMs": 1.46,
        "startComputeMs": 1.47,
        "endComputeMs": 2.72,
        "startD2hMs": 2.72,
        "endD2hMs": 2.72,
        "h2dMs": 0.0,
        "computeMs": 1.25,
        "d2hMs": 0.0,
        "latencyMs": 1.25,
    },
    {
        "startEnqMs": 2.80,
        "endEnqMs": 2.84,
        "startH2dMs": 2.84,
        "endH2dMs": 2.84,
        "startComputeMs": 2.85,
        "endComputeMs": 4.00,
        "startD2hMs": 4.00,
        "endD2hMs": 4.00,
        "h2dMs": 0.0,
        "computeMs": 1.15,
        "d2hMs": 0.0,
        "latencyMs": 1.15,
    },
]
PROFILE_SAMPLE = [
    {"count": 50},
    {
        "name": "/conv1/Conv + /relu/Relu",
        "timeMs": 30.0,
        "averageMs": 0.6,
        "medianMs": 0.59,
        "percentage": 50.0,
    },
    {"name": "/fc/Gemm", "timeMs": 30.0, "averageMs": 0.6, "medianMs": 0.61, "percentage": 50.0},
]
LAYER_INFO_SAMPLE = {
    "Layers": [
        {
            "Name": "/conv1/Conv + /relu/Relu",
            "LayerType": "CaskConvolution",
            "Inputs": [],
            "Outputs": [],
        },
        {"Name": "/fc/Gemm", "LayerType": "CaskGemmMatrixMultiply", "Inputs": [], "Outputs": []},
    ],
    "Bindings": ["input", "output"],
}


def test_parse_trtexec_times(tmp_path: Path) -> None:
    p = tmp_path / "times.json"
    p.write_text(json.dumps(TIMES_SAMPLE))
    t = parse_trtexec_times(p)
    np.testing.assert_allclose(t["compute_ms"], [1.20, 1.25, 1.15])
    np.testing.assert_allclose(t["latency_ms"], [1.20, 1.25, 1.15])
    np.testing.assert_allclose(t["enqueue_ms"], [0.05, 0.06, 0.04], atol=1e-12)
    # older exports without computeMs: derived from the compute timestamps
    old = [{k: v for k, v in r.items() if k != "computeMs"} for r in TIMES_SAMPLE]
    np.testing.assert_allclose(
        parse_trtexec_times(json.dumps(old))["compute_ms"], [1.20, 1.25, 1.15]
    )
    with pytest.raises(ExportError):
        parse_trtexec_times("[]")
    with pytest.raises(ExportError):
        parse_trtexec_times([{"latencyMs": 1.0}])


def test_parse_trtexec_profile_and_layer_info(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(PROFILE_SAMPLE))
    (tmp_path / "l.json").write_text(json.dumps(LAYER_INFO_SAMPLE))
    types_ = parse_trtexec_layer_info(tmp_path / "l.json")
    assert types_["/fc/Gemm"] == "CaskGemmMatrixMultiply"
    count, layers = parse_trtexec_profile(tmp_path / "p.json", types_)
    assert count == 50
    assert [(lc.name, lc.op, lc.latency_ms) for lc in layers] == [
        ("/conv1/Conv + /relu/Relu", "CaskConvolution", 0.6),
        ("/fc/Gemm", "CaskGemmMatrixMultiply", 0.6),
    ]
    no_avg = [PROFILE_SAMPLE[0], {"name": "L", "timeMs": 5.0, "percentage": 100.0}]
    assert parse_trtexec_profile(no_avg)[1][0].latency_ms == pytest.approx(0.1)
    with pytest.raises(ExportError):
        parse_trtexec_profile([{"name": "no count header"}])


def test_trtexec_profiler_unavailable_without_trtexec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no trtexec
    with TrtexecProfiler() as p:
        with pytest.raises(BackendUnavailableError) as exc_info:
            p.profile(tiny_cnn(), SPEC)
    assert "trtexec" in exc_info.value.line() and "PATH" in exc_info.value.line()
    with pytest.raises(BackendUnavailableError):
        TrtexecProfiler(trtexec=str(tmp_path / "nope")).profile(tiny_cnn(), SPEC)

@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_trtexec_profile(tmp_path: Path) -> None:
    if shutil.which("trtexec") is None:
        pytest.skip("trtexec is not on PATH")
    real_tensorrt_or_skip()
    with TrtexecProfiler(precision="fp16", duration_s=1, warmup_ms=100, cache_dir=tmp_path) as p:
        m = p.profile(tiny_cnn(), SPEC)
    check_measurement(m, SPEC)
    assert m.extra["tool"] == "trtexec" and m.layers


FAKE_TRTEXEC = """#!{python}
# stand-in for NVIDIA's trtexec: prints a --help text, records a run's argv, writes --exportTimes
import json, sys
args = sys.argv[1:]
if args == ["--help"]:
    print({help!r})
    sys.exit(0)
open({log!r}, "w").write(json.dumps(args))
opts = dict(a[2:].split("=", 1) for a in args if "=" in a)
open(opts["exportTimes"], "w").write(json.dumps({times!r}))
print("[I] TensorRT version: {version}")
print("[I] Selected Device: Stand-in GPU")
"""
HELP_10 = "=== Build Options ===\n  --fp16    Enable fp16 precision, in addition to fp32 (default = disabled)\n"
HELP_11 = "=== Build Options ===\n  --stronglyTyped    Create a strongly typed network (always on)\n  --onnx=<file> ..."


@pytest.mark.parametrize(("help_text", "version", "weak"), [(HELP_10, "10.16.1", True), (HELP_11, "11.4.0", False)])
def test_trtexec_profiler_follows_its_trtexecs_typing(
    tmp_path: Path, help_text: str, version: str, weak: bool
) -> None:
    """TensorRT 10's trtexec gets --fp16 and the fp32 export; TensorRT 11's (whose --help has no
    --fp16: precision flags were removed) gets no precision flag and an fp16 copy of the ONNX."""
    import onnx

    exe, log = tmp_path / "trtexec", tmp_path / "argv.json"
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable, help=help_text, log=str(log), times=TIMES_SAMPLE,
                                       version=version))
    exe.chmod(0o755)
    with TrtexecProfiler(precision="fp16", trtexec=str(exe), cache_dir=tmp_path / "c") as p:
        m = p.profile(tiny_cnn(), SPEC)
    args = json.loads(log.read_text())
    assert ("--fp16" in args) is weak and not {"--bf16", "--int8", "--best"} & set(args)
    model = onnx.load(next(a.split("=", 1)[1] for a in args if a.startswith("--onnx=")))
    types_ = {onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer}
    assert types_ == ({"FLOAT"} if weak else {"FLOAT16"})
    assert m.extra["trt_version"] == version and m.runtime == "tensorrt"
    with pytest.raises(UsageError, match="calib"):
        build_trtexec_command("trtexec", "m.onnx", input_name="x", input_shape=(1, 3, 8, 8), precision="int8",
                              calibration_cache="c.cache", weakly_typed=False)
