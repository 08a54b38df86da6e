"""Write a report's files into a run's output folder: ``report.json`` (the data, versioned and
described by ``report.schema.json``), ``report.md``, ``report.html`` (self-contained, figures
embedded) and ``trace.png`` (the search trace on its own, for a quick look)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .render import render_markdown


def write_report(r: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the report files into ``out`` and return their paths by name. The figures need
    matplotlib (a dependency); should drawing fail, the HTML page and ``trace.png`` are left out
    rather than the run lost."""
    out = Path(out)
    paths = {"report.json": out / "report.json", "report.md": out / "report.md"}
    paths["report.json"].write_text(json.dumps(r, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    paths["report.md"].write_text(render_markdown(r), encoding="utf-8")
    try:
        from .html import render_html
        from .plots import png_bytes, search_trace_figure

        page = render_html(r)
        fig = search_trace_figure(r)
        png = None if fig is None else png_bytes(fig, dpi=110)
    except Exception as exc:  # the figures are a view of report.json: never worth the trained student
        warnings.warn(f"report.html not written: {type(exc).__name__}: {exc}", stacklevel=2)
        return paths
    paths["report.html"] = out / "report.html"
    paths["report.html"].write_text(page, encoding="utf-8")
    if png is not None:
        paths["trace.png"] = out / "trace.png"
        paths["trace.png"].write_bytes(png)
    return paths
