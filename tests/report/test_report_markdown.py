"""report.md: units that say what they are, speed in words, calibration status, confidence
intervals and a Deploy section whose ONNX Runtime snippet runs as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    nxt = md.find("\n## ", start + 3)
    return md[start : nxt if nxt > 0 else None]


def _code_blocks(text: str, lang: str) -> list[str]:
    parts = text.split(f"```{lang}\n")[1:]
    return [p.split("```", 1)[0] for p in parts]


def test_markdown_says_units_speed_calibration_and_intervals(compiled):
    out, r = compiled
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "percentage points" in md and "% points" not in md
    sp = r["speedup"]["target"]
    assert ("faster" if sp >= 1 else "slower") in md.splitlines()[2]
    assert "Latency calibration for 2080ti" in md and "error held out" in md
    n = r["run"]["data"]["val"]
    assert f"{n:,} validation images" in md or f"{r['run']['data'].get('test', 0):,} held-out test images" in md
    lo, hi = r["student"]["accuracy_ci95"]
    assert f"95% CI {100 * lo:.1f}-{100 * hi:.1f}%" in md
    assert "ms per batch" in md and "{'ok'" not in md
    assert "## Quality gates" in md and "passed" in md


def test_the_deploy_snippet_runs_the_student_in_onnx_runtime(compiled, tmp_path):
    out, r = compiled
    md = (out / "report.md").read_text(encoding="utf-8")
    deploy = _section(md, "Deploy")
    ort_code = _code_blocks(deploy, "python")[0]
    assert "mean = np.array(" in ort_code and "std = np.array(" in ort_code
    sh = _code_blocks(deploy, "sh")[0]
    assert sh.startswith("trtexec --onnx=student.onnx --saveEngine=student.engine --fp16")
    # TensorRT 11 has no --fp16: the snippet converts the ONNX and builds the fp16 copy without the flag
    convert, build = [ln for ln in sh.splitlines() if "student_fp16.onnx" in ln]
    assert convert.startswith("python -m modelopt.onnx.autocast --onnx_path student.onnx")
    assert build.startswith("trtexec --onnx=student_fp16.onnx") and "--fp16" not in build
    # an int8 target: the TensorRT 10 timing line, and the calibrated quantization an engine to deploy needs
    from kd_compile.report.render import deploy_snippets

    int8 = deploy_snippets({**r, "target": {**r["target"], "precision": "int8"}})["tensorrt"]
    assert int8.startswith("trtexec --onnx=student.onnx --saveEngine=student.engine --int8")
    quantize = [ln for ln in int8.splitlines() if ln.startswith("python -m modelopt.onnx.quantization")]
    assert quantize and "--quantize_mode=int8" in quantize[0] and "--calibration_data=calib.npy" in int8
    assert "trtexec --onnx=student_int8.onnx" in int8 and "student_fp16" not in int8
    # run it as written, on an image of the input size, next to the student
    from PIL import Image

    c, h, w = r["teacher"]["input_shape"]
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), mode="L").save(tmp_path / "image.png")
    os.symlink(out / "student.onnx", tmp_path / "student.onnx")
    (tmp_path / "snippet.py").write_text(ort_code, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out / "student.onnx")).metadata_props}
    classes = json.loads(meta["class_names"]) or list(range(r["run"]["data"]["num_classes"]))
    assert res.stdout.strip() in [str(x) for x in classes]


def test_a_student_near_chance_is_said_first_with_why():
    """It still ships (no gate was set), but the report leads with it, and says what likely made it so
    weak: a --batch-size that leaves one optimiser step an epoch."""
    from kd_compile.report.schema import NEAR_CHANCE, near_chance_note

    note = near_chance_note(0.017, 62, "test", 65536, 12000)
    assert note.startswith(f"{NEAR_CHANCE} 1.7% on the test split, near chance (1.6%)")
    assert "--batch-size 65536 leaves 1 step an epoch" in note and "exit 13" in note
    assert near_chance_note(0.017, 62, "test", 64, 12000).count("--batch-size") == 1  # 188 steps: not blamed
    assert near_chance_note(0.5, 62, "test", 64, 12000) is None and near_chance_note(None, 10, "val", 64, 10) is None
    assert near_chance_note(0.18, 10, "val", 64, 100) is not None  # 10 classes: below 10% + 9% is near chance


def test_the_near_chance_warning_leads_the_markdown(compiled):
    from kd_compile.report.render import render_markdown
    from kd_compile.report.schema import near_chance_note

    _, r = compiled
    note = near_chance_note(0.1, 10, "test", 4096, 1000)
    md = render_markdown({**r, "warnings": [*r.get("warnings", []), note]})
    assert md.splitlines()[2] == f"**Warning: {note}**" and md.count(note) == 1
    assert "faster" in md.splitlines()[4] or "slower" in md.splitlines()[4]
