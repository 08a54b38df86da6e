"""Render the report as one self-contained HTML page: the lead in words, the numbers with their
units and error bands, the figures embedded as base64 PNG (``plots.py``), the deployment
commands, the Pareto front, the exports with their parity checks, and the warnings.

Nothing is loaded from elsewhere (no script, stylesheet, font or image file), so the page opens
from a CI artifact or an e-mail attachment as it is.
"""

from __future__ import annotations

import html
import re
from typing import Any

from ..config import format_count
from .plots import data_uri, figures, png_bytes
from .render import (
    _accuracy_sentence,
    _floats,
    _ms,
    _pct,
    _preprocessing,
    accuracy_phrase,
    calibration_line,
    deploy_snippets,
    speed_lines,
    speed_phrase,
    twin_label,
)

__all__ = ["render_html"]

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:13px}code{font-size:13px}
.lead p{font-size:1.1em;margin:.3em 0}.warn{background:#fff4e5;border-left:4px solid #ff9800;padding:.5em .8em}
.fail{color:#b00020;font-weight:600}.ok{color:#1b5e20}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
img{max-width:100%;height:auto}
"""


def _md_inline(text: str) -> str:
    """The little Markdown the shared phrases use (``**bold**``, `` `code` ``), as HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _summary(r: dict[str, Any]) -> str:
    t, s = r["teacher"], r["student"]
    e = html.escape
    speed = speed_phrase(1 / s["latency_ratio"] if s.get("latency_ratio") else None)
    split = "test" if r["run"]["data"].get("accuracy_split") == "test" else "validation"
    twin, twin_acc = twin_label(r)
    rows = [
        [
            f"{split} accuracy",
            e(accuracy_phrase(t["accuracy"], t.get("accuracy_ci95"))),
            e(accuracy_phrase(s["accuracy"], s.get("accuracy_ci95"))),
            e(f"{100 * (s['accuracy'] - t['accuracy']):+.2f} percentage points"),
        ],
        [
            f"{split} {twin}",
            "",
            e(_pct(twin_acc)),
            "" if s.get("kd_gain") is None else e(f"KD gain {100 * s['kd_gain']:+.2f} percentage points"),
        ],
    ]
    if split == "test":  # every choice was made on the validation split: its figures, beside
        rows.append(
            ["validation accuracy (used for choices)", _pct(t.get("val_accuracy")), _pct(s.get("val_accuracy")), ""]
        )
    rows += [
        ["parameters", format_count(t["params"]), format_count(s["params"]), f"{s['params_ratio']:.3f}x"],
        ["FLOPs per image", format_count(t["flops"]), format_count(s["flops"]), f"{s['flops_ratio']:.3f}x"],
        [
            f"latency on target, per batch of {s['latency'].get('batch', 1)}",
            e(_ms(t["latency"])),
            e(_ms(s["latency"])),
            e(f"{s['latency_ratio']:.3f}x the teacher's time ({speed})"),
        ],
    ]
    return _table(["", "teacher", "student", "student vs teacher"], rows)


def _figures(r: dict[str, Any]) -> list[str]:
    out = []
    for p in figures(r):
        uri = data_uri(png_bytes(p.figure))
        out.append(
            f'<figure id="fig-{p.key}"><h3>{html.escape(p.title)}</h3>'
            f'<img src="{uri}" alt="{html.escape(p.title)}">'
            f"<figcaption>{html.escape(p.caption)}</figcaption></figure>"
        )
    return out


def _pareto(r: dict[str, Any]) -> str:
    rows = [
        [
            str(p["number"]),
            _pct(p["accuracy"]),
            f"{p['latency_ms']:.4g}",
            format_count(p["params"]),
            f"<code>{html.escape(str(p.get('arch') or ''))}</code>",
        ]
        for p in r["search"]["pareto"]
    ]
    return _table(["#", "proxy accuracy", "latency, ms", "params", "architecture"], rows, {0, 1, 2, 3})


def _artifacts(r: dict[str, Any]) -> str:
    checks = r.get("exports") or {}
    rows = []
    for name in r["artifacts"]:
        c = checks.get(name) or {}
        diff = c.get("max_abs_diff")
        parity = "" if diff is None else f"max |diff| {diff:.2g} vs the eager student"
        if c.get("checked_with"):
            parity = f"outputs checked against PyTorch with {c['checked_with']}"
        extra = c.get("format", "")
        if "dynamic_batch" in c:
            extra += ", dynamic batch" if c["dynamic_batch"] else f", fixed batch {c.get('batch')}"
        rows.append([f"<code>{html.escape(name)}</code>", html.escape(extra), html.escape(parity)])
    for name, c in checks.items():
        if c.get("status") != "ok":
            rows.append(
                [f"<code>{html.escape(name)}</code>", '<span class="fail">not written</span>', html.escape(c["error"])]
            )
    return _table(["file", "form", "check"], rows)


def _gates(r: dict[str, Any]) -> str:
    rows = []
    for name, g in (r.get("gates") or {}).items():
        val = "-" if g.get("value") is None else f"{g['value']:.4g}"
        res = '<span class="ok">passed</span>' if g["passed"] else '<span class="fail">FAILED</span>'
        rows.append([html.escape(name), f"{g['threshold']:g}", val, res])
    return _table(["gate", "needed", "found", "result"], rows) if rows else ""


def _input_line(r: dict[str, Any]) -> str:
    p = _preprocessing(r)
    return (
        f"Input: {p['channels']}x{p['height']}x{p['width']} (C x H x W) float32, NCHW; pixels scaled to [0, 1], "
        f"then normalised with mean {_floats(p['mean'])} and std {_floats(p['std'])}; {p['interpolation']} resize, "
        f"crop_pct {p['crop_pct']:g}. Output: one logit per class."
    )


def render_html(r: dict[str, Any]) -> str:
    """The report as a self-contained HTML page (figures embedded)."""
    e = html.escape
    tg, search = r["target"], r["search"]
    sn = deploy_snippets(r)
    statuses = ", ".join(f"{n} {k}" for k, n in search["statuses"].items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>kd-compile report: {e(r['student']['arch'])} for {e(tg['name'])}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>kd-compile report</h1>",
        '<div class="lead">' + "".join(f"<p>{_md_inline(x)}</p>" for x in speed_lines(r)) + "</div>",
        f"<p>Target <strong>{e(tg['display_name'])}</strong> (<code>{e(tg['name'])}</code>, {e(tg['runtime'])}, "
        f"{e(tg['precision'])}). Strategy <code>{e(search['strategy'])}</code> over the "
        f"<code>{e(search['space'])}</code> space; {search['evaluated']} candidates evaluated ({e(statuses)}). "
        f"{_md_inline(_accuracy_sentence(r))}</p>",
        f"<p>{_md_inline(calibration_line(r))}</p>",
        "<h2>Teacher and student</h2>",
        _summary(r),
        f"<p>Student: <code>{e(r['student']['arch'])}</code>.</p>",
    ]
    warns = list(r.get("warnings") or []) + list(r["teacher"].get("notes") or [])
    if warns:
        parts.append('<div class="warn">' + "".join(f"<p>{e(w)}</p>" for w in warns) + "</div>")
    gates = _gates(r)
    if gates:
        parts += ["<h2>Quality gates</h2>", gates]
    parts += ["<h2>Figures</h2>", *_figures(r)]
    if search["pareto"]:
        parts += ["<h2>Pareto front (accuracy, latency, params)</h2>", _pareto(r)]
    parts += [
        "<h2>Deploy</h2>",
        f"<p>{e(_input_line(r))}</p>",
        "<p>ONNX Runtime (Python); <code>student.onnx</code> carries the same preprocessing and the class names "
        "in its metadata:</p>",
        f"<pre><code>{e(sn['onnxruntime'])}</code></pre>",
        "<p>TensorRT (build an engine from the ONNX file on the deployment GPU, then time it):</p>",
        f"<pre><code>{e(sn['tensorrt'])}</code></pre>",
        "<p>PyTorch:</p>",
        f"<pre><code>{e(sn['torch'])}</code></pre>",
        "<h2>Artifacts</h2>",
        _artifacts(r),
        "<h2>Time</h2>",
        "<p>" + e(", ".join(f"{k} {v:.1f} s" for k, v in r["run"]["timings_s"].items())) + "</p>",
        f"<p><small>kd-compile {e(str(r.get('kd_compile_version')))}, report schema "
        f"{e(str(r.get('schema_version')))}; every candidate is listed in report.json.</small></p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
