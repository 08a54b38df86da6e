"""Benchmark: offline teacher cache vs online teacher, and accuracy of each distiller.

Claims checked:
  1. KD training with the offline ``TeacherCache`` is >= 1.3x faster per epoch than running the
     teacher online on every batch (Auto-KD's offline processing).
  2. Accuracy of one fixed student trained with CE only, logit KD (KL, standardised KL, DIST)
     and each feature distiller (hint, AT, NST, NST with channel subsampling, SP, CKA); and
     the per-epoch cost of exact vs channel-subsampled NST (MF-KD: about 2x cheaper).

Data: sklearn's digits (8x8 grey, 10 classes; 1400 train / 397 val), built in, no download.
Teacher and student are small CNNs defined here so the figures do not depend on other
modules. Run (CPU, one thread to stay fair to a shared machine):

    .venv/bin/python benchmarks/distill.py [--epochs 12] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from kd_compile.data import DataBundle
from kd_compile.distill import (
    DistillerSpec,
    FeaturePair,
    TeacherCache,
    TrainConfig,
    train_student,
)


class CNN(nn.Module):
    """conv3x3-BN-ReLU (8x8) -> strided conv3x3 (4x4) -> [conv3x3] x depth -> 1x1 -> head."""

    def __init__(self, width: int, depth: int = 0, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.body = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
                )
                for _ in range(depth)
            ]
        )
        self.proj = nn.Conv2d(width, 2 * width, 1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.proj(self.body(self.block(self.stem(x)))))
        return self.head(f.mean(dim=(2, 3)))


def digits_bundle() -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (
        torch.tensor(d.images * 15.0, dtype=torch.float32)
        .clamp(0, 255)
        .to(torch.uint8)
        .unsqueeze(1)
    )
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return DataBundle(
        name="digits",
        x_train=x[:1400],
        y_train=y[:1400],
        x_val=x[1400:],
        y_val=y[1400:],
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        mean=(0.3,),
        std=(0.4,),
    )


def student(seed: int = 0) -> CNN:
    torch.manual_seed(seed)
    return CNN(width=16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=float, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=2, help="student seeds averaged per distiller")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} | torch {torch.__version__} | "
        f"threads {torch.get_num_threads()} | python {platform.python_version()}"
    )
    data = digits_bundle()

    torch.manual_seed(1)
    teacher = CNN(width=48, depth=2)
    t0 = time.perf_counter()
    rt = train_student(
        teacher, data, TrainConfig(epochs=15, use_kd=False, batch_size=64, lr=1e-2, seed=1)
    )
    t_params = sum(p.numel() for p in teacher.parameters())
    s_params = sum(p.numel() for p in student().parameters())
    print(
        f"teacher: CNN(width=48, depth=2) {t_params} params, val acc {rt.val_acc:.4f} "
        f"({time.perf_counter() - t0:.1f}s); student: CNN(width=16) {s_params} params"
    )
    t0 = time.perf_counter()
    cache = TeacherCache.build(teacher, data, feature_layers=["block", "body"])
    print(f"cache build (logits + 2 feature maps, train+val): {time.perf_counter() - t0:.2f}s\n")

    # ---- 1. per-epoch time, online teacher vs offline cache -----------------------------------
    def per_epoch(
        spec: DistillerSpec | None, cache: TeacherCache | None, teacher: nn.Module | None
    ) -> float:
        cfg = TrainConfig(epochs=2, batch_size=64, tau=1.0, distiller=spec)
        times = []
        for _ in range(args.repeats):
            r = train_student(student(), data, cfg, cache, teacher=teacher)
            times.append(r.seconds / r.epochs_run)
        return statistics.median(times)

    rows = []
    for label, spec in [
        ("logit KD", None),
        ("KD + hint(block)", DistillerSpec("kl", (FeaturePair("block", "block", "hint"),))),
    ]:
        on = per_epoch(spec, None, teacher)
        off = per_epoch(spec, cache, None)
        rows.append((label, on, off))
    print(f"per-epoch seconds (median of {args.repeats}, 2-epoch runs, batch 64)")
    print(f"{'distiller':<20} {'online':>9} {'offline':>9} {'speed-up':>9}")
    for label, on, off in rows:
        print(f"{label:<20} {on:9.4f} {off:9.4f} {on / off:8.2f}x")
    print()

    # ---- 2. accuracy of one fixed student per distiller --------------------------------------
    pair = ("block", "block")
    variants: list[tuple[str, dict[str, object]]] = [
        ("CE only", {"use_kd": False}),
        ("KD (KL, tau=1)", {}),
        ("KD (KL, tau=4)", {"tau": 4.0}),
        ("KD (KL std, tau=2)", {"logit_loss": "kl_std", "tau": 2.0}),
        ("DIST", {"logit_loss": "dist"}),
    ]
    weights = {"hint": 1.0, "at": 100.0, "nst": 10.0, "nst_approx": 10.0, "sp": 10.0, "cka": 1.0}
    for kind, w in weights.items():
        layers = pair if kind != "nst" and kind != "nst_approx" else ("block", "body")
        spec = DistillerSpec("kl", (FeaturePair(layers[0], layers[1], kind, w),))
        variants.append((f"KD + {kind} (w={w:g})", {"distiller": spec}))

    print(
        f"accuracy after {args.epochs:g} epochs (batch 64, lr 1e-2, alpha 0.7), "
        f"mean over {args.seeds} student seeds"
    )
    print(f"{'variant':<26} {'val acc':>8} {'s/epoch':>8}")
    for label, kw in variants:
        accs, secs = [], []
        for seed in range(args.seeds):
            cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=1e-2, tau=1.0, seed=seed)
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **kw})
            r = train_student(student(seed), data, cfg, cache)
            accs.append(r.val_acc)
            secs.append(r.seconds / r.epochs_run)
        print(f"{label:<26} {statistics.mean(accs):8.4f} {statistics.median(secs):8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
