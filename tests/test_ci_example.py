"""examples/ci: the release workflow is valid YAML, its kd-compile command parses with the real
CLI (every option exists and takes the value given), it uploads the output folder whatever the
outcome, and it fails the job on the gate exit code; its README lists every exit code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from kd_compile import errors
from kd_compile.cli import app

yaml = pytest.importorskip("yaml")
CI = Path(__file__).resolve().parents[1] / "examples" / "ci"


def _workflow() -> dict:
    wf = yaml.safe_load((CI / "release-model.yml").read_text(encoding="utf-8"))
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as true
    return wf


def _steps() -> list[dict]:
    (job,) = _workflow()["jobs"].values()
    return job["steps"]


def _kd_compile_args() -> list[str]:
    runs = "\n".join(s.get("run", "") for s in _steps())
    (line,) = [ln.strip() for ln in runs.replace("\\\n", " ").splitlines() if ln.strip().startswith("kd-compile ")]
    args = shlex.split(line.split(">", 1)[0])[1:]
    return args


def test_the_workflow_command_parses_with_the_real_cli():
    args = _kd_compile_args()
    assert {"--target", "--max-params", "--json", "--min-accuracy", "--max-accuracy-drop", "--min-speedup"} <= set(
        a for a in args if a.startswith("--")
    )
    group = typer.main.get_command(app)
    cmd = group.commands["compile"]
    ctx = cmd.make_context("compile", list(args))  # click parses and type-checks; nothing runs
    assert ctx.params["teacher"] == "teacher.pt" and ctx.params["json_out"] is True
    from kd_compile.config import CompileConfig

    opts = {k: v for k, v in ctx.params.items() if k not in ("teacher", "json_out")}
    cfg = CompileConfig.from_options("teacher.pt", **opts)  # the values are valid too
    assert cfg.min_accuracy == 0.85 and cfg.max_accuracy_drop == 2 and cfg.min_speedup == 1.5
    assert cfg.target == "t4" and cfg.constraints.max_params == 4_000_000


def test_the_workflow_uploads_the_out_folder_and_fails_on_the_gate_code():
    wf = _workflow()
    assert wf["on"] and wf["jobs"]
    steps = _steps()
    upload = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert len(upload) == 1 and upload[0]["if"] == "always()" and "kd-out/" in upload[0]["with"]["path"]
    last = steps[-1]
    assert last["if"] == "always()" and "exit 13" in last["run"]
    assert steps.index(upload[0]) < steps.index(last)


def test_the_readme_explains_every_exit_code():
    text = (CI / "README.md").read_text(encoding="utf-8")
    codes = {
        c.exit_code
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.KdCompileError) and c is not errors.KdCompileError
    }
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", text, flags=re.M)}
    assert codes <= listed and {0, 13, 130} <= listed
