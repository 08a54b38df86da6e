"""The report's figures, drawn with matplotlib's Agg backend (no display needed) from the report
dict alone, so a report.json from any run can be re-plotted.

Each ``*_figure`` function returns a ``Figure`` or ``None`` when the report holds nothing to draw
(e.g. no candidate trained, no measurement beside a prediction); ``figures`` collects the ones
that exist, with a title and a caption that says what the axes are and where the numbers come
from.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

__all__ = ["Plot", "figures", "png_bytes", "data_uri"]

TEACHER, STUDENT, FRONT, CANDS = "#d62728", "#1f77b4", "#ff7f0e", "#7f7f7f"


@dataclass(frozen=True)
class Plot:
    """One figure of the report: its key (file stem), title, caption and the matplotlib figure."""

    key: str
    title: str
    caption: str
    figure: Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _log(axis: Any) -> None:
    """Log scale with plain labels at 1, 2, 5 x 10^k (readable over less than a decade too)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _ok(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c
        for c in r["search"]["candidates"]
        if c["status"] == "ok" and c["metrics"].get("accuracy") is not None and c["metrics"].get("latency_ms")
    ]


def front_2d(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both (lower latency, higher
    accuracy), by increasing latency: the staircase drawn through the candidates."""
    front: list[tuple[float, float]] = []
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((lat, acc))
    return front


def accuracy_latency_figure(r: dict[str, Any]) -> Any | None:
    """Accuracy against latency on the target: every trained candidate, the Pareto front, the
    teacher and the final student."""
    cands = _ok(r)
    t, s, tg = r["teacher"], r["student"], r["target"]
    t_lat, s_lat = t["latency"].get("latency_ms"), s["latency"].get("latency_ms")
    if not cands and not (t_lat and s_lat):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    if cands:
        pts = [(c["metrics"]["latency_ms"], 100 * c["metrics"]["accuracy"]) for c in cands]
        ax.scatter(*zip(*pts), s=16, color=CANDS, alpha=0.6, label="candidates (proxy accuracy)")
        fr = front_2d(pts)
        ax.plot(*zip(*fr), drawstyle="steps-post", color=FRONT, lw=1.5, label="Pareto front (accuracy, latency)")
        ax.scatter(*zip(*fr), s=30, color=FRONT, zorder=3)
    if t_lat:
        ax.scatter([t_lat], [100 * t["accuracy"]], marker="*", s=220, color=TEACHER, zorder=4, label="teacher")
    if s_lat:
        ax.scatter(
            [s_lat], [100 * s["accuracy"]], marker="D", s=70, color=STUDENT, zorder=4, label="student (final training)"
        )
    ax.set_xscale("log")
    _log(ax.xaxis)
    how = s["latency"].get("method", "")
    ax.set_xlabel(f"latency on {tg['name']}, ms per batch of {s['latency'].get('batch', 1)} ({how}, log scale)")
    split = "test" if r["run"]["data"].get("accuracy_split") == "test" else "validation"
    ax.set_ylabel(f"accuracy, % (candidates: validation; teacher, student: {split})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def search_trace_figure(r: dict[str, Any]) -> Any | None:
    """The search by trial number: each candidate's score with the best so far, and its accuracy."""
    trace = r["search"]["trace"]
    cands = {c["number"]: c for c in r["search"]["candidates"]}
    scored = [x for x in trace if x["score"] is not None]
    if not scored:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.scatter([x["number"] for x in scored], [x["score"] for x in scored], s=14, color=CANDS, label="candidate")
    best = [x for x in trace if x["best_score"] is not None]
    a1.plot(
        [x["number"] for x in best], [x["best_score"] for x in best], drawstyle="steps-post", color=STUDENT,
        label="best so far",
    )  # fmt: skip
    bad = [x["number"] for x in trace if x["status"] != "ok"]
    if bad:
        a1.scatter(bad, [min(x["score"] for x in scored)] * len(bad), marker="x", color=TEACHER, s=14,
                   label="infeasible / failed (not scored)")  # fmt: skip
    a1.set_yscale("log")
    _log(a1.yaxis)
    a1.set_xlabel("trial number")
    a1.set_ylabel("search score (lower is better, log)")
    a1.legend(fontsize=8)
    a1.grid(True, alpha=0.3)
    acc = [
        (n, 100 * c["metrics"]["accuracy"])
        for n, c in sorted(cands.items())
        if c["status"] == "ok" and c["metrics"].get("accuracy") is not None
    ]
    if acc:
        a2.scatter(*zip(*acc), s=14, color=CANDS, label="candidate (proxy training)")
        running, top = [], float("-inf")
        for n, a in acc:
            top = max(top, a)
            running.append((n, top))
        a2.plot(*zip(*running), drawstyle="steps-post", color=FRONT, label="most accurate so far")
    a2.axhline(100 * r["teacher"]["accuracy"], color=TEACHER, ls="--", lw=1, label="teacher")
    a2.set_xlabel("trial number")
    a2.set_ylabel("validation accuracy, %")
    a2.legend(fontsize=8)
    a2.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def layers_figure(r: dict[str, Any], top: int = 30) -> Any | None:
    """The student's per-layer latency (or FLOPs when no per-layer latency is known), the
    ``top`` largest in network order."""
    info = r["student"].get("layers") or {}
    rows = info.get("rows") or []
    timed = info.get("source") != "counted" and all(x.get("latency_ms") is not None for x in rows)
    key = "latency_ms" if timed else "flops"
    rows = [x for x in rows if x.get(key)]
    if not rows:
        return None
    if len(rows) > top:
        keep = {id(x) for x in sorted(rows, key=lambda x: -x[key])[:top]}
        rows = [x for x in rows if id(x) in keep]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.24 * len(rows)))
    labels = [f"{x['name'][-38:]} ({x['op']})" for x in rows]
    values = [x[key] * (1000.0 if timed else 1e-6) for x in rows]
    ax.barh(range(len(rows)), values, color=STUDENT)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    if timed:
        ax.set_xlabel(f"latency per layer, µs ({info.get('source')} on {info.get('device')})")
    else:
        ax.set_xlabel("FLOPs per layer, millions (counted; no per-layer latency for this target)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _pairs(r: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(label, predicted ms, measured ms) wherever the report holds both for one model on one device."""
    out = []
    for name, m in (r.get("measurements") or {}).items():
        if isinstance(m, dict) and m.get("latency_ms") and m.get("predicted_ms"):
            out.append((f"{name} ({m.get('device')})", float(m["predicted_ms"]), float(m["latency_ms"])))
    return out


def predicted_measured_figure(r: dict[str, Any]) -> Any | None:
    """The latency predictor against measurement, where the report has both for the same model
    and device (teacher and student on this machine), with the y = x line."""
    pairs = _pairs(r)
    if not pairs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    for label, p, m in pairs:
        ax.scatter([m], [p], s=40, label=f"{label}: {p / m:.2f}x of measured")
    lo = min(min(p, m) for _, p, m in pairs) / 2
    hi = max(max(p, m) for _, p, m in pairs) * 2
    ax.plot([lo, hi], [lo, hi], color=CANDS, ls="--", lw=1, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log(ax.xaxis)
    _log(ax.yaxis)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency, ms per batch (log)")
    ax.set_ylabel("predicted latency, ms per batch (log)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def figures(r: dict[str, Any]) -> list[Plot]:
    """The report's figures that have something to draw, in reading order."""
    tg = r["target"]["name"]
    specs = [
        (
            "accuracy_latency",
            f"Accuracy against latency on {tg}",
            "Grey: each trained candidate (accuracy after its short proxy training). Orange: the Pareto front, "
            "candidates no other is both faster and more accurate than. Star: the teacher; diamond: the student "
            "after its final training.",
            accuracy_latency_figure,
        ),
        (
            "search_trace",
            "Search trace",
            "Left: each candidate's search score by trial number (lower is better) and the best so far. "
            "Right: each candidate's proxy accuracy and the most accurate so far, against the teacher's.",
            search_trace_figure,
        ),
        (
            "layers",
            "Where the student's time goes",
            "The student's layers (the largest, in network order) as deployed (re-parameterised blocks folded).",
            layers_figure,
        ),
        (
            "predicted_measured",
            "Predicted against measured latency",
            "The latency predictor's figure against a measurement of the same model on the same device "
            "(this machine); points on the dashed line are predicted exactly.",
            predicted_measured_figure,
        ),
    ]
    out = []
    for key, title, caption, fn in specs:
        fig = fn(r)
        if fig is not None:
            out.append(Plot(key, title, caption, fig))
    return out


def png_bytes(fig: Any, dpi: int = 96) -> bytes:
    """The figure as PNG bytes; the figure is closed (its memory released)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:`` URI embedding ``png`` (so the HTML needs no other file)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
