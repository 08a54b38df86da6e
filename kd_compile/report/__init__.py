"""The run report: a versioned JSON document, a Markdown rendering and plots."""

from .render import render_markdown, write_report
from .schema import SCHEMA_VERSION, build_report, pareto_front, validate_report

__all__ = ["SCHEMA_VERSION", "build_report", "pareto_front", "render_markdown", "validate_report", "write_report"]
