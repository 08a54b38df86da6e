"""One small compile run shared by the report tests (its report.json, .md, .html and exports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RUN = dict(
    target="2080ti",
    max_params="12K",
    budget=4,
    proxy_epochs=0.5,
    proxy_fraction=0.5,
    final_epochs=1,
    strategy="random",
    seed=0,
    max_latency="none",
    compare_ce=False,
    min_accuracy=0.01,  # a gate recorded in the report (it passes)
)


@pytest.fixture(scope="session")
def compiled(digits_teacher, tmp_path_factory) -> tuple[Path, dict]:
    """(output folder, report dict) of one tiny compile of the digits teacher for a 2080 Ti."""
    import kd_compile

    out = tmp_path_factory.mktemp("report_run") / "out"
    kd_compile.compile(str(digits_teacher), out=out, **RUN)
    return out, json.loads((out / "report.json").read_text(encoding="utf-8"))
