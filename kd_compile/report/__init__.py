"""The run report: a versioned JSON document (with a published JSON Schema), a Markdown and a
self-contained HTML rendering with plots."""

from .html import render_html
from .render import render_markdown
from .schema import SCHEMA_VERSION, build_report, json_schema, pareto_front, validate_report
from .write import write_report

__all__ = [
    "SCHEMA_VERSION",
    "build_report",
    "json_schema",
    "pareto_front",
    "render_html",
    "render_markdown",
    "validate_report",
    "write_report",
]
