"""The published JSON Schema of report.json: shipped in the package, valid draft 2020-12, and
a real report validates against it while a report missing a required section does not."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import pytest

from kd_compile.report import SCHEMA_VERSION, json_schema, validate_report
from kd_compile.report.schema import REQUIRED, SCHEMA_FILE, wilson_interval

jsonschema = pytest.importorskip("jsonschema")


def _validator():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_is_draft_2020_12_and_shipped_as_package_data():
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA_VERSION in schema["$id"]
    assert tuple(schema["required"]) == REQUIRED  # one list of required sections, in code and schema
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["kd_compile"]
    rel = SCHEMA_FILE.relative_to(SCHEMA_FILE.parents[1]).as_posix()
    assert any(Path(rel).match(g) for g in globs), (rel, globs)


def test_a_real_report_validates(compiled):
    _, r = compiled
    _validator().validate(r)
    validate_report(r)
    # the schema's key sections carry what a pipeline reads
    assert 0 <= r["student"]["accuracy"] <= 1 and r["search"]["statuses"]["ok"] >= 1
    assert set(r["exports"]) >= {"student.onnx", "student.torchscript.pt", "student.pt2"}


@pytest.mark.parametrize("section", ["student", "artifacts", "schema_version"])
def test_a_report_missing_a_required_key_fails(compiled, section):
    _, r = compiled
    bad = copy.deepcopy(r)
    del bad[section]
    errors = list(_validator().iter_errors(bad))
    assert any(section in e.message and e.validator == "required" for e in errors)
    with pytest.raises(ValueError, match=section):
        validate_report(bad)


def test_a_report_with_a_wrong_type_fails(compiled):
    _, r = compiled
    bad = json.loads(json.dumps(r))
    bad["student"]["accuracy"] = "91%"
    bad["search"]["candidates"][0]["status"] = "maybe"
    msgs = [e.message for e in _validator().iter_errors(bad)]
    assert any("'91%'" in m for m in msgs) and any("'maybe'" in m for m in msgs)


def test_wilson_interval_brackets_the_accuracy_and_narrows_with_n():
    lo, hi = wilson_interval(0.9, 100)
    assert lo < 0.9 < hi and 0 <= lo and hi <= 1
    lo2, hi2 = wilson_interval(0.9, 10_000)
    assert hi2 - lo2 < (hi - lo) / 5
    assert wilson_interval(1.0, 50)[1] == 1.0 and wilson_interval(0.0, 50)[0] == 0.0
    assert wilson_interval(0.5, 0) is None


def test_a_speedup_band_with_out_of_sample_figures_validates(compiled, tmp_path, monkeypatch):
    """A report whose target prediction is for an ImageNet-size model carries the band's
    ``out_of_sample`` figures (one per source) as the profiler gives them, and the schema takes them;
    a malformed one (a ratio as text) is refused."""
    from torch import nn

    from kd_compile.profilers import InputSpec, create_profiler

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path))  # the shipped calibration
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    band = create_profiler("roofline", target="2080ti", runtime="torch", precision="fp32", batch=64).profile(
        net, InputSpec((3, 224, 224))).extra["error_band"]
    assert len(band["out_of_sample"]) >= 2
    _, r = compiled
    good = json.loads(json.dumps(r))
    good["speedup"]["error_band"] = band
    _validator().validate(good)
    bad = json.loads(json.dumps(good))
    bad["speedup"]["error_band"]["out_of_sample"][0]["median_ratio"] = "x1.8"
    assert any("'x1.8'" in e.message for e in _validator().iter_errors(bad))
