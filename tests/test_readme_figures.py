"""The README's quoted figures equal the benchmark results they come from (``benchmarks/results/*.json``).

Every measured figure the README quotes is written by a benchmark (``make bench`` runs them); this
test re-renders each figure from its results file, rounded as the README quotes it, and finds it in
the README section that quotes it. A figure that was not regenerated after its benchmark changed,
or a results file regenerated without updating the README, fails here. It only reads files.

A section whose results file does not exist yet is listed in ``PENDING`` with the command that
writes it; once the file exists, the section is checked (and must leave ``PENDING``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kd_compile.calibrate import NAS_FIT

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"

#: Sections whose benchmark did not yet write a results file, with the command that writes it.
PENDING: dict[str, str] = {
}


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _section(start: str, end: str) -> str:
    """The README text from the first ``start`` to the next ``end`` after it."""
    text = _readme()
    i = text.find(start)
    assert i >= 0, f"README lost its section starting {start!r}"
    j = text.find(end, i + len(start))
    return text[i : j if j >= 0 else len(text)]


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def _table_rows(section: str) -> list[list[str]]:
    """Cells of every Markdown table row in ``section`` (header and separator rows included),
    without bold markers."""
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            rows.append([c.strip().replace("**", "") for c in line.strip()[1:-1].split("|")])
    return rows


def _assert_quoted(expected: list[str], text: str, what: str, source: str) -> None:
    """Every rendered figure in ``expected`` appears in the README ``text``."""
    missing = [e for e in expected if e not in text]
    assert not missing, f"README's {what} figures differ from {source}: {missing}"


def _pm(mean: float, std: float, fmt: str) -> str:
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


# -- end to end ------------------------------------------------------------------------------------
def check_e2e() -> None:
    doc = _load("e2e_glyphs")
    sec = _section("**End to end**", "**Glyphs difficulty**")
    s = doc["summary"]
    n = len(doc["seeds"])
    expected = [
        f"--seeds {n}",
        f"over {n} seeds",
        _pm(s["wall_s"]["mean"], s["wall_s"]["std"], "{:.1f}") + " s",
        f"{s['teacher_acc']['mean']:.2%}",
        _pm(s["student_acc"]["mean"], s["student_acc"]["std"], "{:.2%}"),
        "gap " + _pm(s["gap_points"]["mean"], s["gap_points"]["std"], "{:.2f}") + " points",
        _pm(s["student_acc_ce"]["mean"], s["student_acc_ce"]["std"], "{:.2%}"),
        f"KD gain {s['kd_gain_points']['mean']:+.2f} ± {s['kd_gain_points']['std']:.2f} points",
        _pm(s["params_ratio"]["mean"], s["params_ratio"]["std"], "{:.3f}"),
        f"{s['speedup_target']['mean']:.2f}x ± {s['speedup_target']['std']:.2f}",
        f"{s['speedup_cpu']['mean']:.2f}x ± {s['speedup_cpu']['std']:.2f}",
        _pm(s["share_outside_training"]["mean"], s["share_outside_training"]["std"], "{:.1%}"),
        " / ".join(f"{r['student_acc']:.2%}" for r in doc["seeds"]),
    ]
    if all("screened" in r for r in doc["seeds"]):  # runs that screen proposals say how many per seed
        expected += [
            "screened out " + " / ".join(str(r["screened"]) for r in doc["seeds"]) + " proposals",
            "trained " + " / ".join(str(r["statuses"].get("ok", 0)) for r in doc["seeds"]) + " candidates",
        ]
    if doc.get("accuracy_split") == "test":  # accuracies on the held-out test split: the README says so
        v, tv = s["student_val_acc"], s["teacher_val_acc"]["mean"]
        expected += [
            f"{doc['test_images']:,} held-out test images",
            f"student with KD {_pm(v['mean'], v['std'], '{:.2%}')}, teacher {tv:.2%}",  # validation, beside
        ]
    else:
        expected += ["validation images"]
    _assert_quoted(expected, " ".join(sec.split()), "end-to-end", "benchmarks/results/e2e_glyphs.json")


def check_e2e_turbo() -> None:
    """The same runs with ``--strategy turbo``, quoted beside the default's."""
    doc = _load("e2e_glyphs_turbo")
    sec = _section("**End to end**", "**Glyphs difficulty**")
    s = doc["summary"]
    worst = min(doc["seeds"], key=lambda r: r["student_acc"])
    expected = [
        "gave " + _pm(s["student_acc"]["mean"], s["student_acc"]["std"], "{:.2%}"),
        f"(a {s['gap_points']['mean']:.2f}-point gap; seed {worst['seed']} at {worst['student_acc']:.2%}, the lowest)",
    ]
    for r in doc["seeds"]:  # where the CE-only twin beat the KD student on validation, it shipped
        if r.get("trained_with") == "ce":
            test = (f"both {r['student_acc']:.2%}" if r["student_acc"] == r["student_acc_kd"]
                    else f"{r['student_acc']:.2%} against {r['student_acc_kd']:.2%}")  # fmt: skip
            expected.append(
                f"In seed {r['seed']} the CE-only twin shipped ({r['student_val_acc']:.2%} on validation against the "
                f"KD student's {r['student_val_acc_kd']:.2%}; {test} on test)"
            )
    _assert_quoted(expected, " ".join(sec.split()), "turbo end-to-end", "e2e_glyphs_turbo.json")


# -- latency predictor -----------------------------------------------------------------------------
_RUNTIMES = {"TensorRT": "tensorrt", "eager": "torch"}
_METHODS = ("predictor", "flops", "params", "nearest-gpu")


_DEVICE_NAMES = {"t4": "T4", "jetson-xavier-nx": "Jetson Xavier NX", "jetson-agx-xavier": "AGX Xavier",
                 "jetson-nano": "Jetson Nano"}
_GPU_NAMES = {"2080ti": "RTX 2080 Ti", "titan-rtx": "Titan RTX", "titan-xp": "Titan Xp", "v100": "V100",
              "1080ti": "GTX 1080 Ti", "titan-x": "Titan X"}


def check_latency() -> None:
    doc = _load("latency_accuracy")
    sec = _section("**Latency predictor**", "Where that leaves the issue's bars")
    rows = [r for r in _table_rows(sec) if r[0] in ("device", "family")]
    assert rows, "README's latency table has no rows"
    key = {"device": "leave_one_device_out", "family": "leave_one_family_out"}
    wrong = []
    for row in rows:
        held, what, cells = row[0], row[1], row[2:]
        m = re.match(r"(\w+), (\S+) \(([\d,]+)", what)
        assert m, f"cannot read the latency row {row}"
        runtime, batch, n = _RUNTIMES[m.group(1)], m.group(2), int(m.group(3).replace(",", ""))
        found = {r["method"]: r for r in doc[key[held]] if r["runtime"] == runtime and str(r["batch"]) == batch}
        for method, cell in zip(_METHODS, cells):
            r = found.get(method)
            assert r is not None, f"no {held}/{runtime}/{batch}/{method} row in latency_accuracy.json"
            if r["n"] != n:
                wrong.append(f"{held} {what}: n {n} != {r['n']}")
            pcts = re.findall(r"([\d.]+)%", cell)
            quoted = {
                "median error": (pcts[0] if pcts else None, f"{100 * r['median_ape']:.1f}"),
                "within 35%": (pcts[1] if len(pcts) > 1 else None, f"{100 * r['within_35']:.0f}"),
            }
            rho = re.search(r"rho ([\d.]+)", cell)
            quoted["rho"] = (rho.group(1) if rho else None, f"{r['spearman_min']:.2f}")
            wrong += [
                f"{held} {what} {method} {name}: README {got} != {want}"
                for name, (got, want) in quoted.items()
                if got is not None and got != want
            ]
    assert not wrong, "README's latency table differs from benchmarks/results/latency_accuracy.json: " + "; ".join(
        wrong
    )
    _check_bands(doc["calibration"]["targets"])
    _check_misses(doc)
    sens = doc.get("sensitivity_nas_fit") or []
    if sens:  # the re-runs with other NAS shares in the fits, quoted in order of the share
        text = " ".join(_section("**Latency predictor**", "**ONNX Runtime repeatability**").split())
        default = next(r for r in sens if r["nas_fit"] == NAS_FIT)
        expected = [
            " / ".join(str(r["nas_fit"]) for r in sens),
            " / ".join(f"{100 * r['tensorrt_within_35']:.0f}%" for r in sens) + " within 35%",
            "median error " + " / ".join(f"{100 * r['tensorrt_median_ape']:.1f}%" for r in sens),
            "eager batch-32 Spearman min " + " / ".join(f"{r['eager_b32_spearman_min']:.3f}" for r in sens),
            "batch 64 " + " / ".join(f"{r['eager_b64_spearman_min']:.3f}" for r in sens),
            "(bar 80%: " + ", ".join(f"{name} {100 * default['tensorrt_within_35_by_device'][d]:.0f}%"
                                     for d, name in _DEVICE_NAMES.items()),
        ]
        _assert_quoted(expected, text, "latency sensitivity", "latency_accuracy.json (sensitivity_nas_fit)")


def _ratios(misses: list[dict[str, Any]], device: str, prefix: str) -> str:
    """``x1.59-1.70`` (or ``x1.36`` when they agree): the range of one group of a device's misses."""
    r = sorted(f"{m['ratio']:.2f}" for m in misses if m["device"] == device and m["spec"].startswith(prefix))
    assert r, f"no {device} miss starting {prefix}"
    return f"x{r[0]}" if r[0] == r[-1] else f"x{r[0]}-{r[-1]}"


def _check_misses(doc: dict[str, Any]) -> None:
    """The TensorRT batch-1 models the README names as misses, family left out (AGX Xavier, Nano) and
    device left out (Nano), are those ``latency_accuracy.py`` lists, at their ratios."""
    text = " ".join(_section("**Latency predictor**", "**ONNX Runtime repeatability**").split())
    fam, dev = doc["lofo_tensorrt_b1_misses"], doc["lodo_tensorrt_b1_misses"]
    agx, nano = "jetson-agx-xavier", "jetson-nano"
    assert {m["device"] for m in fam} == {agx, nano} and {m["device"] for m in dev} >= {nano}
    tv = "torchvision:"
    n_dense = sum(m["device"] == agx and m["spec"].startswith(tv + "densenet") for m in fam)
    expected = [
        f"the {['no', 'one', 'two', 'three', 'four'][n_dense]} DenseNets {_ratios(fam, agx, tv + 'densenet')}, "
        f"VGG-19 (with and without BN) {_ratios(fam, agx, tv + 'vgg19')} and the ShuffleNetV2s "
        f"{_ratios(fam, agx, tv + 'shufflenet_v2')}, on the Jetson Nano the DenseNets "
        f"{_ratios(fam, nano, tv + 'densenet')} and SqueezeNet 1.1 {_ratios(fam, nano, tv + 'squeezenet1_1')}",
        f"the misses: SqueezeNet 1.1 {_ratios(dev, nano, tv + 'squeezenet1_1')}, three DenseNets "
        f"{_ratios(dev, nano, tv + 'densenet')})",
    ]
    # nothing else misses: the README names every model that does
    named = ("densenet", "vgg19", "shufflenet_v2", "squeezenet1_1")
    assert all(m["spec"].startswith(tuple(tv + n for n in named)) for m in fam + dev), fam + dev
    assert sum(m["device"] == nano and "densenet" in m["spec"] for m in dev) == 3
    _assert_quoted(expected, text, "TensorRT misses", "latency_accuracy.json (l*o_tensorrt_b1_misses)")


def _check_bands(targets: dict[str, Any]) -> None:
    """The error bands the README quotes (the paragraph after the structure choice) are the
    shipped calibration's, as ``latency_accuracy.py --write-calibration`` wrote them."""
    text = " ".join(_section("A discrete target without a TensorRT table", "**Out-of-sample check**").split())

    def band(target: str, regime: str, left_out: bool = False) -> float:
        b = targets[target]["error_bands"][regime]
        return 100 * (b["family_left_out"]["median_ape"] if left_out else b["median_ape"])

    def pct(x: float) -> str:
        return f"±{x:.0f}%"

    def span(values: list[float]) -> str:
        return f"±{min(values):.0f}-{max(values):.0f}%"

    help_gpus = ("1080ti", "2080ti", "titan-rtx", "titan-x", "titan-xp")
    help_regimes = ("torch/fp32/batch1", "torch/fp32/large")
    trt = targets["2080ti"]["error_bands"]["tensorrt/fp16/batch1"]
    expected = [f"**±{100 * trt['median_ape']:.0f}% median ({100 * trt['p80_ape']:.0f}% p80) error band**"]
    for left_out in (False, True):
        expected.append(
            f"T4 TensorRT {pct(band('t4', 'tensorrt/fp16/batch1', left_out))}, "
            f"Xavier NX {pct(band('jetson-xavier-nx', 'tensorrt/fp16/batch1', left_out))}, "
            f"AGX Xavier {pct(band('jetson-agx-xavier', 'tensorrt/fp16/batch1', left_out))} "
            f"(eager {pct(band('jetson-agx-xavier', 'torch/fp16/batch1', left_out))}), "
            f"Jetson Nano {pct(band('jetson-nano', 'tensorrt/fp16/batch1', left_out))} "
            f"(eager {pct(band('jetson-nano', 'torch/fp16/batch1', left_out))}), "
            f"HELP GPUs eager {span([band(t, r, left_out) for t in help_gpus for r in help_regimes])}")
    expected.append(f"the TX2 or an Orin, {pct(band('jetson-tx2', 'tensorrt/fp16/batch1'))} (the held-out Jetsons)")
    _assert_quoted(expected, text, "error band", "latency_accuracy.json (calibration)")


# -- strategy benchmark ----------------------------------------------------------------------------
def _r3(x: float) -> str:
    """``.077``: a regret as the README's table quotes it."""
    return f"{x:.3f}".replace("0.", ".", 1) if x < 1 else f"{x:.3f}"


def strategy_row(res: dict[str, Any], checkpoints: list[int], budget: int) -> list[str]:
    """One row of the README's strategy tables (after the strategy's name), from its results row:
    mf, median regret at each checkpoint but the last, the last with its quartiles, the 95% CI
    of that median over seeds, the mean, the share of seeds that found the table's best, the
    cost to match random, the seeds."""
    reg = res["regret"]
    q = reg[str(budget)]
    lo, hi = res["ci95_median"]
    return [
        "y" if res["mf"] else "n",
        *(_r3(reg[str(c)]["median"]) for c in checkpoints[:-1]),
        f"{_r3(q['median'])} [{_r3(q['q1'])}, {_r3(q['q3'])}]",
        f"[{_r3(lo)}, {_r3(hi)}]",
        f"{res['mean']:.4f}".replace("0.", ".", 1),
        f"{res['best']:.0%}",
        res["match"],
        str(res["seeds"]),
    ]


def _check_strategy_table(name: str, start: str, end: str) -> None:
    doc = _load(name)
    sec = _section(start, end)
    settings = doc["settings"]
    rows = [r for r in _table_rows(sec) if r[0] in doc["strategies"]]
    listed = {r[0] for r in rows}
    assert listed == set(doc["strategies"]), f"README's table and {name}.json list other strategies"
    wrong = []
    for row in rows:
        expected = strategy_row(doc["strategies"][row[0]], settings["checkpoints"], settings["budget"])
        got = [c.rstrip("*") for c in row[1:]]
        if got != expected:
            wrong.append(f"{row[0]}: README {got} != results {expected}")
    assert not wrong, f"README's strategy table differs from benchmarks/results/{name}.json: " + "; ".join(wrong)


def check_strategies() -> None:
    _check_strategy_table("strategies", "## Which search strategy to choose", "**Confirmation table**")


def check_strategies_glyphs10() -> None:
    """The second table (10 digit glyphs), built only to confirm the first one's rankings."""
    _check_strategy_table("strategies_glyphs10", "**Confirmation table**", "Where the multi-fidelity")


# -- glyphs difficulty -----------------------------------------------------------------------------
def check_glyphs_difficulty() -> None:
    doc = _load("glyphs_difficulty")
    sec = _section("**Glyphs difficulty**", "**Latency predictor**")
    expected = [f"{m['params'] / 1000:.1f}K params {m['val_acc']:.1%}" for m in doc["models"]]
    gap = max(abs(m["test_acc"] - m["val_acc"]) for m in doc["models"])  # quoted as "within N points", N rounded up
    expected.append(f"within {math.ceil(1000 * gap) / 10:.1f} points of each")
    _assert_quoted(expected, " ".join(sec.split()), "glyphs-difficulty", "glyphs_difficulty.json")


# -- fidelity --------------------------------------------------------------------------------------
def check_fidelity() -> None:
    doc = _load("fidelity")
    sec = _section("`python benchmarks/fidelity.py`", "KD proxies rank")
    taus = {(r["loss"], round(r["fraction"], 4), r["epoch"]): r["tau"] for r in doc["rows"]}
    frac = {"1/9": round(1 / 9, 4), "1/3": round(1 / 3, 4), "all": 1.0}
    wrong = []
    for row in _table_rows(sec):
        m = re.match(r"(1/9|1/3|all) data, ([\d /]+) epochs?", row[0])
        if not m:
            continue
        epochs = [int(e) for e in m.group(2).split("/")]
        for loss, cell in (("ce", row[1]), ("kd", row[2])):
            quoted = [q.strip() for q in cell.split(" / ")]
            if quoted in (["–"], ["-"]):  # not measured at this level
                continue
            assert len(quoted) == len(epochs), f"cannot read the fidelity row {row}"
            for ep, q in zip(epochs, quoted):
                tau = taus.get((loss, frac[m.group(1)], ep))
                if tau is None or q != f"{tau:.3f}":
                    wrong.append(f"{row[0]} {loss} epoch {ep}: README {q.strip()} != {tau}")
    assert not wrong, "README's fidelity table differs from benchmarks/results/fidelity.json: " + "; ".join(wrong)


# -- distillation engine --------------------------------------------------------------------------
def check_distill() -> None:
    doc = _load("distill")
    sec = _section("**Distillation engine**", "One seed per row")
    flat = sec.replace("**", "")
    wrong = [
        f"timing {t['distiller']}"
        for t in doc["timing"]
        if f"{t['online_s']:.3f} s / {t['offline_s']:.3f} s = {t['online_s'] / t['offline_s']:.2f}x" not in flat
    ]
    rows = _table_rows(sec)
    head = next(i for i, r in enumerate(rows) if len(r) > 1 and r[1] == "val acc")
    body = [r for r in rows[head + 2 :] if len(r) == 3]
    variants = doc["variants"]
    assert len(body) == len(variants) + 1, "README's distiller table and distill.json have other rows"
    for row, v in zip(body, variants):
        if row[1] != f"{v['val_acc']:.2%}" or not row[2].startswith(f"{v['s_per_epoch']:.2f}"):
            wrong.append(f"{row[0]}: README {row[1:]} != {v['val_acc']:.2%}, {v['s_per_epoch']:.2f}")
    free = doc["data_free"]
    if body[-1][1] != f"{free['val_acc']:.2%}" or f"{free['images']:,} images" not in body[-1][0]:
        wrong.append(f"data-free: README {body[-1]} != {free}")
    assert not wrong, "README's distillation figures differ from benchmarks/results/distill.json: " + "; ".join(wrong)


# -- streaming data --------------------------------------------------------------------------------
def check_data_stream() -> None:
    doc = _load("data_stream")
    sec = _section("**Streaming data**", "**Distillation engine**")
    flat = " ".join(sec.split())
    rows = {(r["kind"], r["size"]): r for r in doc["rows"]}
    summ = doc["summary"]
    expected = [
        f"{doc['n']:,} and {10 * doc['n']:,}",
        f"{rows['stream', '1N']['images_per_s']:,.0f} and {rows['stream', '10N']['images_per_s']:,.0f} images/s",
        f"{summ['stream_vs_torchvision_speed']['1N']:.2f}x / {summ['stream_vs_torchvision_speed']['10N']:.2f}x",
        f"({rows['torchvision', '1N']['images_per_s']:,.0f} and {rows['torchvision', '10N']['images_per_s']:,.0f}",
        f"streamed {rows['stream', '1N']['peak_rss_mb']:,.0f} MB",
        f"{rows['stream', '10N']['peak_rss_mb']:,.0f} MB at",
        f"x{summ['stream_peak_rss_growth_10x']:.2f} for ten times",
        f"in memory {rows['memory', '1N']['peak_rss_mb']:,.0f} MB and",
        f"{rows['memory', '10N']['peak_rss_mb']:,.0f} MB (x{summ['memory_peak_rss_growth_10x']:.2f})",
    ]
    _assert_quoted(expected, flat, "streaming", "data_stream.json")


# -- what HELP's columns allow (oracle ceiling) ----------------------------------------------------
def check_help_ceiling() -> None:
    doc = _load("help_ceiling")
    sec = " ".join(_section("How much ranking HELP's columns allow", "The same benchmark re-runs").split())
    ceil = {(r["table"].split("-")[1], r["device"], r["batch"]): r for r in doc["ceiling"]}
    quoted = {("fbnet", "1080ti", 32), ("fbnet", "1080ti", 1)}
    others = [r["rho_mean"] for k, r in ceil.items() if k not in quoted]
    blocks = {(r["device"], r["batch"]): r for r in doc["fbnet_blocks"]}
    shuffle = [r["shuffle_over_block"] for r in doc["fbnet_blocks"]]
    predicted = [r["predicted_shuffle_over_block"] for r in doc["fbnet_blocks"]]
    expected = [
        *(_pm(ceil[k]["rho_mean"], ceil[k]["rho_sd"], "{:.3f}") for k in sorted(quoted, key=lambda k: -k[2])),
        f"{min(others):.3f}-{max(others):.3f}",
        f"within {ceil[('fbnet', '1080ti', 32)]['rho_mean'] - 0.95:.3f}",
        *(f"{blocks[('1080ti', b)]['block_us']:.0f} us" for b in (32, 1, 64)),
        f"adds {min(shuffle):.2f}-{max(shuffle):.2f} of a plain block's cost, the predictor "
        f"{min(predicted):.2f}-{max(predicted):.2f}",
        f"{doc['settings']['splits']} random splits",
    ]
    agree = [r["agreement"] for r in doc["ceiling"]]
    expected.append(f"agrees with another GPU's at {min(agree):.3f}-{max(agree):.3f}")
    assert doc["ceiling"] and len(doc["fbnet_blocks"]) == 15
    _assert_quoted(expected, sec, "oracle ceiling", "help_ceiling.json")
    # HELP's OFA table: the figures quoted with the eager batch-32 bar
    ofa = {(r["device"], r["batch"]): r for r in doc["ofa_ceiling"]}
    bars = " ".join(_section("Where that leaves the issue's bars", "The same benchmark re-runs").split())
    worst = ofa[("2080ti", 32)]
    expected = [
        f"an oracle fitted on {worst['n'] - doc['settings']['held_out_ofa']} of its own subnets ranks the other "
        f"{doc['settings']['held_out_ofa']} at {_pm(worst['rho_mean'], worst['rho_sd'], '{:.3f}')}",
        f"(the Titan RTX's and Titan Xp's batch-32 columns: {ofa[('titan-rtx', 32)]['rho_mean']:.3f} and "
        f"{ofa[('titan-xp', 32)]['rho_mean']:.3f})",
        f"at best at {worst['agreement']:.3f} (the {_GPU_NAMES[worst['agrees_most_with']]}'s)",
        f"where the Titan RTX's and Titan Xp's agree at {ofa[('titan-rtx', 32)]['agreement']:.3f}",
    ]
    assert ofa[("titan-rtx", 32)]["agreement"] == ofa[("titan-xp", 32)]["agreement"]  # with each other
    _assert_quoted(expected, bars, "OFA oracle ceiling", "help_ceiling.json (ofa_ceiling)")


# -- ONNX Runtime repeatability -------------------------------------------------------------------
def check_ort_stability() -> None:
    doc = _load("ort_stability")
    sec = " ".join(_section("**ONNX Runtime repeatability**", "**Streaming data**").split())
    m = {r["model"]: r for r in doc["models"]}
    r18 = [r["median_ms"] for r in m["resnet18"]["runs"]]
    expected = [
        f"small CNN varies {100 * m['small_cnn']['variation']:.2f}% median-to-median over "
        f"{doc['settings']['repeats']} repeats",
        f"resnet18 at 224 px varied {100 * m['resnet18']['variation']:.2f}%",
        f"load average {doc['machine']['load_start'].split()[0]} at the start",
        f"medians up to {max(r18):.2f} ms against {min(r18):.2f} ms",
        f"`python benchmarks/ort_stability.py` ({doc['seconds']:.0f} s;",
    ]
    # the small CNN's repeats: the steady ones' range, the stalled one, and how long each was timed
    runs = m["small_cnn"]["runs"]
    stalled = max(runs, key=lambda r: r["median_ms"])
    steady = sorted(1000 * r["median_ms"] for r in runs if r is not stalled)
    expected.append(f"repeats at {steady[0]:.1f}-{steady[-1]:.1f} µs and one stalled at "
                    f"{1000 * stalled['median_ms']:.1f} µs")
    iters = {r["iterations"] for r in runs}
    assert len(iters) == 1, iters
    (n,) = iters
    expected.append(f"timed for {n:,} iterations ({n * float(np.median(steady)) / 1e6:.2f} s)")
    _assert_quoted(expected, sec, "ONNX Runtime", "ort_stability.json")


# -- killed at random moments, resumed ---------------------------------------------------------------
def check_kill_campaign() -> None:
    doc = _load("kill_campaign")
    sec = " ".join(_section("**Killed at any moment**", "### Bring your own teacher").split())
    s = doc["summary"]
    expected = [
        f"--kills {s['runs']} --seed {doc['seed']}",
        f"({doc['uninterrupted_s']:.1f} s uninterrupted",
        f"at {s['kills']} random moments",
        f"{s['identical_students']} of {s['runs']} shipped the uninterrupted run's student",
        f"({s['went_on_from_a_candidate_checkpoint']} went on from a candidate's epoch checkpoint",
        f"{s['went_on_from_an_epoch_checkpoint']} from a final training's",
        f"{s['restored_kept_final_students']} restored the kept final students",
        f"and {s['left_behind']} left a file behind",
    ]
    _assert_quoted(expected, sec, "kill campaign", "kill_campaign.json")


def check_kill_campaign_imagefolder() -> None:
    doc = _load("kill_campaign_imagefolder")
    sec = " ".join(_section("**Killed at any moment**", "### Bring your own teacher").split())
    s = doc["summary"]
    expected = [
        f"--example imagefolder --kills {s['runs']} --seed {doc['seed']}",
        f"; {doc['uninterrupted_s']:.1f} s uninterrupted, each run with an empty cache folder,",
        f"{s['identical_students']} of {s['runs']} resumed runs shipped its student",
        f"({s['went_on_from_a_candidate_checkpoint']} from a candidate's epoch checkpoint",
        f"{s['went_on_from_an_epoch_checkpoint']} from a final training's",
        f"{s['restored_kept_final_students']} from the kept students",
        f"{s['resumed_a_cache_build']} went on with a half-built teacher cache",
        f"{s['left_behind']} left a file behind",
    ]
    _assert_quoted(expected, sec, "kill campaign (imagefolder)", "kill_campaign_imagefolder.json")


# -- learned constraints (SCBO) on the toy problem ------------------------------------------------
def check_scbo_toy() -> None:
    doc = _load("scbo_toy")
    sec = _section("A latency that is *measured*", "**Glyphs difficulty**")
    mode_name = {"penalty": "penalty only", "learned": "learned (SCBO)"}
    expected = []
    for key, r in doc["rows"].items():
        name, mode = key.split("/")
        expected.append(
            [
                name,
                mode_name[mode],
                f"{r['infeasible_after_design']['mean']:.1f} ± {r['infeasible_after_design']['sd']:.1f}",
                f"{r['feasible_share']['mean']:.2f} ± {r['feasible_share']['sd']:.2f}",
                f"{r['best_score']['mean']:.3f} ± {r['best_score']['sd']:.3f}",
            ]
        )
    rows = _table_rows(sec)
    missing = [e for e in expected if e not in rows]
    assert not missing, f"README's learned-constraint table differs from scbo_toy.json: {missing}"
    assert f"{doc['settings']['seeds']} seeds" in sec and f"budget {doc['settings']['budget']}" in sec


# -- learned constraints on real measured latency (the cpu target) ---------------------------------
def check_scbo_cpu() -> None:
    """``e2e_glyphs.py --target cpu --max-latency 0.5x --strategy turbo-m --budget 20`` with the
    constraint learned and with the penalty only (``--strategy-options learn_constraints=false``)."""
    sec = _section("A latency that is *measured*", "**Glyphs difficulty**")
    rows = _table_rows(sec)
    docs = {m: _load(f"scbo_cpu_{m}") for m in ("learned", "penalty")}
    slow = {m: [r["statuses"].get("infeasible", 0) for r in d["seeds"]] for m, d in docs.items()}
    expected = []
    for mode, name in (("learned", "learned (SCBO)"), ("penalty", "penalty only")):
        s, seeds = docs[mode]["summary"], docs[mode]["seeds"]
        expected.append(
            [
                name,
                " / ".join(str(v) for v in slow[mode]),
                " / ".join(f"{r['student_acc']:.2%}" for r in seeds),
                f"{s['speedup_target']['mean']:.2f}x ± {s['speedup_target']['std']:.2f}",
                f"{s['wall_s']['mean']:.0f} ± {s['wall_s']['std']:.0f} s",
            ]
        )
        assert f"--seeds {len(seeds)}" in sec
    missing = [e for e in expected if e not in rows]
    assert not missing, f"README's measured-latency SCBO table differs from scbo_cpu_*.json: {missing}"
    share = {m: d["summary"]["share_outside_training"]["mean"] for m, d in docs.items()}
    mean_slow = {m: sum(v) / len(v) for m, v in slow.items()}
    quoted = [f"from {share['penalty']:.1%} to {share['learned']:.1%}",
              f"({mean_slow['learned']:.1f} against {mean_slow['penalty']:.1f})"]  # fmt: skip
    _assert_quoted(quoted, " ".join(sec.split()), "measured-latency SCBO", "scbo_cpu_*.json")


_NODE_NAMES = {"a100": "A100", "jetson-agx-xavier": "AGX Xavier", "jetson-xavier-nx": "Xavier NX",
               "rtx3090": "RTX 3090", "rtx4090": "RTX 4090", "t4": "T4"}


def _node_term_figures(node: dict) -> list[str]:
    """The power-cap bullet: which structure each test device chose, and held at 1 against no node term."""
    held, none = "shipped (node_beta held at 1)", "no node term"
    chosen = {d: min(by, key=by.get) for d, by in node["selection"].items()}
    held_by = [_NODE_NAMES[d] for d in _NODE_NAMES if chosen[d] == held]
    listed = ", ".join(held_by[:-1]) + " and " + held_by[-1] if len(held_by) > 1 else held_by[0]
    out = [f"held at 1 is chosen with the {listed} as the test"]
    for d in (d for d in _NODE_NAMES if chosen[d] == none):
        out.append(f"none with the {_NODE_NAMES[d]} ({node['selection'][d][none]:.1%} against "
                   f"{node['selection'][d][held]:.1%}")
    lodo = node["lodo"]
    for d in ("rtx4090", "t4", "jetson-xavier-nx", "jetson-agx-xavier"):
        out.append(f"{_NODE_NAMES[d]} {lodo[held][d]['median_ape']:.1%} against {lodo[none][d]['median_ape']:.1%}")
    return out


def check_latency_choices() -> None:
    """How the predictor's structure was chosen (``benchmarks/latency_choices.py``)."""
    doc = _load("latency_choices")
    text = " ".join(_section("**Latency predictor**", "**ONNX Runtime repeatability**").split())
    k = {name: r["mean"] for name, r in doc["kfold"].items()}
    own = doc["kfold"]["shipped"]["per_device"]
    other = next(n for n in ("a memory scale of its own", "one scale for compute and memory") if n in doc["kfold"])
    one = doc["kfold"][other]["per_device"]
    sel = doc["selection"]
    pen = doc["channel_penalty_all_devices"]
    names = ("shipped", "own c_half_graph, fitted", "one c_half, fitted")
    outer, lodo = doc["outer"], doc["lodo_trt"]
    shipped_within = sum(r["within_35"] for r in lodo["shipped"].values()) / len(lodo["shipped"])
    n_inner = len(doc["nested_lodo"]["shipped"])
    chosen = {dev: min(by, key=by.get) for dev, by in sel.items()}
    expected = [
        f"the mean of the per-device medians is {k['shipped']:.2%} against {k[other]:.2%} with {other}",
        f"lower on {sum(own[d] < one[d] for d in own)} of {len(own)} devices",
        f"(fitted: {pen[names[1]]['c_half_graph']:.0f})",
        f"one `c_half` fitted (it runs to {pen[names[2]]['c_half']:.1f})",
        f"shipped {k['shipped']:.2%}, own `c_half_graph` {k[names[1]]:.2%}, one `c_half` fitted {k[names[2]]:.2%}",
        f"is {doc['outer_within_35']:.0%} within 35% ("
        + ", ".join(f"{_DEVICE_NAMES[d]} {outer[d]['within_35']:.0%}" for d in _DEVICE_NAMES) + ")",
        f"against the shipped structure's {shipped_within:.0%}",
        f"mean of all {n_inner} inner errors: " + ", ".join(f"{doc['overall_mean_inner'][n]:.1%}" for n in names),
    ]
    weakest = next(n for n in doc["kfold"] if n.startswith("weakest pull"))
    expected.append(f"and {k[weakest]:.2%} with the weakest pull")
    for d in _DEVICE_NAMES:
        by = sel[d]
        expected.append(f"{_DEVICE_NAMES[d]} as the test: " + ", ".join(f"{by[n]:.1%}" for n in names))
    expected += _node_term_figures(doc["node"])
    for n in names:
        who = [_DEVICE_NAMES[d] for d in _DEVICE_NAMES if chosen[d] == n]
        if who:  # "T4, Jetson Xavier NX and AGX Xavier: shipped"
            expected.append(", ".join(who[:-1]) + (" and " if len(who) > 1 else "") + f"{who[-1]}: {n}")
    assert all(outer[d]["selected"] == c for d, c in chosen.items()), "the outer estimate uses another structure"
    _assert_quoted(expected, text, "structure choice", "benchmarks/results/latency_choices.json")


# -- out-of-sample check --------------------------------------------------------------------------
def check_external() -> None:
    doc = _load("external_check")
    sec = " ".join(_section("**Out-of-sample check**", "**ONNX Runtime repeatability**").split())
    rows = {(r["device"], r["model"], r["precision"]): r for r in doc["rows"]}
    fp16 = [("v100", "resnet50v1.5"), ("v100", "se-resnext101-32x4d"), ("v100", "efficientnet-b0"),
            ("t4", "resnet50v1.5"), ("t4", "se-resnext101-32x4d"), ("a100", "efficientnet-b0")]
    fp32 = [("v100", "resnet50v1.5"), ("v100", "se-resnext101-32x4d"), ("v100", "efficientnet-b0"),
            ("t4", "resnet50v1.5"), ("t4", "se-resnext101-32x4d")]
    quoted = [(d, m, "fp16") for d, m in fp16] + [(d, m, "fp32") for d, m in fp32]
    names = {"resnet50v1.5": "ResNet-50", "se-resnext101-32x4d": "SE-ResNeXt101", "efficientnet-b0": "EfficientNet-B0"}
    assert sorted(quoted) == sorted(rows), "README quotes every row of the external check"
    s = doc["summary"]
    expected = [
        *(f"{names[k[1]]} x{rows[k]['ratio']:.2f}" for k in quoted),
        f"over the {s['n']} rows: median error {100 * s['median_ape']:.1f}%, {100 * s['within_35']:.0f}% within 35%, "
        f"{100 * s['inside_p80_band']:.0f}% inside the printed p80 band",
    ]
    # the README says how many mixed-precision rows are inside their p80 band, and every fp32 row outside
    n_in = sum(bool(rows[k]["inside_p80"]) for k in quoted[:len(fp16)])
    expected.append(f"{n_in} of the {len(fp16)} mixed-precision rows inside their printed")
    assert not any(rows[k]["inside_p80"] for k in quoted[len(fp16):])
    fp32_bands = {f"±{100 * rows[k]['band_median']:.0f}% band printed for it" for k in quoted[len(fp16):]}
    assert len(fp32_bands) == 1, f"the fp32 rows no longer share one band: {fp32_bands}"
    expected += sorted(fp32_bands)
    # where the T4's ResNet-50 mixed-precision prediction goes
    t4 = next(r for r in doc["split_by_op"] if r["device"] == "t4")
    assert abs(t4["predicted_ms"] - rows[("t4", "resnet50v1.5", "fp16")]["predicted_ms"]) < 1e-6
    expected.append(f"Of the T4's predicted {t4['predicted_ms']:.1f} ms for it, {t4['by_op_ms']['elementwise']:.1f} ms "
                    "are eager BatchNorm, ReLU and adds")
    # the docs' account of the same split, T4 and V100
    v100 = next(r for r in doc["split_by_op"] if r["device"] == "v100")
    t4_ms = rows[("t4", "resnet50v1.5", "fp16")]["measured_ms"]
    docs = " ".join((ROOT / "docs" / "latency-predictor.md").read_text(encoding="utf-8").split())
    want = [
        f"the T4's {t4['predicted_ms']:.1f} ms are {t4['by_op_ms']['conv']:.1f} ms of convolutions",
        f"and {t4['by_op_ms']['elementwise']:.1f} ms of eager BatchNorm",
        f"the V100's {v100['predicted_ms']:.1f} ms are {v100['by_op_ms']['conv']:.1f} + "
        f"{v100['by_op_ms']['elementwise']:.1f} ms",
        f"The T4 measures {t4_ms:.1f} ms",
        f"would have to take {t4_ms - t4['by_op_ms']['conv']:.0f} ms rather than {t4['by_op_ms']['elementwise']:.0f}",
    ]
    missing = [w for w in want if w not in docs]
    assert not missing, f"docs/latency-predictor.md's split-by-op figures differ from external_check.json: {missing}"
    # the second table (batch 12): every device and precision, and the whole
    b12 = doc["batch12"]
    gpu = {"1080ti": "GTX 1080 Ti", "titan-xp": "Titan Xp", "2080ti": "RTX 2080 Ti", "titan-rtx": "Titan RTX",
           "a100": "A100"}
    assert {k.split("/")[0] for k in b12["by_group"]} == set(gpu)
    for key, g in b12["by_group"].items():
        dev, prec = key.split("/")
        if key == "a100/fp32":
            expected.append(f"x{g['median_ratio']:.2f} ({100 * g['within_35']:.0f}% within 35%)")
        else:
            expected.append(f"{gpu[dev]} x{g['median_ratio']:.2f} ({100 * g['within_35']:.0f}%)")
    ns = [g["n"] for g in b12["by_group"].values()]
    t = b12["summary"]
    expected += [f"latencies of {min(ns)}-{max(ns)} torchvision models",
                 f"Over all {t['n']} rows: median error {100 * t['median_ape']:.1f}%, "
                 f"{100 * t['within_35']:.0f}% within 35%, "
                 f"{100 * t['inside_p80_band']:.0f}% inside the printed p80 band"]
    # what an ImageNet-size prediction quotes from these tables (the package's summary of them)
    from kd_compile.profilers.error_bands import OUT_OF_SAMPLE
    from kd_compile.report.render import out_of_sample_phrase

    oos = json.loads(OUT_OF_SAMPLE.read_text(encoding="utf-8"))
    phrase = out_of_sample_phrase(oos["entries"]["2080ti/torch/fp32/large"])
    expected.append(f'eager fp32 at batch 32 and above "{phrase}"')
    from kd_compile.profilers.error_bands import ratio_span

    pooled = [f"{q['models']} {ratio_span(q['median_ratio_by_device'].values())} ("
              + ", ".join(_GPU_NAMES.get(d, d) for d in sorted(q['median_ratio_by_device'])) + ")"
              for q in oos["small_input_bands"]["torch/fp32/large"]]
    expected.append("in eager fp32 at batch 32 and above " + ", ".join(pooled) + ".")
    # the fourth table (HELP's OFA subnets): every GPU at every batch
    ofa = doc["help_ofa"]["by_group"]
    names = {"2080ti": "RTX 2080 Ti", "titan-rtx": "Titan RTX", "titan-xp": "Titan Xp", "v100": "V100"}
    assert {k.split("/")[0] for k in ofa} == set(names) and {k.split("/")[1] for k in ofa} == {"1", "32", "64"}
    for b in ("64", "32", "1"):
        expected.append(f"at batch {b}: " + ", ".join(
            f"{names[d]} x{ofa[f'{d}/{b}']['median_ratio']:.2f} ({100 * ofa[f'{d}/{b}']['median_ape']:.1f}%, "
            f"{ofa[f'{d}/{b}']['spearman']:.3f})" for d in names))
    lo = min(g["median_ratio"] for g in ofa.values())
    hi = max(g["median_ratio"] for g in ofa.values())
    expected.append(f"come out within x{lo:.2f}-{hi:.2f} with")
    expected.append(f"the {len(doc['help_ofa']['models'])} subnets of its sample that no fit reads")
    # the fifth table (OpenPPL's T4 TensorRT rows): both precisions, their families, the band they carry
    ppl = doc["openppl_t4"]
    g16, g8 = ppl["by_group"]["t4/tensorrt/fp16"], ppl["by_group"]["t4/tensorrt/int8"]
    expected += [f"fp16: x{g16['median_ratio']:.2f}, median error {100 * g16['median_ape']:.1f}%, "
                 f"{100 * g16['within_35']:.0f}% within 35%, {100 * g16['inside_p80_band']:.0f}% inside the "
                 f"printed p80 band, Spearman's rho {g16['spearman']:.3f}",
                 f"x{g8['median_ratio']:.2f}, median error {100 * g8['median_ape']:.1f}%, "
                 f"{100 * g8['within_35']:.0f}% within 35%, rho {g8['spearman']:.3f}"]
    fam = ppl["by_family"]
    expected.append(", ".join(f"{f} x{fam[f'fp16/{f}']['median_ratio']:.2f} ({fam[f'fp16/{f}']['n']})"
                              for f in ("resnet", "mobilenet", "vgg", "densenet")))
    expected.append(", ".join(f"{f} x{fam[f'int8/{f}']['median_ratio']:.2f}"
                              for f in ("resnet", "vgg", "mobilenet", "densenet")))
    assert len(ppl["rows"]) == 70 and {r["n"] for r in ppl["by_group"].values()} == {35}
    bands: dict[str, set[tuple[float, float]]] = {}
    for r in ppl["rows"]:
        bands.setdefault(r["precision"], set()).add((r["band_median"], r["band_p80"]))
    (med, p80), = bands["fp16"]  # the T4's fitted band, which int8 carried as a proxy before this table
    expected.append(f"(on the T4 ±{100 * med:.0f}% median, {100 * p80:.0f}% p80)")
    from kd_compile.profilers.error_bands import OUT_OF_SAMPLE as _OOS

    (int8,) = json.loads(_OOS.read_text(encoding="utf-8"))["entries"]["t4/tensorrt/int8/batch1"]
    assert bands["int8"] == {(int8["median_ape"], int8["p80_ape"])}, "int8's band is the table's own error"
    expected.append(f"table's error, ±{100 * int8['median_ape']:.0f}% median, {100 * int8['p80_ape']:.0f}% p80")
    # the third table (timm's unfitted tables): every role, device and runtime, and the models set apart
    tm = doc["timm_unfitted"]
    labels = {"validation/rtx4090/inductor": "RTX 4090 (PyTorch 2.4.0, the validation table)",
              "test/rtx5090/torch": "RTX 5090 eager", "test/rtx4090/torch": "RTX 4090 eager",
              "test/rtx5090/inductor": "RTX 5090 `torch.compile`", "test/rtx4090/inductor": "RTX 4090 `torch.compile`",
              "test/rtx-pro-6000-maxq/torch": "RTX PRO 6000 Max-Q eager",
              "test/rtx-pro-6000-maxq/inductor": "RTX PRO 6000 Max-Q `torch.compile`"}
    assert set(tm["by_group"]) == set(labels)
    for key, g in tm["by_group"].items():
        expected.append(f"{labels[key]} x{g['median_ratio']:.2f}, median error {100 * g['median_ape']:.1f}%, "
                        f"{100 * g['within_35']:.0f}% within 35%")
    expected += [f"{min(g['n'] for g in tm['by_group'].values())} models"]
    expected += [f"{labels[k]}: {', '.join(models)}" for k, models in tm["not_same_model"].items()]
    # torch.compile's constant and bands (from the one table s_compile is fitted on) and the test rows inside
    from kd_compile.profilers.roofline import error_band, read_calibration
    from kd_compile.targets import get_target

    expected.append(f"`s_compile` = {read_calibration('_all_devices')['constants']['s_compile']}")
    band, own = (error_band(get_target(t), "inductor", "fp16", 256) for t in ("rtx5090", "rtx4090"))
    expected += [f"band of ±{100 * own['median_ape']:.0f}% median ({100 * own['p80_ape']:.0f}% p80)",
                 f"band of ±{100 * band['median_ape']:.0f}% median ({100 * band['p80_ape']:.0f}% p80) at batch 32 "
                 "and above", f"({band['n']} models)"]
    for key in ("test/rtx5090/inductor", "test/rtx4090/inductor", "test/rtx-pro-6000-maxq/torch",
                "test/rtx-pro-6000-maxq/inductor"):
        g = tm["by_group"][key]
        expected.append(f"{labels[key]} rows: {100 * g['inside_p80_band']:.0f}%")
    fam = tm["by_family"]
    expected += [f"{f} x{fam[f'rtx-pro-6000-maxq/torch/{f}']['median_ratio']:.2f}"
                 for f in ("vgg", "resnet", "vit", "mobilenet", "regnet")]
    # VGG-16 on that board against the power cap: its measured ms and the sustained rate they give
    from kd_compile.targets import get_target as _target

    consts = read_calibration("_all_devices")["constants"]
    k_tc, node = consts["tc_gflop_per_j"], (12.0 / _target("rtx-pro-6000-maxq").process_nm) ** consts["node_beta"]
    vgg = {r["runtime"]: r for r in tm["rows"] if r["device"] == "rtx-pro-6000-maxq" and r["model"] == "vgg16"}
    gflop = 30.94  # timm's infer_gmacs for vgg16 at 224 px (15.47) x 2
    rates = {rt: vgg[rt]["batch"] * gflop / vgg[rt]["measured_ms"] for rt in ("torch", "inductor")}
    expected += [f"{k_tc:.0f} GFLOP/J x {node:g} = {k_tc * node:.0f} GFLOP/J",
                 f"{k_tc * node * _target('rtx-pro-6000-maxq').tdp_w / 1000:.1f} TFLOP/s at its 300 W",
                 f"about {rates['torch']:.0f} TFLOP/s eager and {rates['inductor']:.0f} TFLOP/s compiled",
                 f"in {vgg['torch']['measured_ms']:.0f} ms and {vgg['inductor']['measured_ms']:.0f} ms"]
    _assert_quoted(expected, sec, "out-of-sample", "external_check.json")


def check_fp32_leads() -> None:
    doc = _load("fp32_leads")
    sec = " ".join(_section("Two fixes for eager fp32 were tried", "A third: timm's").split())
    v = doc["variants"]
    ship, b12, both = v["shipped"], v["+b12, c_half fitted"], v["pseudo-half, +b12, c_half fitted"]

    def ratio(var: dict[str, Any], key: str) -> str:
        return f"x{var['unfitted_tables'][key]['median_ratio']:.2f}"

    def pct(x: float, fmt: str = "{:.1f}") -> str:
        return fmt.format(100 * x) + "%"

    fp32 = ("b12/fp32/titan-xp", "b12/fp32/titan-rtx", "dle/fp32/v100", "dle/fp32/t4")
    both_r = [both["unfitted_tables"][k]["median_ratio"] for k in fp32]
    lo, sl = ship["lodo"], b12["lodo"]
    expected = [
        f"({b12['constants']['c_half']:.1f}; `e_cuda` {ship['constants']['e_cuda']:.2f} -> "
        f"{b12['constants']['e_cuda']:.2f})",
        f"Titan Xp fp32 from {ratio(ship, fp32[0])} to {ratio(b12, fp32[0])}",
        *(f"{ratio(ship, k)} -> {ratio(b12, k)}" for k in fp32[1:]),
        f"TensorRT batch 1 {pct(lo['tensorrt_b1_within_35'], '{:.0f}')} -> "
        f"{pct(sl['tensorrt_b1_within_35'], '{:.0f}')} within 35% "
        f"(median {pct(lo['tensorrt_b1_median_ape'])} -> {pct(sl['tensorrt_b1_median_ape'])})",
        f"batch 512-1024 {pct(lo['eager_b512_1024_median_ape'])} -> {pct(sl['eager_b512_1024_median_ape'])}",
        f"table {pct(lo['eager_b1_median_ape']['jetson-nano'])} -> {pct(sl['eager_b1_median_ape']['jetson-nano'])}",
        f"x{min(both_r):.2f}-{max(both_r):.2f} and the Nano to "
        f"{pct(both['lodo']['eager_b1_median_ape']['jetson-nano'])}",
        f"falls to {both['lodo']['eager_b32_spearman_min']:.3f}, "
        f"{'below the bar' if both['lodo']['eager_b32_spearman_min'] < 0.95 else 'above the bar'} (shipped "
        f"{lo['eager_b32_spearman_min']:.3f})",
    ]
    assert doc["fit_devices"] == ["1080ti", "2080ti"], "the README names the GTX 1080 Ti and RTX 2080 Ti as fitted"
    _assert_quoted(expected, sec, "fp32 leads", "fp32_leads.json")


# -- CPU predictions -----------------------------------------------------------------------------
_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def check_cpu_table() -> None:
    doc = _load("cpu_table")
    sec = " ".join(_section("**CPU predictions**", "**Streaming data**").split())
    table = ROOT / doc["table"]
    header = [line for line in table.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    secs = re.search(r"cpu_table\.py \((\d+) s\)", " ".join(header))
    ort = re.search(r"ONNX Runtime (\S+) CPU provider", header[0])
    assert secs and ort, header
    cal = json.loads((ROOT / doc["calibration"]["written"]).read_text(encoding="utf-8"))
    gpu_fit = json.loads((ROOT / "kd_compile/targets/calibration/_all_devices.json").read_text(encoding="utf-8"))
    band = cal["error_bands"]["onnxruntime/fp32/batch1"]
    rep, before, held, gpu = doc["repeatability"], doc["before"], doc["held_out"], doc["held_out_gpu_ridge"]
    only, fam = doc["held_out_scales_only"], doc["held_out_by_family"]
    scales = cal["device_scales"]
    folded = sum(r["spec"].endswith("+folded") for r in doc["rows"])

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    def span(f: dict[str, Any]) -> str:
        return f"x{f['min_ratio']:.2f}-{f['max_ratio']:.2f}"

    expected = [
        f"`python benchmarks/cpu_table.py --write-calibration` ({secs.group(1)} s alone",
        f"{rep['models']} curated timm models", f"ONNX Runtime {ort.group(1)}, fp32, batch 1",
        f"the {_WORDS[folded]} re-parameterisable or conv + BN-fusing ones folded",
        f"three passes over the list lay {pct(rep['median_spread'])} apart at the median",
        f"{pct(rep['p80_spread'])} at the 80th percentile), its two fastest {pct(rep['median_spread_two_fastest'])}",
        f"a depthwise convolution at {pct(gpu_fit['constants']['e_dw'])} of peak, this CPU's table at "
        f"{pct(cal['constants']['e_dw'])})",
        f"compute scale ({scales['roofline_by_runtime']['onnxruntime']:.2f}) and fixed-cost scale "
        f"({scales['fixed']['onnxruntime']:.2f})",
        f"held out, is {pct(held['median_ape'])} median (p80 {pct(held['p80_ape'])}, "
        f"{100 * held['within_35']:.0f}% within 35%, Spearman {held['spearman']:.3f}, predicted "
        f"x{held['median_ratio']:.2f} the measured time at the median), against {pct(before['median_ape'])} "
        f"(x{before['median_ratio']:.2f}, {100 * before['within_35']:.0f}% within 35%)",
        f"**±{100 * band['median_ape']:.0f}% median ({100 * band['p80_ape']:.0f}% p80)**",
        f"ViT-like models x{fam['vit']['median_ratio']:.2f} at the median, {span(fam['vit'])}; ConvNeXts "
        f"x{fam['convnext']['median_ratio']:.2f}) and the VGGs too slow (x{fam['vgg']['median_ratio']:.2f})",
        f"depthwise mobile nets sit at x{fam['mobilenet']['median_ratio']:.2f} ({span(fam['mobilenet'])})",
        f"the same table gives {pct(only['median_ape'])} median ({pct(only['p80_ape'])} p80; mobile nets "
        f"x{only['by_family']['mobilenet']['median_ratio']:.2f})",
        f"ridge {gpu['ridge']:g}, the same table gives {pct(gpu['median_ape'])} median and {pct(gpu['p80_ape'])} at "
        "the 80th percentile",
    ]
    assert rep["passes"] == 3 and band["n"] == rep["models"] == held["n"]
    assert doc["calibration"]["fitted_constants"]["e_dw"] == cal["constants"]["e_dw"]
    _assert_quoted(expected, sec, "CPU predictions", "cpu_table.json")


def _small_check_phrases() -> list[str]:
    """The README's sentence on the check below the tables' sizes (``cpu_table.py --small-check``)."""
    ort, torch = (_load(n)["small_input_check"] for n in ("cpu_table", "cpu_table_torch"))
    secs = []
    for c in (ort, torch):
        lines = (ROOT / c["table"]).read_text(encoding="utf-8").splitlines()
        header = " ".join(ln for ln in lines if ln.startswith("#"))
        found = re.search(r"--small-check \((\d+) s\)", header)
        assert found, header
        secs.append(found.group(1))
    assert ort["n"] == torch["n"] and ort["input_px"] == torch["input_px"] == [32, 64]

    def band(c: dict[str, Any]) -> str:
        return f"{100 * c['median_ape']:.1f}%"

    return [
        f"({secs[0]} s and {secs[1]} s alone", f"measures the {ort['n']} convnets again at 32 and 64 px",
        f"**{band(ort)} median ({100 * ort['p80_ape']:.1f}% p80, x{ort['min_ratio']:.2f}-{ort['max_ratio']:.2f})** "
        "in ONNX Runtime",
        f"**{band(torch)} ({100 * torch['p80_ape']:.1f}% p80, x{torch['min_ratio']:.2f}-{torch['max_ratio']:.2f})** "
        "in eager PyTorch",
        f"x{ort['max_ratio']:.2f} in ONNX Runtime;", f"x{torch['min_ratio']:.2f} in eager PyTorch)",
    ]


def check_cpu_table_torch() -> None:
    doc = _load("cpu_table_torch")
    sec = " ".join(_section("**CPU predictions**", "**Streaming data**").split())
    table = ROOT / doc["table"]
    header = " ".join(line for line in table.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
    secs = re.search(r"cpu_table\.py --runtime torch \((\d+) s\)", header)
    torch = re.search(r"PyTorch (\S+) eager", header)
    assert secs and torch, header
    cal = json.loads((ROOT / doc["calibration"]["written"]).read_text(encoding="utf-8"))
    band = cal["error_bands"]["torch/fp32/batch1"]
    rep, before, held, own = doc["repeatability"], doc["before"], doc["held_out"], doc["held_out_own_constants"]
    fam = doc["held_out_by_family"]
    scales = cal["device_scales"]
    rows = {r["spec"]: r for r in doc["rows"]}

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    def ratio(spec: str) -> str:
        return f"x{rows[spec]['held_out_ms'] / rows[spec]['measured_ms']:.2f}"

    r34 = rows["timm:resnet34@224"]
    expected = [
        f"`python benchmarks/cpu_table.py --runtime torch --write-calibration` ({secs.group(1)} s alone",
        f"measures the same {rep['models']} models", f"(PyTorch {torch.group(1)}, `inference_mode`, fp32, batch 1",
        f"passes {pct(rep['median_spread'])} apart at the median, the two fastest "
        f"{pct(rep['median_spread_two_fastest'])}",
        f"x{before['median_ratio']:.2f} the measured time at the median ({pct(before['median_ape'])} median error, "
        f"{100 * before['within_35']:.0f}% within 35%; ResNet-34 at 224 px predicted {r34['before_ms']:.0f} ms, "
        f"measured {r34['measured_ms']:.0f} ms)",
        f"(compute {scales['roofline_by_runtime']['torch']:.2f}, fixed cost {scales['fixed']['torch']:.2f})",
        f"**±{100 * band['median_ape']:.0f}% median ({100 * band['p80_ape']:.0f}% p80)**, "
        f"{100 * held['within_35']:.0f}% within 35%, Spearman {held['spearman']:.3f}, x{held['median_ratio']:.2f} "
        "at the median",
        f"the same figure is {pct(own['median_ape'])} ({pct(own['p80_ape'])} p80)",
        f"costs the eager band {100 * (held['median_ape'] - own['median_ape']):.1f} points",
        f"(ResNeXt-50 and ResNet-34 {ratio('timm:resnext50_32x4d@224')}, held out)",
        f"ResNet-50 at 96 px and VGG-11 too fast ({ratio('timm:resnet50@96')}, {ratio('timm:vgg11@224')})",
        f"ConvNeXts x{fam['convnext']['median_ratio']:.2f}",
    ]
    assert ratio("timm:resnext50_32x4d@224") == ratio("timm:resnet34@224")
    assert band["n"] == rep["models"] == held["n"] and band["median_ape"] == held["median_ape"]
    assert cal["constants"]["e_dw"] == doc["calibration"]["fitted_constants"]["e_dw"]
    _assert_quoted(expected + _small_check_phrases(), sec, "CPU predictions", "cpu_table_torch.json")


def check_cpu_transfer() -> None:
    doc = _load("cpu_transfer")
    sec = " ".join(_section("**Other CPUs**", "**Streaming data**").split())
    cpus = ("xeon-gold-6226", "xeon-gold-6240", "xeon-silver-4114", "xeon-silver-4210r")
    table = doc["table"]

    def span(fam: str, how: str, key: str, fmt: str, scale: float = 1.0) -> str:
        v = [scale * table[f"{c}/{fam}"][how][key] for c in cpus]
        return f"{fmt.format(min(v))}-{fmt.format(max(v))}"

    shipped = json.loads((ROOT / "kd_compile" / "targets" / "calibration" / "_all_devices.json")
                         .read_text(encoding="utf-8"))["transfer_bands"]["cpu"]
    assert doc["band"] == shipped, "the shipped CPU bands are not the ones cpu_transfer.json measured"
    eager, ort = doc["band"]["torch/fp32/batch1"], doc["band"]["onnxruntime/fp32/batch1"]
    agree = doc["columns_agree"]
    here = doc["here"]["repeats"]

    def here_span(fam: str, how: str, key: str, fmt: str) -> str:
        v = [r[fam][how][key] for r in here]
        return f"{fmt.format(min(v))}-{fmt.format(max(v))}"

    meds = {f: [table[f"{c}/{f}"]["datasheet"]["measured_median_ms"] for c in cpus] for f in ("nb201", "fbnet")}
    per_cpu = [a / b for a, b in zip(meds["fbnet"], meds["nb201"], strict=True)]
    vm = {rt: table[f"kd-compile-dev-vm/{rt}"]["datasheet"] for rt in ("onnxruntime", "torch")}

    def agree_span(fam: str) -> str:
        v = [x for k, x in agree.items() if k.startswith(fam)]
        return f"{min(v):.3f}-{max(v):.3f}"

    expected = [
        f"({doc['seconds']:.0f} s",
        f"**±{100 * eager['median_ape']:.0f}% median ({100 * eager['p80_ape']:.0f}% p80)** over the "
        f"{_WORDS[len(eager['devices'])]} CPUs ({eager['n']:,} rows)",
        f"**±{100 * ort['median_ape']:.0f}% median ({100 * ort['p80_ape']:.0f}% p80)** over the "
        f"{_WORDS[len(ort['devices'])]} CPU measured in it (this VM's {ort['n']} models",
        f"outside their {ort['input_px'][0]}-{ort['input_px'][1]} px",
        f"x{span('nb201', 'datasheet', 'median_ratio', '{:.2f}')} the measured time (median error "
        f"{span('nb201', 'datasheet', 'median_ape', '{:.1f}', 100)}%, Spearman "
        f"{span('nb201', 'datasheet', 'spearman', '{:.3f}')})",
        f"x{span('fbnet', 'datasheet', 'median_ratio', '{:.2f}')} "
        f"({span('fbnet', 'datasheet', 'median_ape', '{:.1f}', 100)}%, "
        f"Spearman {span('fbnet', 'datasheet', 'spearman', '{:.3f}')};",
        f"at {agree_span('fbnet')} on FBNet, {agree_span('nb201')} on NAS-Bench-201",
        f"this VM x{vm['onnxruntime']['median_ratio']:.2f} in ONNX Runtime and x{vm['torch']['median_ratio']:.2f} "
        "in eager PyTorch",
        f"(x{span('fbnet', 'cpu_target_calibration', 'median_ratio', '{:.2f}')}; NAS-Bench-201 "
        f"x{span('nb201', 'cpu_target_calibration', 'median_ratio', '{:.2f}')})",
        f"took {min(per_cpu):.1f}-{max(per_cpu):.0f}x a NAS-Bench-201 one (medians "
        f"{span('fbnet', 'datasheet', 'measured_median_ms', '{:.1f}')} ms against "
        f"{span('nb201', 'datasheet', 'measured_median_ms', '{:.1f}')} ms)",
        f"({doc['here']['n_per_family']} of each table", f"PyTorch {doc['here']['torch'].split('+')[0]} on the "
        f"{doc['here']['cpu']} of the day, two threads, {_WORDS[len(here)]} passes",
        f"took {here_span('fbnet', 'datasheet', 'measured_median_ms', '{:.1f}')} ms and "
        f"{here_span('nb201', 'datasheet', 'measured_median_ms', '{:.1f}')} ms, predicted from the datasheet "
        f"x{here_span('fbnet', 'datasheet', 'median_ratio', '{:.2f}')} and "
        f"x{here_span('nb201', 'datasheet', 'median_ratio', '{:.2f}')} by pass (with the `cpu` target's "
        f"calibration x{here_span('fbnet', 'cpu_target_calibration', 'median_ratio', '{:.2f}')} and "
        f"x{here_span('nb201', 'cpu_target_calibration', 'median_ratio', '{:.2f}')}; one run on the shared VM",
    ]
    spreads = sorted(100 * _load(n)["repeatability"]["median_spread"] for n in ("cpu_table", "cpu_table_torch"))
    expected.append(f"lay {spreads[0]:.0f}-{spreads[1]:.0f}% apart at the median")
    assert all(r[f]["threads"] == 2 for r in here for f in r)
    _assert_quoted(expected, sec, "other CPUs", "cpu_transfer.json")


CHECKS: dict[str, Callable[[], None]] = {
    "e2e_glyphs": check_e2e,
    "e2e_glyphs_turbo": check_e2e_turbo,
    "latency_accuracy": check_latency,
    "latency_choices": check_latency_choices,
    "external_check": check_external,
    "fp32_leads": check_fp32_leads,
    "help_ceiling": check_help_ceiling,
    "strategies": check_strategies,
    "strategies_glyphs10": check_strategies_glyphs10,
    "glyphs_difficulty": check_glyphs_difficulty,
    "fidelity": check_fidelity,
    "distill": check_distill,
    "data_stream": check_data_stream,
    "ort_stability": check_ort_stability,
    "kill_campaign": check_kill_campaign,
    "kill_campaign_imagefolder": check_kill_campaign_imagefolder,
    "cpu_table": check_cpu_table,
    "cpu_table_torch": check_cpu_table_torch,
    "cpu_transfer": check_cpu_transfer,
    "scbo_toy": check_scbo_toy,
    "scbo_cpu_learned": check_scbo_cpu,
    "scbo_cpu_penalty": check_scbo_cpu,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_readme_figures_equal_the_results_files(name: str) -> None:
    if not (RESULTS / f"{name}.json").is_file():
        assert name in PENDING, f"benchmarks/results/{name}.json is missing: run `make bench`"
        pytest.skip(f"{name}: no results file yet ({PENDING[name]})")
    assert name not in PENDING, f"benchmarks/results/{name}.json exists: remove {name!r} from PENDING"
    CHECKS[name]()


def test_every_results_file_is_checked() -> None:
    """A results file no check reads would let its README figures go stale unnoticed."""
    files = {p.stem for p in RESULTS.glob("*.json")} - {"strategies_charge_repeats"}
    assert files <= set(CHECKS), f"results files without a README check: {sorted(files - set(CHECKS))}"
