"""Train the bundled glyphs teacher and write ``examples/glyphs/teacher.pt``.

The teacher is a plain CNN from kd-compile's ``cnn`` space, trained with cross-entropy on the
built-in ``glyphs`` data (62 characters rendered with matplotlib's fonts). The checkpoint is a
kd-compile checkpoint: weights plus config, loadable with ``torch.load(weights_only=True)``, and
it carries a data hint so ``kd-compile examples/glyphs/teacher.pt`` runs without ``--data``.

    python examples/glyphs/train_teacher.py [--epochs 15] [--out examples/glyphs/teacher.pt]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from kd_compile.data import load_data
from kd_compile.distill import TrainConfig, train_student
from kd_compile.export import space_kwargs
from kd_compile.students import create_space
from kd_compile.teacher import save_checkpoint

HERE = Path(__file__).resolve().parent

# A four-layer CNN whose parameters sit in its low-resolution layers (at 20 px: 20, 20, 10 and
# 5 pixels wide): ~360K parameters for ~30 MFLOPs, over-parameterised on purpose so that a student
# with a tenth of its parameters can come close to it when distilled, and cheap to run so the
# example fits in a few CPU minutes.
TEACHER_CONFIG = {"depth": 4, "w1": 32, "w2": 32, "w3": 128, "w4": 256}
DATA = "glyphs:size=20,train=12000,val=3000,seed=0"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=15)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "teacher.pt")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    data = load_data(args.data, seed=args.seed)
    space = create_space("cnn", input_shape=data.input_shape, num_classes=data.num_classes, max_depth=4)
    config = space.validate({**space.default(), **TEACHER_CONFIG})
    torch.manual_seed(args.seed)
    model = space.build(config)
    res = train_student(
        model,
        data,
        TrainConfig(epochs=args.epochs, use_kd=False, seed=args.seed, lr=3e-3, label_smoothing=0.1),
        progress=lambda f: print(f"\rtraining teacher {100 * f:5.1f}%", end="", flush=True),
    )
    print()
    params = sum(p.numel() for p in model.parameters())
    meta = {
        "data": data.hint(),
        "normalize": {"mean": list(data.mean), "std": list(data.std)},
        "accuracy": res.val_acc,
        "class_names": list(data.class_names),
        "trained_epochs": args.epochs,
        "description": "glyphs teacher trained by examples/glyphs/train_teacher.py",
    }
    save_checkpoint(
        args.out, space="cnn", space_kwargs=space_kwargs(space), config=config, state_dict=model.state_dict(), meta=meta
    )
    summary = {"val_acc": res.val_acc, "params": params, "seconds": time.perf_counter() - t0, "out": str(args.out)}
    print(f"teacher: {params:,} params, val accuracy {res.val_acc:.2%}, {summary['seconds']:.0f} s -> {args.out}")
    return summary


if __name__ == "__main__":
    main()
