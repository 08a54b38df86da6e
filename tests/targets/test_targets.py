"""Built-in device profiles validate; bad user profiles fail with one clear TargetError."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kd_compile.errors import TargetError
from kd_compile.targets import get_target, list_targets, load_target_file
from kd_compile.targets.profile import _builtin_dir

EXPECTED = {"1080ti", "titan-x", "titan-xp", "titan-rtx", "v100", "2080ti", "t4", "a10", "a100", "l4", "h100", "h200",
            "rtx3090", "rtx4090", "rtx5090", "rtx-pro-6000-maxq", "jetson-nano", "jetson-tx2", "jetson-xavier-nx",
            "jetson-agx-xavier",
            "jetson-orin-nano", "jetson-agx-orin", "cpu"}
# Pascal GP102: native fp16 at 1/64 of fp32, so fp32 is the sensible default there.
SLOW_FP16 = {"1080ti", "titan-x", "titan-xp"}


def test_all_expected_targets_exist() -> None:
    assert EXPECTED <= set(list_targets())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_profile_is_valid_and_cited(name: str) -> None:
    t = get_target(name)
    assert t.name == name
    assert t.sources and all(len(s) > 20 for s in t.sources)
    assert t.peak_for("fp32") > 0 and t.memory_bandwidth_gbs > 0 and t.compute_units > 0
    if t.kind == "cpu":
        assert t.local and t.default_runtime == "onnxruntime" and t.default_precision == "fp32"
    elif name in SLOW_FP16:
        assert not t.local and t.default_runtime == "tensorrt" and t.default_precision == "fp32"
        assert t.peak_for("fp16") < t.peak_for("fp32") / 32 and "fp16_tensor" not in t.peak_tflops
        assert t.peak_for("int8") > t.peak_for("fp32")  # DP4A
    else:
        assert not t.local and t.default_runtime == "tensorrt" and t.default_precision == "fp16"
        # fp16 above fp32 (tensor cores or 2x-rate CUDA cores), int8 not below fp16.
        assert t.peak_for("fp16") > t.peak_for("fp32")
        assert t.peak_for("int8") >= t.peak_for("fp16")
    if t.kind != "cpu":
        assert t.boost_clock_mhz > 0 and t.launch_overhead_us == 0  # fixed costs are fitted, not hand-set
        # the power limit caps tensor-core throughput; every GPU profile cites one
        assert 5 <= t.tdp_w <= 1000 and any("W" in line for line in open(t.path or "").read().splitlines()
                                             if line.startswith("tdp_w"))
        # and its process node (the cap's FLOPs per joule follow it), with where it comes from
        assert 3 <= t.process_nm <= 28 and any("whitepaper" in line or "UNCERTAIN" in line
                                               for line in open(t.path or "").read().splitlines()
                                               if line.startswith("process_nm"))


def test_datacenter_and_jetson_ordering() -> None:
    assert get_target("h200").memory_bandwidth_gbs > get_target("h100").memory_bandwidth_gbs
    assert get_target("h200").peak_for("fp16") == get_target("h100").peak_for("fp16")
    assert get_target("v100").peak_for("fp16") > get_target("t4").peak_for("fp16")
    assert (get_target("jetson-agx-orin").peak_for("fp16") > get_target("jetson-agx-xavier").peak_for("fp16")
            > get_target("jetson-xavier-nx").peak_for("fp16") > get_target("jetson-tx2").peak_for("fp16")
            > get_target("jetson-nano").peak_for("fp16"))
    assert all(get_target(n).kind == "edge-gpu" for n in EXPECTED if n.startswith("jetson"))


def test_newer_gpus_are_faster() -> None:
    assert get_target("rtx4090").peak_for("fp16") > get_target("rtx3090").peak_for("fp16") > get_target(
        "2080ti").peak_for("fp16")
    assert get_target("h100").memory_bandwidth_gbs > get_target("a100").memory_bandwidth_gbs


def _good() -> dict:
    return tomllib.loads((_builtin_dir() / "t4.toml").read_text(encoding="utf-8"))


def _write(tmp_path: Path, d: dict) -> Path:
    def val(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
    p = tmp_path / "dev.toml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_user_toml_roundtrip(tmp_path: Path) -> None:
    t = load_target_file(_write(tmp_path, _good()))
    assert t.peak_for("fp16") == 65.0


def test_missing_field(tmp_path: Path) -> None:
    d = _good()
    del d["memory_bandwidth_gbs"]
    with pytest.raises(TargetError, match="missing field 'memory_bandwidth_gbs'"):
        get_target(str(_write(tmp_path, d)))


def test_wrong_type(tmp_path: Path) -> None:
    d = _good()
    d["compute_units"] = "forty"
    with pytest.raises(TargetError, match="'compute_units' must be an integer"):
        load_target_file(_write(tmp_path, d))


def test_unknown_key_suggests(tmp_path: Path) -> None:
    d = _good()
    d["memory_bandwith_gbs"] = 1.0
    with pytest.raises(TargetError, match="unknown field 'memory_bandwith_gbs'.*memory_bandwidth_gbs"):
        load_target_file(_write(tmp_path, d))


def test_unknown_peak_key(tmp_path: Path) -> None:
    d = _good()
    d["peak_tflops"]["fp8_tensor"] = 100.0
    with pytest.raises(TargetError, match="unknown key 'fp8_tensor'"):
        load_target_file(_write(tmp_path, d))


@pytest.mark.parametrize("name", ["../../..", "a/b", "..", "", "x" * 80, "name with space"])
def test_a_target_name_that_is_a_path_is_refused(tmp_path, name):
    """A target's name becomes a file name (calibration/<name>.json): never a path (exit 5)."""
    from kd_compile.errors import TargetError
    from kd_compile.targets import load_target_file

    src = (Path(__file__).resolve().parents[2] / "kd_compile" / "targets" / "t4.toml").read_text()
    p = tmp_path / "evil.toml"
    p.write_text(src.replace('name = "t4"', f"name = {name!r}".replace("'", '"'), 1))
    with pytest.raises(TargetError, match="name must be") as e:
        load_target_file(p)
    assert e.value.exit_code == 5
