"""Broken device profiles passed by path to --target: every one is refused with exit 5 and one
line naming the field, before anything else happens (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kd_compile.cli import app
from kd_compile.errors import TargetError
from kd_compile.targets import load_target_file

T4 = (Path(__file__).resolve().parents[2] / "kd_compile" / "targets" / "t4.toml").read_text(encoding="utf-8")


def _edit(field: str, value: str | None) -> str:
    """t4.toml with the top-level ``field`` set to the TOML text ``value`` (None: removed)."""
    out, done = [], False
    for line in T4.splitlines():
        if line.split("=")[0].strip() == field and not done:
            done = True
            if value is not None:
                out.append(f"{field} = {value}")
            continue
        out.append(line)
    if not done and value is not None:
        out.insert(0, f"{field} = {value}")
    return "\n".join(out) + "\n"


BROKEN: dict[str, tuple[str, str]] = {
    "negative bandwidth": (_edit("memory_bandwidth_gbs", "-300.0"), "memory_bandwidth_gbs"),
    "zero memory": (_edit("memory_gb", "0"), "memory_gb"),
    "nan bandwidth": (_edit("memory_bandwidth_gbs", "nan"), "memory_bandwidth_gbs"),
    "inf memory": (_edit("memory_gb", "inf"), "memory_gb"),
    "absurd bandwidth": (_edit("memory_bandwidth_gbs", "1e300"), "memory_bandwidth_gbs"),
    "negative launch overhead": (_edit("launch_overhead_us", "-5.0"), "launch_overhead_us"),
    "nan launch overhead": (_edit("launch_overhead_us", "nan"), "launch_overhead_us"),
    "inf launch overhead": (_edit("launch_overhead_us", "inf"), "launch_overhead_us"),
    "float compute units": (_edit("compute_units", "40.5"), "compute_units"),
    "huge integer compute units": (_edit("compute_units", "99999999999999999999"), "compute_units"),
    "string bandwidth": (_edit("memory_bandwidth_gbs", '"fast"'), "memory_bandwidth_gbs"),
    "boolean memory": (_edit("memory_gb", "true"), "memory_gb"),
    "negative boost clock": (_edit("boost_clock_mhz", "-1590"), "boost_clock_mhz"),
    "negative power limit": (_edit("tdp_w", "-70"), "tdp_w"),
    "absurd power limit": (_edit("tdp_w", "1e9"), "tdp_w"),
    "negative process node": (_edit("process_nm", "-12"), "process_nm"),
    "absurd process node": (_edit("process_nm", "1e6"), "process_nm"),
    "process node a string": (_edit("process_nm", '"4N"'), "process_nm"),
    "local not a boolean": (_edit("local", '"yes"'), "local"),
    "display name a number": (_edit("display_name", "42"), "display_name"),
    "missing kind": (_edit("kind", None), "kind"),
    "missing compute units": (_edit("compute_units", None), "compute_units"),
    "unknown default runtime": (_edit("default_runtime", '"tensorflow"'), "default_runtime"),
    "unknown default precision": (_edit("default_precision", '"fp8"'), "default_precision"),
    "unknown field": (_edit("memory_bandwith_gbs", "300.0"), "memory_bandwith_gbs"),
    "nan peak": (T4.replace("fp32 = ", "fp32 = nan #", 1), "peak_tflops.fp32"),
    "negative peak": (T4.replace("fp32 = ", "fp32 = -", 1), "peak_tflops.fp32"),
    "inf peak": (T4.replace("fp32 = ", "fp32 = inf #", 1), "peak_tflops.fp32"),
    "not TOML": ("name = [unclosed\n", "not valid TOML"),
    "not UTF-8": ('name = "\xff"\n', "not valid TOML"),
    "deeply nested": ("x = " + "[" * 5000 + "]" * 5000 + "\n", "x"),
}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "broken.toml"
    if text.startswith('name = "\xff'):
        p.write_bytes(b'name = "\xff"\n')
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_the_template_is_valid(tmp_path: Path) -> None:
    assert load_target_file(_write(tmp_path, T4)).name == "t4"


@pytest.mark.parametrize(
    ("kind", "runtime", "precision"),
    [("gpu", "tensorrt", "fp16"), ("edge-gpu", "tensorrt", "fp16"), ("cpu", "onnxruntime", "fp32")],
)
def test_a_profile_without_defaults_deploys_as_the_shipped_ones_of_its_kind(tmp_path, kind, runtime, precision):
    """A user's GPU profile need not name a default runtime and precision: those of its kind."""
    text = _edit("kind", f'"{kind}"')
    lines = [ln for ln in text.splitlines() if not ln.startswith(("default_runtime", "default_precision"))]
    p = _write(tmp_path, "\n".join(lines) + "\n")
    prof = load_target_file(p)
    assert (prof.kind, prof.default_runtime, prof.default_precision) == (kind, runtime, precision)
    given = load_target_file(_write(tmp_path, T4.replace('default_runtime = "tensorrt"', 'default_runtime = "torch"')))
    assert given.default_runtime == "torch"  # a profile's own choice wins


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_a_broken_profile_is_refused_naming_the_problem(tmp_path: Path, case: str) -> None:
    text, named = BROKEN[case]
    with pytest.raises(TargetError) as e:
        load_target_file(_write(tmp_path, text))
    assert e.value.exit_code == 5
    assert named in str(e.value) and "\n" not in e.value.line()


@pytest.mark.parametrize("case", ["negative launch overhead", "nan bandwidth", "missing kind", "not TOML"])
def test_a_broken_profile_on_the_command_line_exits_5(tmp_path: Path, case: str) -> None:
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"never read: the target is checked first")
    res = CliRunner().invoke(
        app, [str(teacher), "--target", str(_write(tmp_path, BROKEN[case][0])), "--out", str(tmp_path / "o")]
    )
    out = res.output.strip()
    assert res.exit_code == 5, out
    assert "Traceback" not in out and "internal error" not in out
    assert len(out.splitlines()) == 1 and out.startswith("kd-compile: error:")
    assert not (tmp_path / "o").exists()


def test_a_huge_profile_file_is_not_read(tmp_path: Path) -> None:
    p = tmp_path / "huge.toml"
    with open(p, "wb") as f:
        f.truncate(3 << 30)  # sparse: nothing is written, the size alone is refused
    with pytest.raises(TargetError, match="too large"):
        load_target_file(p)
