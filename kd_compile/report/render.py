"""Render the report as Markdown, with the phrases (speed in words, error bands, confidence
intervals) and the deployment commands the HTML rendering (``html.py``) shares."""

from __future__ import annotations

from typing import Any

from ..config import format_count


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _floats(v: Any) -> str:
    return "-" if not v else "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%)"


def accuracy_phrase(acc: float | None, ci: list[float] | None) -> str:
    """``91.20% (95% CI 88.1-93.6%)``: an accuracy with its Wilson interval over the validation set."""
    return _pct(acc) + _ci(ci)


def _split_name(r: dict[str, Any]) -> str:
    """``test`` when the headline accuracies are on the held-out test split, else ``validation``."""
    return "test" if r["run"]["data"].get("accuracy_split") == "test" else "validation"


def _accuracy_sentence(r: dict[str, Any]) -> str:
    """Which images the accuracies are measured on, and how many."""
    d = r["run"]["data"]
    if d.get("accuracy_split") == "test":
        return (
            f"Accuracies on {d['test']:,} held-out test images of `{d['name']}` that no choice saw (the search, "
            f"early stopping and the distiller chose on {d['val']:,} validation images, quoted beside them; trained "
            f"on {d['train']:,}); 95% confidence intervals are Wilson intervals over the test images."
        )
    return (
        f"Accuracies on {d['val']:,} validation images of `{d['name']}` (trained on {d['train']:,}; the data has "
        "no test split, so these are the images the choices were made on); 95% confidence intervals are Wilson "
        "intervals over those images."
    )


def _val_rows(r: dict[str, Any]) -> list[str]:
    """The validation accuracies beside the test ones (the split every choice was made on)."""
    t, s = r["teacher"], r["student"]
    if r["run"]["data"].get("accuracy_split") != "test":
        return []
    rows = [
        f"| validation accuracy (used for choices) | {_pct(t.get('val_accuracy'))} | {_pct(s.get('val_accuracy'))} | |"
    ]
    if s.get("trained_with") == "ce":
        rows.append(f"| validation accuracy with KD (not shipped) | | {_pct(s.get('val_accuracy_with_kd'))} | |")
    elif s.get("val_accuracy_without_kd") is not None:
        rows.append(f"| validation accuracy without KD | | {_pct(s['val_accuracy_without_kd'])} | |")
    return rows


def twin_label(r: dict[str, Any]) -> tuple[str, float | None]:
    """The row beside the shipped student's accuracy: its twin's (the same architecture trained the
    other way), and that accuracy. The KD student ships unless the CE-only twin scored higher on
    validation; then the KD student is the twin."""
    s = r["student"]
    if s.get("trained_with") == "ce":
        return "accuracy with KD (same architecture; not shipped: lower on validation)", s.get("accuracy_with_kd")
    return "accuracy without KD (same architecture, CE only)", s.get("accuracy_without_kd")


def _twin_row(r: dict[str, Any]) -> str:
    label, acc = twin_label(r)
    return f"| {_split_name(r)} {label} | | {_pct(acc)} | {_gain(r['student']['kd_gain'])} |"


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
    """The predictor's held-out error for this target and regime, in words, e.g. "±16% median,
    34% p80 held out (device left out: leave-one-device-out over t4 (13 models, ...))"."""
    if not band:
        return "no calibration error known for this target"
    ape, p80 = band.get("median_ape"), band.get("p80_ape")
    if not isinstance(ape, (int, float)):
        basis = str(band.get("basis") or "no measurements for this runtime").removesuffix(": unvalidated")
        return f"unvalidated ({basis})"
    what = _error_phrase(ape, p80)
    how = "; ".join(str(x) for x in (band.get("transfer"), band.get("basis")) if x)
    out = f"{what} error held out ({how})" if how else f"{what} error held out"
    fam = band.get("family_left_out")
    if isinstance(fam, dict) and isinstance(fam.get("median_ape"), (int, float)):
        out += (f"; ±{100 * fam['median_ape']:.0f}% median on a family its tables lack (each of its "
                f"{fam.get('families', '?')} families left out of the fit in turn)")
    if band.get("caveat"):
        out += f"; CAVEAT: {band['caveat']}"
    oos = [o for o in band.get("out_of_sample") or [] if isinstance(o, dict)]
    if oos:
        out += f"; {out_of_sample_phrase(oos)}"
    return out


def _error_phrase(median: float, p80: Any) -> str:
    """``±M% median, P% p80`` (the p80 part only when there is one)."""
    return f"±{100 * median:.0f}% median" + (f", {100 * p80:.0f}% p80" if isinstance(p80, (int, float)) else "")


def out_of_sample_phrase(oos: list[dict[str, Any]]) -> str:
    """A target's figures from tables no fit reads (``out_of_sample`` of a band), in words: "out of
    sample on this GPU: <models> (<source>; N at batch B, S px): ±M% median, P% p80 error, predicted
    xR the measured time (median); ..." (one part per source)."""
    parts = []
    for o in oos:
        sides = o.get("input_px") or ["?"]  # [smallest, largest]
        px = f"{sides[0]}" if sides[0] == sides[-1] else f"{sides[0]}-{sides[-1]}"
        err = _error_phrase(o["median_ape"], o.get("p80_ape"))
        batches = "/".join(str(b) for b in o.get("batches") or []) or "?"
        parts.append(f"{o.get('models', 'models')} ({o.get('source', '?')}; {o.get('n', '?')} at batch {batches}, "
                     f"{px} px): {err} error, predicted x{o.get('median_ratio', 0):.2f} the "
                     "measured time (median)")
    return "out of sample on this GPU: " + "; ".join(parts)


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


def _preprocessing(r: dict[str, Any]) -> dict[str, Any]:
    """The student's input pipeline (the teacher's preprocessing: the student was trained on it)."""
    t = r["teacher"]
    pre = dict(t.get("preprocessing") or {})
    shape = pre.get("input_shape") or t.get("input_shape") or r["run"]["data"]["input_shape"]
    c, h, w = (int(v) for v in shape[-3:])
    mean = pre.get("mean") or [0.0] * c
    std = pre.get("std") or [1.0] * c
    return {
        "channels": c, "height": h, "width": w, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "interpolation": pre.get("interpolation") or "bilinear", "crop_pct": float(pre.get("crop_pct") or 1.0),
    }  # fmt: skip


def deploy_snippets(r: dict[str, Any]) -> dict[str, str]:
    """Commands that run the student: ``onnxruntime`` (Python, with the preprocessing spelled out),
    ``tensorrt`` (trtexec, at the target's precision) and ``torch`` (the TorchScript, ``.pt2`` and
    ``student.pt`` forms). The values come from the report, and the same values are in the ONNX
    file's metadata."""
    p = _preprocessing(r)
    c, h, w = p["channels"], p["height"], p["width"]
    mode = "L" if c == 1 else "RGB"
    interp = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}.get(p["interpolation"], "BILINEAR")
    if p["crop_pct"] < 1.0:
        resize = (
            f"side = int({h} / {p['crop_pct']:g})  # resize the shorter side, then centre-crop {h}x{w} (crop_pct)\n"
            f"scale = side / min(img.size)\n"
            f"img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.{interp})\n"
            f"left, top = (img.width - {w}) // 2, (img.height - {h}) // 2\n"
            f"img = img.crop((left, top, left + {w}, top + {h}))\n"
        )
    else:
        resize = f"img = img.resize(({w}, {h}), Image.Resampling.{interp})  # straight to the input size\n"
    chw = "x[None]" if c == 1 else "x.transpose(2, 0, 1)"
    ort_code = (
        "import json\n\nimport numpy as np\nimport onnxruntime as ort\nfrom PIL import Image\n\n"
        'sess = ort.InferenceSession("student.onnx", providers=["CPUExecutionProvider"])\n'
        "meta = sess.get_modelmeta().custom_metadata_map  # the same preprocessing, read from the file\n"
        'classes = json.loads(meta["class_names"])\n'
        f"mean = np.array({p['mean']!r}, dtype=np.float32)\n"
        f"std = np.array({p['std']!r}, dtype=np.float32)\n\n"
        f'img = Image.open("image.png").convert("{mode}")\n'
        + resize
        + "x = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std  # per channel, on x/255\n"
        + f"x = np.ascontiguousarray({chw}[None], dtype=np.float32)  # (1, {c}, {h}, {w}), NCHW\n"
        + "logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]\n"
        + "print(classes[int(logits.argmax())] if classes else int(logits.argmax()))\n"
    )
    prec = {"fp16": " --fp16", "int8": " --int8 --fp16", "bf16": " --bf16"}.get(r["target"].get("precision"), "")
    trt = (
        f"trtexec --onnx=student.onnx --saveEngine=student.engine{prec} \\\n"
        f"    --minShapes=input:1x{c}x{h}x{w} --optShapes=input:1x{c}x{h}x{w} --maxShapes=input:64x{c}x{h}x{w}\n"
        f"trtexec --loadEngine=student.engine --shapes=input:1x{c}x{h}x{w}  # its latency on this GPU"
    )
    if r["target"].get("precision") == "fp16":  # TensorRT 11 removed --fp16: the ONNX carries the precision
        trt += (
            "\n# TensorRT 11 (strongly typed networks, no --fp16): convert the ONNX to fp16 first, then build it\n"
            "python -m modelopt.onnx.autocast --onnx_path student.onnx --output_path student_fp16.onnx\n"
            "trtexec --onnx=student_fp16.onnx --saveEngine=student.engine \\\n"
            f"    --minShapes=input:1x{c}x{h}x{w} --optShapes=input:1x{c}x{h}x{w} --maxShapes=input:64x{c}x{h}x{w}"
        )
    if r["target"].get("precision") == "int8":  # --int8 without calibration times the speed, not the accuracy
        trt += (
            "\n# --int8 above (TensorRT 10) uses placeholder ranges: its timing holds, its outputs do not. For\n"
            "# an engine to deploy (and on TensorRT 11, which has no --int8), quantize the ONNX with calibration\n"
            f"# images of your own data (calib.npy: float32, N x {c} x {h} x {w}, preprocessed as above), then\n"
            "# build it\n"
            "python -m modelopt.onnx.quantization --onnx_path=student.onnx --quantize_mode=int8 \\\n"
            "    --calibration_data=calib.npy --output_path=student_int8.onnx\n"
            "trtexec --onnx=student_int8.onnx --saveEngine=student.engine \\\n"
            f"    --minShapes=input:1x{c}x{h}x{w} --optShapes=input:1x{c}x{h}x{w} --maxShapes=input:64x{c}x{h}x{w}"
        )
    torch_code = (
        "import torch\n\nimport kd_compile\n\n"
        f"x = torch.randn(1, {c}, {h}, {w})  # preprocessed as above\n"
        'scripted = torch.jit.load("student.torchscript.pt")  # TorchScript, no kd-compile needed\n'
        'exported = torch.export.load("student.pt2").module()  # torch.export ExportedProgram\n'
        'student = kd_compile.load_student("student.pt").module  # trainable weights + config\n'
        "print(scripted(x).argmax(1), exported(x).argmax(1), student(x).argmax(1))\n"
    )
    return {"onnxruntime": ort_code, "tensorrt": trt, "torch": torch_code}


def deploy_lines(r: dict[str, Any]) -> list[str]:
    """The report's Deploy section in Markdown."""
    p = _preprocessing(r)
    sn = deploy_snippets(r)
    return [
        "## Deploy",
        "",
        f"Input: {p['channels']}x{p['height']}x{p['width']} (C x H x W) float32, NCHW; pixels scaled to [0, 1] "
        f"then normalised with mean {_floats(p['mean'])} and std {_floats(p['std'])}; {p['interpolation']} "
        f"resize, crop_pct {p['crop_pct']:g}. Output: one logit per class. `student.onnx` carries these values "
        "and the class names in its metadata.",
        "",
        "ONNX Runtime (Python):",
        "",
        "```python",
        sn["onnxruntime"].rstrip(),
        "```",
        "",
        "TensorRT (build an engine from the ONNX file on the deployment GPU, then time it):",
        "",
        "```sh",
        sn["tensorrt"],
        "```",
        "",
        "PyTorch:",
        "",
        "```python",
        sn["torch"].rstrip(),
        "```",
        "",
    ]


def calibration_line(r: dict[str, Any]) -> str:
    """Whether the target's latency figures are measured or predicted, and how far to trust them."""
    sp, tg = r.get("speedup") or {}, r["target"]
    if sp.get("method") == "measured":
        return f"Latency calibration: not needed, latencies on {tg['name']} were measured on the device."
    band = sp.get("error_band")
    status = "calibrated" if band and isinstance(band.get("median_ape"), (int, float)) else "uncalibrated"
    return (
        f"Latency calibration for {tg['name']} ({tg['runtime']}, {tg['precision']}): {status}; predictor error "
        f"{band_phrase(band)}."
    )


def render_markdown(r: dict[str, Any]) -> str:
    t, s, tg = r["teacher"], r["student"], r["target"]
    from .schema import NEAR_CHANCE

    warnings = r.get("warnings") or []
    lead = [w for w in warnings if w.startswith(NEAR_CHANCE)]  # a student this weak is news before its speed
    lines = [
        "# kd-compile report",
        "",
        *(f"**Warning: {w}**\n" for w in lead),
        *speed_lines(r),
        "",
        f"Target **{tg['display_name']}** (`{tg['name']}`, {tg['runtime']}, {tg['precision']}). "
        f"Strategy `{r['search']['strategy']}` over the `{r['search']['space']}` space; "
        f"{r['search']['evaluated']} candidates evaluated "
        f"({', '.join(f'{n} {k}' for k, n in r['search']['statuses'].items())}). "
        + _accuracy_sentence(r),
        "",
        calibration_line(r),
        "",
        "| | teacher | student | student vs teacher |",
        "| --- | --- | --- | --- |",
        f"| {_split_name(r)} accuracy | {accuracy_phrase(t['accuracy'], t.get('accuracy_ci95'))} | "
        f"{accuracy_phrase(s['accuracy'], s.get('accuracy_ci95'))} | "
        f"{100 * (s['accuracy'] - t['accuracy']):+.2f} percentage points |",
        _twin_row(r),
        *_val_rows(r),
        f"| parameters | {format_count(t['params'])} | {format_count(s['params'])} | {s['params_ratio']:.3f} |",
        f"| FLOPs | {format_count(t['flops'])} | {format_count(s['flops'])} | {s['flops_ratio']:.3f} |",
        f"| latency on target, per batch of {s['latency'].get('batch', 1)} | {_ms(t['latency'])} | "
        f"{_ms(s['latency'])} | {s['latency_ratio']:.3f}x the teacher's time "
        f"({speed_phrase(1 / s['latency_ratio'] if s['latency_ratio'] else None)}) |",
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
    meas = {k: m for k, m in (r.get("measurements") or {}).items() if isinstance(m, dict) and m.get("latency_ms")}
    if meas:
        lines += [
            "",
            "## Measured on this machine",
            "",
            "| model | latency, ms per batch | predicted by the latency model | method |",
            "| --- | --- | --- | --- |",
        ]
        for name, m in meas.items():
            pred = m.get("predicted_ms")
            pred_s = "-" if not pred else f"{pred:.4g} ms ({pred / m['latency_ms']:.2f}x the measurement)"
            lines.append(
                f"| {name} | {m['latency_ms']:.4g} ms | {pred_s} | {m['method']} ({m['runtime']}, {m['device']}) |"
            )
    lines += [
        "",
        "## Search trace",
        "",
        "| # | status | fidelity | proxy accuracy | params | latency, ms | score | architecture / reason |",
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
    chosen = r["search"].get("chosen")
    if chosen is not None:
        if chosen["number"] is None:
            how = "it was never trained during the search; the final training is its first"
        elif chosen["trained_at_fidelity"] is not None and chosen["trained_at_fidelity"] < 1.0:
            how = (
                f"the search trained it only at fidelity {chosen['trained_at_fidelity']:.2g} "
                f"(candidate {chosen['number']})"
            )
        else:
            how = f"candidate {chosen['number']}"
        lines += ["", f"Student chosen by {chosen['by']}: {how}."]
    for note in r["search"].get("notes") or []:
        lines += ["", f"Note: {note}"]
    screened = r["search"].get("screened", 0)
    if screened:
        lines += [
            "",
            f"{screened} proposals were screened out before evaluation: their FLOPs, memory or "
            "predicted latency broke a constraint, known without training.",
        ]
    if r["search"]["pareto"]:
        lines += [
            "",
            "## Pareto front (accuracy, latency, params)",
            "",
            "| # | proxy accuracy | latency, ms | params | architecture |",
            "| --- | --- | --- | --- | --- |",
        ]
        for p in r["search"]["pareto"]:
            lines.append(
                f"| {p['number']} | {_pct(p['accuracy'])} | {p['latency_ms']:.3g} | "
                f"{format_count(p['params'])} | {p['arch']} |"
            )
    lines += ["", *deploy_lines(r)]
    gates = r.get("gates") or {}
    if gates:
        lines += ["## Quality gates", "", "| gate | needed | found | result |", "| --- | --- | --- | --- |"]
        for name, g in gates.items():
            val = "-" if g.get("value") is None else f"{g['value']:.4g}"
            lines.append(f"| {name} | {g['threshold']:g} | {val} | {'passed' if g['passed'] else 'FAILED'} |")
        lines.append("")
    tm = r["run"]["timings_s"]
    lines += [
        "",
        "## Time",
        "",
        ", ".join(f"{k} {v:.1f} s" for k, v in tm.items()),
        f"; share outside training {_pct(r['run']['share_outside_training'])}.",
        "",
        *_final_training_lines(r.get("final_training")),
        "Artifacts: " + ", ".join(f"`{k}`" for k in r["artifacts"]) + ".",
        "",
    ]
    for w in warnings:
        if w not in lead:
            lines += [f"Warning: {w}", ""]
    if "student.engine" not in r["artifacts"]:
        lines += ["No TensorRT engine was built: TensorRT is not installed on this machine.", ""]
    return "\n".join(lines)


def _final_training_lines(ft: dict[str, Any] | None) -> list[str]:
    """One line on the final trainings when a resumed run did not train them from the start."""
    if not ft:
        return []
    if ft.get("restored"):
        return ["The final students were trained by an interrupted run of this folder and restored "
                "from the ones it kept (`final-students.pt`, checked against its journal), not trained again.", ""]
    resumed = [f"{name} from epoch {t['resumed_at']:g}" for name, t in (("with KD", ft.get("kd")),
               ("without KD", ft.get("ce"))) if t and t.get("resumed_at")]  # fmt: skip
    if resumed:
        return [f"The final trainings went on from their epoch checkpoints ({', '.join(resumed)}).", ""]
    return []
