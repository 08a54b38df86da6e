"""Does capacity matter on ``glyphs``? Train three plain CNNs and print their val accuracy.

Claim checked: a ~300K-parameter CNN reaches roughly 80-90% validation accuracy on the default
``glyphs`` data within a few epochs on CPU, while small students (~15K, ~50K parameters) score
clearly below it, so that a search can tell students apart (on ``digits`` all score ~99%).

Run (prints the command, machine, and one line per model):

    .venv/bin/python benchmarks/glyphs_difficulty.py            # default glyphs, 6 epochs
    .venv/bin/python benchmarks/glyphs_difficulty.py --data digits --epochs 6

Models: six 3x3 conv+BN+ReLU layers of widths (w, w, 2w, 2w, 4w, 4w), 2x2 max-pool after the
2nd and 4th, global average pool, linear head; w = 7, 13, 32 give ~15K, ~50K, ~300K params.
Training: AdamW (lr 3e-3, wd 5e-4), one-cycle schedule, batch 128, no augmentation, 2 threads.
Nothing is chosen on val here (fixed epochs), so val and test accuracy are both unbiased; both are
printed and written to ``benchmarks/results/glyphs_difficulty.json`` (``--results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from kd_compile.data import load_data

RESULTS = Path(__file__).resolve().parent / "results" / "glyphs_difficulty.json"


def cnn(width: int, in_ch: int, num_classes: int) -> nn.Sequential:
    """Plain CNN: input (N, in_ch, H, W) -> logits (N, num_classes)."""
    chans = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    layers: list[nn.Module] = []
    c = in_ch
    for i, o in enumerate(chans):
        layers += [nn.Conv2d(c, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
        if i in (1, 3):
            layers.append(nn.MaxPool2d(2))
        c = o
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def train_eval(
    model: nn.Module,
    xtr: torch.Tensor,
    ytr: torch.Tensor,
    xva: torch.Tensor,
    yva: torch.Tensor,
    epochs: int,
    seed: int,
) -> tuple[float, float]:
    """Train with AdamW + one-cycle; return (val accuracy, seconds)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    bs = 128
    steps = epochs * ((len(xtr) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), bs):
            idx = perm[i : i + bs]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xva[i : i + 1024]).argmax(1) for i in range(0, len(xva), 1024)])
    return float((pred == yva).float().mean()), time.perf_counter() - t0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``x``."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 1024]).argmax(1) for i in range(0, len(x), 1024)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="glyphs")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--widths", default="7,13,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS, help="JSON to write the rows to")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch {torch.__version__}, {args.threads} threads"
    )
    t0 = time.perf_counter()
    data = load_data(args.data, seed=args.seed)
    print(
        f"data: {data.name} train={len(data.x_train)} val={len(data.x_val)} "
        f"shape={data.input_shape} classes={data.num_classes} "
        f"load={time.perf_counter() - t0:.1f}s cache_hit={data.meta.get('cache_hit')}"
    )
    xtr, ytr = data.train_tensors()
    xva, yva = data.val_tensors()
    xte, yte = data.test_tensors()
    print(f"{'width':>5} {'params':>8} {'val_acc':>8} {'test_acc':>8} {'train_s':>8}  ({args.epochs} epochs)")
    rows = []
    for w in (int(s) for s in args.widths.split(",")):
        torch.manual_seed(args.seed)
        model = cnn(w, data.input_shape[0], data.num_classes)
        params = sum(p.numel() for p in model.parameters())
        acc, secs = train_eval(model, xtr, ytr, xva, yva, args.epochs, args.seed)
        test_acc = accuracy(model, xte, yte)
        print(f"{w:>5} {params:>8} {acc:>8.4f} {test_acc:>8.4f} {secs:>8.1f}", flush=True)
        rows.append({"width": w, "params": params, "val_acc": acc, "test_acc": test_acc, "train_s": secs})
    doc = {"command": " ".join(sys.argv), "data": data.name, "epochs": args.epochs, "models": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
