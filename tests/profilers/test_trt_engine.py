"""TensorRT engines (``kd_compile.profilers.tensorrt.engine``): cache keys, and CONTRACT tests of
the builder against the documented TensorRT 10 and 11 APIs, run on the fakes of ``trt_helpers.py``.

The contract tests check that the builder drives the API as documented (flags, optimisation
profiles, timing cache, engine cache); they measure nothing.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from trt_helpers import builds, install_fake_tensorrt

from kd_compile.errors import BackendUnavailableError, ExportError, UsageError
from kd_compile.profilers import InputSpec
from kd_compile.profilers.onnx_export import export_onnx, file_sha256
from kd_compile.profilers.tensorrt import EngineFromOnnx, engine_cache_key
from kd_compile.testing.profilers import tiny_cnn

SPEC = InputSpec((3, 16, 16), batch=2)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_cnn(), SPEC, tmp_path_factory.mktemp("onnx") / "cnn.onnx").path


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    return install_fake_tensorrt(monkeypatch)


def qdq_onnx(folder: Path) -> Path:
    """An explicitly quantized (QuantizeLinear/DequantizeLinear) ONNX model."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = helper.make_tensor("z", TensorProto.INT8, [], [0])
    g = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
            helper.make_node("Relu", ["dq"], ["output"]),
        ],
        "qdq",
        [x],
        [y],
        initializer=[scale, zp],
    )
    qdq = folder / "qdq.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(qdq))
    return qdq


# --- engine cache key ------------------------------------------------------------------------

KEY_ARGS: dict[str, Any] = dict(
    trt_version="10.3.0",
    gpu_name="NVIDIA GeForce RTX 2080 Ti",
    precision="fp16",
    opt_level=3,
    workspace_bytes=1 << 30,
    input_shapes={"input": ((2, 3, 16, 16),) * 3},
)


def test_cache_key_is_deterministic_and_order_free() -> None:
    k = engine_cache_key("ab" * 32, **KEY_ARGS)
    assert k == engine_cache_key("ab" * 32, **dict(reversed(list(KEY_ARGS.items()))))
    assert len(k) == 64 and int(k, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA A100-SXM4-40GB"},
        {"precision": "fp32"},
        {"opt_level": 5},
        {"workspace_bytes": None},
        {"input_shapes": {"input": ((1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16))}},
        {"extra": {"calibrator": "MyCalibrator"}},
    ],
    ids=lambda d: next(iter(d)),
)
def test_cache_key_changes_with_every_component(change: dict[str, Any]) -> None:
    assert engine_cache_key("ab" * 32, **{**KEY_ARGS, **change}) != engine_cache_key(
        "ab" * 32, **KEY_ARGS
    )


def test_cache_key_changes_with_onnx_digest() -> None:
    assert engine_cache_key("ab" * 32, **KEY_ARGS) != engine_cache_key("cd" * 32, **KEY_ARGS)

def test_contract_engine_build_and_cache(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): builder flags, profile, timing cache, engine cache."""
    tc = tmp_path / "timing.cache"
    loader = EngineFromOnnx(
        cnn_onnx,
        "fp16",
        opt_level=4,
        workspace_bytes=1 << 28,
        timing_cache_path=tc,
        cache_dir=tmp_path / "eng",
        batch=2,
    )
    path = loader()
    assert loader.built and path.is_file() and path.parent == tmp_path / "eng"
    (build,) = builds(fake_trt)
    assert build[1] == [fake_trt.BuilderFlag.FP16]
    assert build[2] == 4
    assert build[3] == {fake_trt.MemoryPoolType.WORKSPACE: 1 << 28}
    assert build[4] == fake_trt.ProfilingVerbosity.DETAILED
    assert ("set_shape", "input", (2, 3, 16, 16), (2, 3, 16, 16), (2, 3, 16, 16)) in fake_trt.calls
    assert ("create_timing_cache", b"") in fake_trt.calls
    assert tc.is_file() and int(tc.read_bytes()) > 0  # the grown cache was saved
    assert loader.key == engine_cache_key(
        file_sha256(cnn_onnx),
        trt_version="10.99.0-fake",
        gpu_name=torch.cuda.get_device_name() if torch.cuda.is_available() else "no-cuda-device",
        precision="fp16",
        opt_level=4,
        workspace_bytes=1 << 28,
        input_shapes={"input": ((2, 3, 16, 16),) * 3},
    )
    assert json.loads(path.with_suffix(".json").read_text())["precision"] == "fp16"

    # same settings, new loader, same folder: served from the cache, no build
    again = EngineFromOnnx(
        cnn_onnx,
        "fp16",
        opt_level=4,
        workspace_bytes=1 << 28,
        timing_cache_path=tc,
        cache_dir=tmp_path / "eng",
        batch=2,
    )
    assert again() == path and not again.built
    assert len(builds(fake_trt)) == 1

    # another precision: a new engine, built with the saved timing cache loaded
    saved = tc.read_bytes()
    other = EngineFromOnnx(
        cnn_onnx,
        "bf16",
        opt_level=4,
        workspace_bytes=1 << 28,
        timing_cache_path=tc,
        cache_dir=tmp_path / "eng",
        batch=2,
    )
    assert other() != path and other.built
    assert builds(fake_trt)[-1][1] == [fake_trt.BuilderFlag.BF16]
    assert ("create_timing_cache", saved) in fake_trt.calls


def test_contract_dynamic_batch_profile(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): max_batch gives a 1..max optimisation profile."""
    EngineFromOnnx(cnn_onnx, "fp32", cache_dir=tmp_path, batch=4, max_batch=16)()
    assert ("set_shape", "input", (1, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16)) in fake_trt.calls
    assert builds(fake_trt)[-1][1] == []  # fp32: no precision flag


def test_contract_int8_needs_calibrator_or_qdq(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): int8 refused before any TensorRT call unless calibrated or Q/DQ."""
    with pytest.raises(UsageError, match="calibrator"):
        EngineFromOnnx(cnn_onnx, "int8", cache_dir=tmp_path)
    assert fake_trt.calls == []

    calibrator = object()
    EngineFromOnnx(cnn_onnx, "int8", cache_dir=tmp_path, batch=2, calibrator=calibrator)()
    build = builds(fake_trt)[-1]
    assert build[1] == sorted([fake_trt.BuilderFlag.INT8, fake_trt.BuilderFlag.FP16])
    assert build[5] is calibrator

    qdq = qdq_onnx(tmp_path)
    assert EngineFromOnnx(qdq, "int8", cache_dir=tmp_path)().is_file()


def test_contract_parse_and_build_failures(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): parser errors and a None build become ExportError."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
    g = helper.make_graph(
        [helper.make_node("Unique", ["input"], ["output"], name="u")], "g", [x], [y]
    )
    bad = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(bad))
    with pytest.raises(ExportError) as exc_info:
        EngineFromOnnx(bad, "fp16", cache_dir=tmp_path)()
    line = exc_info.value.line()
    assert "UNSUPPORTED_NODE: Unique" in line and "lint: Unique: not supported" in line
    with pytest.raises(ExportError, match="failed to build"):
        EngineFromOnnx(cnn_onnx, "fp16", workspace_bytes=512, cache_dir=tmp_path, batch=2)()
    with pytest.raises(UsageError):
        EngineFromOnnx(cnn_onnx, "fp8", cache_dir=tmp_path)
    with pytest.raises(UsageError):
        EngineFromOnnx(cnn_onnx, "fp16", opt_level=9, cache_dir=tmp_path)


def test_engine_private_cache_folder_removed_on_close(fake_trt: types.ModuleType, cnn_onnx: Path) -> None:
    """Without cache_dir the engine goes to a private temporary folder that close() removes."""
    with EngineFromOnnx(cnn_onnx, "fp16", batch=2) as loader:
        path = loader()
        assert path.is_file() and loader.cache_dir.name.startswith("kd-trt-")
    assert not loader.cache_dir.exists()
    loader.close()  # idempotent


def test_contract_tensorrt11_builds_strongly_typed(
    monkeypatch: pytest.MonkeyPatch, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT 11, whose BuilderFlag has no FP16/BF16/INT8 and whose config has no
    int8_calibrator): fp16 parses an fp16 copy of the ONNX (I/O kept fp32) and sets no flag; fp32
    and Q/DQ int8 parse the file as given; a calibrator is refused before any build."""
    trt = install_fake_tensorrt(monkeypatch, major=11)
    loader = EngineFromOnnx(cnn_onnx, "fp16", cache_dir=tmp_path / "eng", batch=2)
    path = loader()
    assert loader.built and path.is_file()
    (build,) = builds(trt)
    assert build[1] == [] and build[5] is None  # no precision flag, no calibrator
    (parse,) = [c for c in trt.calls if c[0] == "parse_from_file"]
    typed = Path(parse[1])
    assert typed != cnn_onnx and parse[2] == ["FLOAT16"]
    m = onnx.load(str(typed))
    assert [i.type.tensor_type.elem_type for i in [*m.graph.input, *m.graph.output]] == [TensorProto.FLOAT] * 2
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["strongly_typed"].startswith("onnxruntime ") and meta["onnx_built"] == str(typed)

    # the fp16 copy computes what the fp32 model does (ONNX Runtime on the CPU runs both)
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).numpy()
    ref = ort.InferenceSession(str(cnn_onnx)).run(None, {"input": x})[0]
    half = ort.InferenceSession(str(typed)).run(None, {"input": x})[0]
    assert abs(half - ref).max() <= 1e-2 * abs(ref).max()

    # same settings again: engine and converted copy both served from their caches
    stamp = typed.stat().st_mtime_ns
    again = EngineFromOnnx(cnn_onnx, "fp16", cache_dir=tmp_path / "eng", batch=2)
    assert again() == path and not again.built and typed.stat().st_mtime_ns == stamp

    EngineFromOnnx(cnn_onnx, "fp32", cache_dir=tmp_path / "eng", batch=2)()
    assert builds(trt)[-1][1] == []
    assert [c for c in trt.calls if c[0] == "parse_from_file"][-1][1:] == (str(cnn_onnx), ["FLOAT"])

    qdq = qdq_onnx(tmp_path)
    EngineFromOnnx(qdq, "int8", cache_dir=tmp_path / "eng")()
    assert builds(trt)[-1][1] == [] and [c for c in trt.calls if c[0] == "parse_from_file"][-1][1] == str(qdq)
    n = len(builds(trt))
    with pytest.raises(UsageError, match="no int8 calibrators"):
        EngineFromOnnx(cnn_onnx, "int8", cache_dir=tmp_path / "eng", batch=2, calibrator=object())()
    assert len(builds(trt)) == n


def test_tensorrt11_bf16_needs_modelopt(monkeypatch: pytest.MonkeyPatch, cnn_onnx: Path, tmp_path: Path) -> None:
    """Without NVIDIA ModelOpt no installed converter makes a bf16 ONNX: a clear one-line refusal."""
    try:
        import modelopt.onnx.autocast  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001
        pass
    else:
        pytest.skip("NVIDIA ModelOpt is installed here: bf16 converts")
    trt = install_fake_tensorrt(monkeypatch, major=11)
    with pytest.raises(BackendUnavailableError) as exc_info:
        EngineFromOnnx(cnn_onnx, "bf16", cache_dir=tmp_path, batch=2)()
    line = exc_info.value.line()
    assert "bf16" in line and "modelopt" in line and "\n" not in line
    assert builds(trt) == []
