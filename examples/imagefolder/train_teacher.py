"""Train a timm ResNet teacher on the example ImageFolder and write ``teacher.pt``.

``timm.create_model('resnet10t', num_classes=K, pretrained=False)`` (4.9M parameters at 10
classes) trained from scratch with cross-entropy for a few epochs at 32 px, on the CPU, through
kd-compile's streamed loader (``kd_compile.data.stream``: PIL decoding in ``DataLoader`` workers,
random resized crops). The checkpoint is a training dict as timm's and most training scripts
write it, ``{"arch", "model": state_dict, "num_classes", "input_size", "mean", "std", ...}``:
kd-compile reads the architecture, the input size and the normalisation from it and loads the
weights with ``torch.load(weights_only=True)`` (no ``--trust-checkpoint``).

    python examples/imagefolder/train_teacher.py [--data examples/imagefolder/data] [--epochs 10] [--size 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch

from kd_compile.data.stream import StreamAugment, open_stream
from kd_compile.distill import TrainConfig, train_student
from kd_compile.distill.topk_cache import streamed_accuracy

HERE = Path(__file__).resolve().parent
ARCH = "resnet10t"
#: The teacher's input resolution: the 64-px files are resized to it (bilinear) as they are read,
#: for the teacher and, through the checkpoint's ``input_size``, for kd-compile's students. 32 px
#: keeps this CPU example in minutes; set 64 on a GPU.
SIZE = 32


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE / "teacher.pt")
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--size", type=int, default=SIZE, help="teacher input side (px), in the checkpoint")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    # characters are not mirror-symmetric: crops, no flips
    augment = StreamAugment(scale=(0.6, 1.0), hflip=False)
    data = open_stream(args.data, image_size=args.size, channels=3, augment=augment)
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=data.num_classes, pretrained=False)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=3e-3,
        use_kd=False,
        device=args.device,
        seed=0,
        eval_every_epoch=True,
    )
    res = train_student(model, data, cfg)
    for h in res.history:
        print(
            f"epoch {h['epoch']:.0f}: loss {h['loss']:.3f}, train {h['train_acc']:.1%}, val {h['val_acc']:.1%}, "
            f"{h['images_per_s']:.0f} images/s"
        )
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    test_acc = streamed_accuracy(model, data, "test")
    torch.save(
        {
            "arch": ARCH,
            "model": model.state_dict(),
            "num_classes": data.num_classes,
            "class_names": data.class_names,
            "input_size": [3, args.size, args.size],
            "mean": list(data.mean),
            "std": list(data.std),
            "epoch": args.epochs,
            "val_acc": res.val_acc,
            "test_acc": test_acc,
        },
        args.out,
    )
    out = {
        "arch": ARCH,
        "params": sum(p.numel() for p in model.parameters()),
        "val_acc": res.val_acc,
        "test_acc": test_acc,
        "seconds": time.perf_counter() - t0,
        "out": str(args.out),
    }
    print(
        f"{ARCH}: {out['params'] / 1e6:.2f}M params, val {res.val_acc:.1%}, test {test_acc:.1%}, "
        f"{out['seconds']:.0f}s -> {args.out}"
    )
    return out


if __name__ == "__main__":
    main()
