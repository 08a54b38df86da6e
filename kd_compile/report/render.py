"""Render the report as Markdown (and a PNG plot of the search) next to ``report.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import format_count


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _floats(v: Any) -> str:
    return "-" if not v else "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def _gain(x: float | None) -> str:
    return "-" if x is None else f"KD gain {100 * x:+.2f} points"


def _ms(meas: dict[str, Any]) -> str:
    if meas.get("latency_ms") is None:
        return "-"
    return f"{meas['latency_ms']:.4g} ms ({meas['method']}, {meas['runtime']}, {meas['precision']})"


def speed_phrase(x: float | None) -> str:
    """``2.1x faster`` / ``1.4x slower`` (never a ratio below 1 called a speed-up)."""
    if x is None:
        return "-"
    return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"


def band_phrase(band: dict[str, Any] | None) -> str:
    """The predictor's held-out error for this target and regime, in words, e.g. "±88% median,
    112% p80 held out (device left out: leave-one-device-out over t4 (13 models, ...))"."""
    if not band:
        return "no calibration error known for this target"
    ape, p80 = band.get("median_ape"), band.get("p80_ape")
    if not isinstance(ape, (int, float)):
        return f"unvalidated ({band.get('basis') or 'no measurements for this runtime'})"
    what = f"±{100 * ape:.0f}% median" + (f", {100 * p80:.0f}% p80" if isinstance(p80, (int, float)) else "")
    how = "; ".join(str(x) for x in (band.get("transfer"), band.get("basis")) if x)
    return f"{what} error held out ({how})" if how else f"{what} error held out"


def speed_lines(r: dict[str, Any]) -> list[str]:
    """The report's lead: is the student faster where it will run, and how do we know."""
    sp = r.get("speedup") or {}
    tg = r["target"]
    how = f"{sp.get('method', '?')}, {sp.get('runtime', '?')} {sp.get('precision', '')}".strip()
    if sp.get("method") == "predicted":
        how += f"; {band_phrase(sp.get('error_band'))}"
    out = [f"**On {tg['display_name']}: the student is {speed_phrase(sp.get('target'))}** than the teacher ({how})."]
    for where, label in (("local_cpu", "this machine's CPU"), ("local_gpu", "this machine's GPU")):
        if sp.get(where):
            loc = sp[where]
            out.append(
                f"**On {label}: {speed_phrase(loc['speedup'])}** (measured, {loc.get('runtime')}, {loc.get('device')})."
            )
    return out


def render_markdown(r: dict[str, Any]) -> str:
    t, s, tg = r["teacher"], r["student"], r["target"]
    lines = [
        "# kd-compile report",
        "",
        *speed_lines(r),
        "",
        f"Target **{tg['display_name']}** (`{tg['name']}`, {tg['runtime']}, {tg['precision']}). "
        f"Strategy `{r['search']['strategy']}` over the `{r['search']['space']}` space; "
        f"{r['search']['evaluated']} candidates evaluated "
        f"({', '.join(f'{n} {k}' for k, n in r['search']['statuses'].items())}). "
        f"Accuracies on {r['run']['data']['val']:,} validation images of `{r['run']['data']['name']}`.",
        "",
        "| | teacher | student | ratio |",
        "| --- | --- | --- | --- |",
        f"| validation accuracy | {_pct(t['accuracy'])} | {_pct(s['accuracy'])} | "
        f"{100 * (s['accuracy'] - t['accuracy']):+.2f} points |",
        f"| accuracy without KD (same architecture, CE only) | | {_pct(s['accuracy_without_kd'])} | "
        f"{_gain(s['kd_gain'])} |",
        f"| parameters | {format_count(t['params'])} | {format_count(s['params'])} | {s['params_ratio']:.3f} |",
        f"| FLOPs | {format_count(t['flops'])} | {format_count(s['flops'])} | {s['flops_ratio']:.3f} |",
        f"| latency on target | {_ms(t['latency'])} | {_ms(s['latency'])} | "
        f"{s['latency_ratio']:.3f} ({speed_phrase(1 / s['latency_ratio'] if s['latency_ratio'] else None)}) |",
        "",
        f"Student: `{s['arch']}`. TRADE score {s['trade_score']:.4g} (s = {s['s']:.3f}, "
        f"acc_target = {_pct(r['objective']['acc_target'])}).",
        "",
        "Latency numbers say how they were obtained: *measured* numbers come from running the model, "
        "*predicted* ones from the roofline model of the target profile.",
    ]
    pre = t.get("preprocessing") or {}
    if pre:
        src = pre.get("sources") or {}
        fields = [
            f"input {'x'.join(str(v) for v in pre.get('input_shape', []))} ({src.get('size', '?')})",
            f"mean {_floats(pre.get('mean'))} ({src.get('mean', '?')})",
            f"std {_floats(pre.get('std'))} ({src.get('std', '?')})",
            f"{pre.get('interpolation', '?')} resize ({src.get('interpolation', '?')})",
            f"crop {pre.get('crop_pct', 1.0):g} ({src.get('crop_pct', '?')})",
        ]
        lines += ["", "Teacher preprocessing (where each value came from): " + "; ".join(fields) + "."]
    for note in t.get("notes") or []:
        lines.append(f"Note: {note}")
    if r["run"].get("data_free"):
        lines += [
            "",
            "**Data-free run:** no data was given, so the student was distilled on images synthesised "
            "from the teacher's BatchNorm statistics; accuracies are on a held-out part of those images.",
        ]
    dist = r.get("distiller") or {}
    if dist.get("best_describe"):
        lines += [
            "",
            f"Distiller found by Auto-KD search (MCTS, {dist.get('iterations')} iterations): "
            f"`{dist['best_describe']}` (reward {dist.get('best_reward', float('nan')):.4g}).",
        ]
    meas = r.get("measurements") or {}
    if meas:
        lines += ["", "## Measured on this machine", "", "| model | latency | method |", "| --- | --- | --- |"]
        for name, m in meas.items():
            lines.append(f"| {name} | {m['latency_ms']:.4g} ms | {m['method']} ({m['runtime']}, {m['device']}) |")
    lines += [
        "",
        "## Search trace",
        "",
        "| # | status | fidelity | accuracy | params | latency ms | score | architecture / reason |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    n_infeasible = 0
    for c in r["search"]["candidates"]:
        if c["status"] == "infeasible":
            n_infeasible += 1  # rejected before training; every one is listed in report.json
            continue
        m = c["metrics"]
        params = format_count(m["params"]) if "params" in m else "-"
        latency = f"{m['latency_ms']:.3g}" if "latency_ms" in m else "-"
        score = "-" if c["score"] is None else f"{c['score']:.4g}"
        why = f" — {c['error']}" if c.get("error") else ""
        lines.append(
            f"| {c['number']} | {c['status']} | {c['fidelity']:.2g} | {_pct(m.get('accuracy'))} | "
            f"{params} | {latency} | {score} | {m.get('arch', '')}{why} |"
        )
    if n_infeasible:
        lines += [
            "",
            f"{n_infeasible} further candidates violated a constraint and were rejected before any "
            "training (listed with the reason in report.json).",
        ]
    if r["search"]["pareto"]:
        lines += [
            "",
            "## Pareto front (accuracy, latency, params)",
            "",
            "| # | accuracy | latency ms | params | architecture |",
            "| --- | --- | --- | --- | --- |",
        ]
        for p in r["search"]["pareto"]:
            lines.append(
                f"| {p['number']} | {_pct(p['accuracy'])} | {p['latency_ms']:.3g} | "
                f"{format_count(p['params'])} | {p['arch']} |"
            )
    tm = r["run"]["timings_s"]
    lines += [
        "",
        "## Time",
        "",
        ", ".join(f"{k} {v:.1f} s" for k, v in tm.items()),
        f"; share outside training {_pct(r['run']['share_outside_training'])}.",
        "",
        "Artifacts: " + ", ".join(f"`{k}`" for k in r["artifacts"]) + ".",
        "",
    ]
    if "student.engine" not in r["artifacts"]:
        lines += ["No TensorRT engine was built: TensorRT is not installed on this machine.", ""]
    return "\n".join(lines)


def _plot(r: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    cands = [c for c in r["search"]["candidates"] if c["status"] == "ok"]
    if not cands:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    tr = [x for x in r["search"]["trace"] if x["best_score"] is not None]
    a1.plot([x["number"] for x in tr], [x["best_score"] for x in tr], drawstyle="steps-post", label="best")
    a1.scatter([c["number"] for c in cands], [c["score"] for c in cands], s=12, alpha=0.6, label="candidates")
    a1.set_xlabel("evaluation")
    a1.set_ylabel("search score (lower is better)")
    a1.set_yscale("log")
    a1.legend()
    a2.scatter([c["metrics"]["params"] for c in cands], [100 * c["metrics"]["accuracy"] for c in cands], s=14)
    a2.set_xscale("log")
    a2.set_xlabel("params")
    a2.set_ylabel("proxy accuracy %")
    a2.set_title("candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(r: dict[str, Any], out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"report.json": out / "report.json", "report.md": out / "report.md"}
    paths["report.json"].write_text(json.dumps(r, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    paths["report.md"].write_text(render_markdown(r), encoding="utf-8")
    png = _plot(r, out / "trace.png")
    if png:
        paths["trace.png"] = png
    return paths
