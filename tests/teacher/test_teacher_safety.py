"""No code runs from a checkpoint without consent: a hostile pickle in every container format.

Each payload would create a marker file when unpickled. Without ``--trust-checkpoint`` every
file is refused with ``CheckpointError`` (exit 3), a one-line reason, and no marker. Where the
payload is reachable at all, loading with trust does create the marker: the payloads are live,
so it is the check that stops them.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from teacher_support import _Payload, evil_pickle, pt2_config, rewrite_zip, small_net, torch_zip_bytes
from typer.testing import CliRunner

from kd_compile.errors import CheckpointError, UsageError
from kd_compile.teacher import load_teacher

WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"


def _pt2(tmp: Path) -> Path:
    p = tmp / "clean.pt2"
    torch.export.save(torch.export.export(small_net().eval(), (torch.zeros(1, 1, 16, 16),)), str(p))
    return p


def _pt2_pickled_weight(tmp: Path, marker: Path, name: str = "weight.pt2") -> Path:
    cfg = pt2_config(_pt2(tmp), WEIGHTS_CONFIG)
    cfg["config"]["0.weight"]["use_pickle"] = True
    src = tmp / "clean.pt2"
    replace = {WEIGHTS_CONFIG: json.dumps(cfg).encode(), "data/weights/weight_0": evil_pickle(marker)}
    return rewrite_zip(src, tmp / name, replace)


def _pt2_sample_inputs(tmp: Path, marker: Path) -> Path:
    return rewrite_zip(_pt2(tmp), tmp / "sample.pt2", {"data/sample_inputs/model.pt": evil_pickle(marker)})


def _pt2_opaque_constant(tmp: Path, marker: Path) -> Path:
    entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    cfg = json.dumps({"config": {"evil": entry}}).encode()
    return rewrite_zip(
        _pt2(tmp), tmp / "opaque.pt2", {CONSTANTS_CONFIG: cfg}, {"data/constants/opaque_obj_0": evil_pickle(marker)}
    )


def _pt2_legacy_weights(tmp: Path, marker: Path) -> Path:
    # the legacy layout: torch.export.load unpickles data/weights/<model>.pt freely
    return rewrite_zip(_pt2(tmp), tmp / "legacy.pt2", {}, {"data/weights/model.pt": evil_pickle(marker)})


def _pt2_aoti(tmp: Path, marker: Path) -> Path:
    return rewrite_zip(_pt2(tmp), tmp / "aoti.pt2", {}, {"data/aotinductor/model/model.so": b"\x7fELF"})


def _pt2_old_format(tmp: Path, marker: Path) -> Path:
    # torch.export's pre-2.7 zip, which it reads unpickling freely
    p = tmp / "old.pt2"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("version", "8.0")
        z.writestr("serialized_exported_program.json", "{}")
        for name in ("state_dict", "constants", "example_inputs"):
            z.writestr(f"serialized_{name}.pt", evil_pickle(marker))
    return p


def _pt2_shape_expression(tmp: Path, marker: Path) -> Path:
    # no pickle at all: torch.export.load parses shape expressions with sympy.sympify (eval)
    src = _pt2(tmp)
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/", 1)[0]
        graph = json.loads(z.read(f"{root}/models/model.json"))
    code = f"__import__('builtins').open({str(marker)!r}, 'w').write('pwned')"
    graph["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0] = {
        "as_expr": {"expr_str": code, "hint": {"as_int": 1}}
    }
    return rewrite_zip(src, tmp / "sympy.pt2", {"models/model.json": json.dumps(graph).encode()})


def _plain_pickle(tmp: Path, marker: Path) -> Path:
    p = tmp / "plain.pt"
    p.write_bytes(evil_pickle(marker))
    return p


def _zip_pt(tmp: Path, marker: Path) -> Path:
    p = tmp / "zip.pt"
    p.write_bytes(torch_zip_bytes({"epoch": 1, "model": _Payload(marker)}))
    return p


def _legacy_torch_save(tmp: Path, marker: Path) -> Path:
    p = tmp / "legacy_format.pt"
    torch.save({"model": _Payload(marker)}, p, _use_new_zipfile_serialization=False)
    return p


def _torchscript(tmp: Path, marker: Path, member: str) -> Path:
    clean = tmp / "clean_ts.pt"
    torch.jit.save(torch.jit.script(small_net().eval()), str(clean))
    return rewrite_zip(clean, tmp / f"ts_{member.replace('.', '_')}.pt", {member: evil_pickle(marker)})


HOSTILE: dict[str, Callable[[Path, Path], Path]] = {
    "pickle": _plain_pickle,
    "zip .pt": _zip_pt,
    "legacy torch.save": _legacy_torch_save,
    ".pt2 pickled weight": _pt2_pickled_weight,
    ".pt2 renamed .pt": lambda t, m: _pt2_pickled_weight(t, m, "renamed.pt"),
    ".pt2 sample inputs": _pt2_sample_inputs,
    ".pt2 opaque constant": _pt2_opaque_constant,
    ".pt2 legacy weights file": _pt2_legacy_weights,
    ".pt2 AOTInductor code": _pt2_aoti,
    ".pt2 old format": _pt2_old_format,
    ".pt2 shape expression": _pt2_shape_expression,
    "TorchScript data.pkl": lambda t, m: _torchscript(t, m, "data.pkl"),
    "TorchScript constants.pkl": lambda t, m: _torchscript(t, m, "constants.pkl"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_checkpoint_is_refused_and_runs_nothing(kind, tmp_path):
    marker = tmp_path / "MARKER"
    path = HOSTILE[kind](tmp_path, marker)
    with pytest.raises(CheckpointError) as info:
        load_teacher(path, input_shape=(1, 16, 16))
    assert not marker.exists(), f"{kind}: the payload ran"
    assert info.value.exit_code == 3
    line = info.value.line()
    assert "\n" not in line and str(path) in line


@pytest.mark.parametrize("kind", list(HOSTILE)[:3])
def test_hostile_pickle_under_arch_is_refused(kind, tmp_path):
    marker = tmp_path / "MARKER"
    path = HOSTILE[kind](tmp_path, marker)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_teacher(path, arch="test_resnet", input_shape=(3, 16, 16))
    assert not marker.exists()


@pytest.mark.parametrize("truthy", ["no", "false", 1, "0"])
def test_only_true_itself_trusts_a_checkpoint(truthy, tmp_path):
    """``trust_checkpoint="no"`` is truthy in Python: had it been read as truth, the payload would run."""
    import kd_compile

    marker = tmp_path / "MARKER"
    path = HOSTILE["pickle"](tmp_path, marker)
    with pytest.raises(UsageError, match="trust_checkpoint must be True or False"):
        load_teacher(path, input_shape=(1, 16, 16), trust_checkpoint=truthy)
    with pytest.raises(UsageError, match="trust_checkpoint must be True or False"):
        kd_compile.profile(path, target="t4", method="predict", input_shape="1,16,16", trust_checkpoint=truthy)
    assert not marker.exists()


LIVE = ["pickle", "zip .pt", ".pt2 pickled weight", ".pt2 renamed .pt", ".pt2 sample inputs", ".pt2 shape expression"]


@pytest.mark.parametrize("kind", LIVE)
def test_payloads_are_live_with_trust(kind, tmp_path):
    marker = tmp_path / "MARKER"
    path = HOSTILE[kind](tmp_path, marker)
    with pytest.raises(CheckpointError):  # the payload is no model, but it ran
        load_teacher(path, input_shape=(1, 16, 16), trust_checkpoint=True)
    assert marker.exists()


def test_reasons_name_what_was_found(tmp_path):
    m = tmp_path / "MARKER"
    cases = {
        ".pt2 pickled weight": "weight '0.weight' is stored as a pickle",
        ".pt2 renamed .pt": "weight '0.weight' is stored as a pickle",
        ".pt2 sample inputs": "sample inputs",
        ".pt2 AOTInductor code": "AOTInductor",
        ".pt2 shape expression": "shape expression that is code",
        "TorchScript data.pkl": "data.pkl pickles",
        "pickle": "refused to unpickle",
    }
    for kind, reason in cases.items():
        with pytest.raises(CheckpointError, match=reason) as info:
            load_teacher(HOSTILE[kind](tmp_path, m), input_shape=(1, 16, 16))
        assert "--trust-checkpoint" in info.value.line()


def test_compile_and_profile_refuse_through_the_cli(tmp_path):
    from kd_compile.cli import app

    marker = tmp_path / "MARKER"
    path = _pt2_pickled_weight(tmp_path, marker, "teacher.pt")
    runner = CliRunner()
    for args in (
        ["compile", str(path), "--data", "digits", "--out", str(tmp_path / "o")],
        ["profile", str(path)],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 3, res.output
        errors = [line for line in res.output.splitlines() if line.startswith("kd-compile: error:")]
        assert len(errors) == 1 and "refused to load" in errors[0]
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_clean_pt2_still_loads(tmp_path):
    t = load_teacher(_pt2(tmp_path))
    assert t.input_shape == (1, 16, 16) and t.meta["format"] == "torch.export"


def test_exported_graph_may_call_only_operators():
    import os
    from types import SimpleNamespace

    from kd_compile.teacher import _check_graph, _Unsafe

    g = torch.fx.Graph()
    x = g.placeholder("x")
    g.call_function(os.getcwd)  # harmless here; any Python function would run the same way
    g.output(g.call_function(torch.ops.aten.relu.default, (x,)))
    with pytest.raises(_Unsafe, match="calls getcwd, not an operator"):
        _check_graph(SimpleNamespace(graph_module=torch.fx.GraphModule(torch.nn.Module(), g)))
    clean = torch.export.export(small_net().eval(), (torch.zeros(1, 1, 8, 8),))
    _check_graph(clean)
