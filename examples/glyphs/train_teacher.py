"""Train the bundled glyphs teacher and write ``examples/glyphs/teacher.pt``.

The teacher is a small ResNet, the kind of network users distil from: a 3x3 stem, then stages of
ResNet basic blocks (two 3x3 convs and a 1x1 projection shortcut where the shape changes, timm's
``byobnet.BasicBlock``), global pooling and a linear classifier. It is built from kd-compile's
``trade`` space (every stage of block type ``residual``, no Transformer, ReLU), so the
checkpoint is a kd-compile checkpoint: weights plus space and config, loadable with
``torch.load(weights_only=True)`` and by ``kd_compile.teacher.load_teacher`` without
``--trust-checkpoint``. It is trained with cross-entropy on the built-in ``glyphs`` data (62
characters rendered with matplotlib's fonts) and carries a data hint, so
``kd-compile examples/glyphs/teacher.pt`` runs without ``--data``.

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

# The space the teacher is built from: TRADE's stride rule (stride-2 stem at 20 px, then two
# stride-2 stages: 10x10 -> 10x10 -> 5x5 -> 3x3), widths doubled so ResNet channel counts are
# choices, ReLU as in ResNets, no Transformer.
TEACHER_SPACE = {"max_stages": 4, "width_scale": 2.0, "transformer": False, "act": "relu"}
# ResNet-18's layout on a small image: four stages of two basic blocks (32, 32, 64, 96
# channels; 16 3x3 convs in the blocks, 2 1x1 projection shortcuts, 19 convs with the stem). The
# parameters sit in the low-resolution stages, as in ResNets; its many small kernels make it a
# realistic latency reference on a GPU at batch 1.
TEACHER_CONFIG = {
    "stem_width": 32,
    **{f"s{i}_type": "residual" for i in (1, 2, 3, 4)},
    **{f"s{i}_depth": 2 for i in (1, 2, 3, 4)},
    "s1_width": 32,
    "s2_width": 32,
    "s3_width": 64,
    "s4_width": 96,
    "head_width": 0,
}
DATA = "glyphs:size=20,train=12000,val=3000,seed=0"


def main(argv: list[str] | None = None) -> dict:
    """Train the teacher and write its checkpoint.

    Returns:
        ``{"val_acc", "params", "seconds", "out", "arch"}``.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=15)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "teacher.pt")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    data = load_data(args.data, seed=args.seed)
    space = create_space("trade", input_shape=data.input_shape, num_classes=data.num_classes, **TEACHER_SPACE)
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
    arch = space.describe(config)
    meta = {
        "data": data.hint(),
        "normalize": {"mean": list(data.mean), "std": list(data.std)},
        "accuracy": res.val_acc,
        "class_names": list(data.class_names),
        "trained_epochs": args.epochs,
        "description": f"glyphs ResNet teacher ({arch}) trained by examples/glyphs/train_teacher.py",
    }
    save_checkpoint(
        args.out,
        space="trade",
        space_kwargs=space_kwargs(space),
        config=config,
        state_dict=model.state_dict(),
        meta=meta,
    )
    seconds = time.perf_counter() - t0
    summary = {"val_acc": res.val_acc, "params": params, "seconds": seconds, "out": str(args.out), "arch": arch}
    print(f"teacher {arch}: {params:,} params, val accuracy {res.val_acc:.2%}, {seconds:.0f} s -> {args.out}")
    return summary


if __name__ == "__main__":
    main()
