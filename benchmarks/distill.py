"""Benchmark: offline teacher cache vs online teacher, and accuracy of each distiller.

Claims checked (issue: distillation engine), side by side in one run on the bundled glyphs
teacher (``examples/glyphs/teacher.pt``, a residual net, and its built-in glyphs data):
  1. KD training with the offline ``TeacherCache`` is >= 1.3x faster per epoch than running the
     teacher online on every batch (Auto-KD's offline processing; the paper reports 1.29x).
  2. Accuracy of one fixed student (``cnn`` space, widths 16/32/32/64, ~37K parameters) trained
     with CE only, logit KD (KL at two temperatures, standardised KL, DIST), each feature
     distiller (hint, AT, NST, NST with channel subsampling, SP, CKA), KD on seeded augmented
     views (cached teacher, ``augmented_bundle``), and KD with 50% dynamic sparsity.
  3. Data-free KD: the same student distilled on images synthesised from the teacher
     (``synthesize``, DeepInversion-style; no real training image seen), evaluated on the real
     val set, next to real-data KD.

Run (CPU; ``--threads`` torch threads):

    .venv/bin/python benchmarks/distill.py [--epochs 6] [--repeats 3] [--threads 2]

Every figure is also written to ``benchmarks/results/distill.json`` (``--results``): val accuracy
(which ``train_student``'s early stopping selected on) and, beside it, accuracy on the held-out
test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from kd_compile.data import load_data
from kd_compile.distill import (
    DistillerSpec,
    FeatureSpec,
    TeacherCache,
    TrainConfig,
    augmented_bundle,
    evaluate,
    synthesize,
    train_student,
)
from kd_compile.students import create_space
from kd_compile.students.common import feature_layers
from kd_compile.teacher import load_teacher

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "examples" / "glyphs" / "teacher.pt"
STUDENT = {"depth": 4, "w1": 16, "w2": 32, "w3": 32, "w4": 64}
RESULTS = ROOT / "benchmarks" / "results" / "distill.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=TEACHER)
    ap.add_argument("--epochs", type=float, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1, help="student seeds averaged per variant")
    ap.add_argument("--synthetic", type=int, default=3100, help="data-free images (train + val)")
    ap.add_argument("--synthetic-steps", type=int, default=100)
    ap.add_argument("--results", type=Path, default=RESULTS, help="JSON to write the figures to")
    args = ap.parse_args()
    out: dict[str, object] = {"command": " ".join(sys.argv), "timing": [], "variants": []}
    torch.set_num_threads(args.threads)
    print(f"command: {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} | torch {torch.__version__} | "
        f"threads {torch.get_num_threads()} | python {platform.python_version()}"
    )
    tch = load_teacher(args.teacher)
    teacher = tch.module.eval()
    data = load_data(tch.meta["data"]["spec"], seed=0)
    space = create_space("cnn", input_shape=data.input_shape, num_classes=data.num_classes, max_depth=4)
    sconf = space.validate({**space.default(), **STUDENT})

    def student(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return space.build(sconf)

    s_params = sum(p.numel() for p in student().parameters())
    t0 = time.perf_counter()
    # the teacher's last two stage outputs pair with the student's last two layers
    t3, t4 = feature_layers(teacher)[-2:]
    cache = TeacherCache.build(teacher, data, feature_layers=[t3, t4])
    print(
        f"data: {data.name} train={len(data.x_train)} val={len(data.x_val)} | teacher {tch.params:,} "
        f"params, val acc {cache.teacher_val_acc:.4f} | student {space.describe(sconf)}, {s_params:,} params"
    )
    print(f"cache build (logits + 2 feature maps, train+val): {time.perf_counter() - t0:.2f}s\n")

    # ---- 1. per-epoch time, online teacher vs offline cache -----------------------------------
    def per_epoch(spec: DistillerSpec | None, cache: TeacherCache | None, teacher: nn.Module | None) -> float:
        cfg = TrainConfig(epochs=1, tau=4.0, distiller=spec, lr=1e-2)
        times = []
        for _ in range(args.repeats):
            r = train_student(student(), data, cfg, cache, teacher=teacher)
            times.append(r.seconds / r.epochs_run)
        return statistics.median(times)

    rows = []
    for label, spec in [
        ("logit KD", None),
        ("KD + hint(l3)", DistillerSpec("kl", (FeatureSpec.named("hint", student="layers.l3", teacher=t3),))),
    ]:
        on = per_epoch(spec, None, teacher)
        off = per_epoch(spec, cache, None)
        rows.append((label, on, off))
    print(f"per-epoch seconds (median of {args.repeats} one-epoch runs, batch 128)")
    print(f"{'distiller':<20} {'online':>9} {'offline':>9} {'speed-up':>9}")
    for label, on, off in rows:
        print(f"{label:<20} {on:9.3f} {off:9.3f} {on / off:8.2f}x")
        out["timing"].append({"distiller": label, "online_s": on, "offline_s": off})  # type: ignore[attr-defined]
    print()

    # ---- 2. accuracy of one fixed student per distiller --------------------------------------
    pair = ("layers.l3", t3)
    variants: list[tuple[str, dict[str, object]]] = [
        ("CE only", {"use_kd": False}),
        ("KD (KL, tau=1)", {"tau": 1.0}),
        ("KD (KL, tau=4)", {}),
        ("KD (KL std, tau=2)", {"logit_loss": "kl_std", "tau": 2.0}),
        ("DIST", {"logit_loss": "dist"}),
    ]
    weights = {"hint": 1.0, "at": 100.0, "nst": 10.0, "nst_approx": 10.0, "sp": 10.0, "cka": 1.0}
    for kind, w in weights.items():
        layers = pair if kind not in ("nst", "nst_approx") else ("layers.l4", t4)
        spec = DistillerSpec("kl", (FeatureSpec.named(kind, student=layers[0], teacher=layers[1], weight=w),))
        variants.append((f"KD + {kind} (w={w:g})", {"distiller": spec}))
    variants.append(("KD, 50% dynamic sparsity", {"sparsity": 0.5}))

    print(
        f"accuracy after {args.epochs:g} epochs (batch 128, lr 1e-2, alpha 0.7, tau 4 unless said), "
        f"mean over {args.seeds} student seed(s)"
    )
    print(f"{'variant':<30} {'val acc':>8} {'test acc':>8} {'s/epoch':>8}")

    x_test, y_test = data.test_tensors()

    def run(label: str, kw: dict[str, object], bundle=data, cache=cache, epochs=args.epochs) -> float:
        accs, tests, secs = [], [], []
        for seed in range(args.seeds):
            cfg = TrainConfig(epochs=epochs, lr=1e-2, tau=4.0, seed=seed)
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **kw})
            model = student(seed)
            r = train_student(model, bundle, cfg, cache)
            accs.append(r.val_acc)
            tests.append(evaluate(model, x_test, y_test))
            secs.append(r.seconds / r.epochs_run * (len(data.x_train) / len(bundle.x_train)))
        acc = statistics.mean(accs)
        print(f"{label:<30} {acc:8.4f} {statistics.mean(tests):8.4f} {statistics.median(secs):8.3f}", flush=True)
        row = {"variant": label, "val_acc": acc, "test_acc": statistics.mean(tests)}
        out["variants"].append({**row, "s_per_epoch": statistics.median(secs)})  # type: ignore[attr-defined]
        return acc

    kd_acc = 0.0
    for label, kw in variants:
        acc = run(label, kw)
        if label == "KD (KL, tau=4)":
            kd_acc = acc
    # augmented views: the same number of optimiser steps, spread over 1 original + 2 views
    aug = augmented_bundle(data, 2, seed=0, max_shift=1)
    aug_cache = TeacherCache.build(teacher, aug, augment_seed=0)
    run("KD, 2 augmented views (cached)", {}, aug, aug_cache, args.epochs / 3)

    # ---- 3. data-free distillation ------------------------------------------------------------
    t0 = time.perf_counter()
    syn = synthesize(
        teacher,
        data.input_shape,
        data.num_classes,
        n_images=args.synthetic,
        steps=args.synthetic_steps,
        batch_size=128,
        mean=data.mean,
        std=data.std,
        seed=0,
    )
    syn_s = time.perf_counter() - t0
    # train on the synthetic images, evaluate on the real val set (same normalisation)
    bundle = syn.replace(x_val=data.x_val, y_val=data.y_val, mean=data.mean, std=data.std)
    syn_cache = TeacherCache.build(teacher, bundle)
    epochs = args.epochs * len(data.x_train) / len(bundle.x_train)  # the same number of steps
    print()
    print(
        f"data-free: {len(syn.x_train)} synthetic train images ({args.synthetic_steps} steps/batch, "
        f"{syn_s:.0f}s); the student's accuracy on the real val set:"
    )
    print(f"{'variant':<30} {'val acc':>8}")
    print(f"{'KD on real data':<30} {kd_acc:8.4f}")
    accs, tests = [], []
    for seed in range(args.seeds):
        cfg = TrainConfig(epochs=epochs, lr=1e-2, tau=4.0, seed=seed, alpha=1.0)
        model = student(seed)
        accs.append(train_student(model, bundle, cfg, syn_cache).val_acc)
        tests.append(evaluate(model, x_test, y_test))
    print(f"{'KD data-free (synthetic)':<30} {statistics.mean(accs):8.4f} {statistics.mean(tests):8.4f}")
    out["data_free"] = {
        "images": len(syn.x_train), "synthesis_s": syn_s, "val_acc": statistics.mean(accs),
        "test_acc": statistics.mean(tests),
    }  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
