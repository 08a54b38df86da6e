"""Data-free distillation: synthesise training images from the teacher alone.

When the user has no data, images are optimised so that the teacher "recognises" them
(DeepInversion, Yin et al., CVPR 2020; ZeroQ, Cai et al., CVPR 2020): starting from noise,
Adam on the pixels minimises

    L = bn_weight * sum_l (||mu_l(x) - mu_l^run||_2 + ||var_l(x) - var_l^run||_2)
        + ce_weight * CE(teacher(x), y_target)
        + tv_weight * TV(x) + l2_weight * mean(x**2)

where ``mu_l``/``var_l`` are the batch statistics of the input of each BatchNorm layer ``l``
and ``mu_l^run``/``var_l^run`` the teacher's running statistics (what the teacher saw on its
real training data), ``y_target`` are assigned labels covering every class evenly, TV is the
(squared-difference) total variation, and every step sees a randomly jittered (and optionally
flipped) copy of the batch so the images do not overfit to one pixel alignment.

The result is a ``DataBundle`` like any other (uint8 images, teacher-argmax labels, a small
val split), so a teacher cache and KD training run on it unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..data import DataBundle
from ..errors import DataError

__all__ = ["BatchNormStatsLoss", "balanced_targets", "synthesize", "total_variation"]


def _bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    # BatchNorm2d and subclasses (timm's BatchNormAct2d, SyncBatchNorm) with running statistics;
    # without them there is nothing to match
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None
    ]


class BatchNormStatsLoss:
    """Context manager: hooks on every BatchNorm with running stats; ``loss()`` after a forward.

    For each layer the input ``x`` (N, C, H, W) (or (N, C)) gives the batch mean and the
    biased variance over all dims but the channel one; the loss is the sum over layers of
    ``||mean - running_mean||_2 + ||var - running_var||_2`` (DeepInversion's R_feature).

    Args:
        model: the teacher.
        first_weight: multiplies the first layer's term (DeepInversion weights it 10x: it
            pins the low-level statistics, i.e. the pixels' contrast and texture).

    Raises:
        DataError: the model has no BatchNorm layer with running statistics.
    """

    def __init__(self, model: nn.Module, first_weight: float = 1.0) -> None:
        self.layers = _bn_layers(model)
        self.first_weight = float(first_weight)
        if not self.layers:
            raise DataError(
                "data-free distillation needs a teacher with BatchNorm layers (their running "
                f"statistics are what the images are fitted to); {type(model).__name__} has "
                "none: pass --data"
            )
        self._terms: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, correction=0)
        bn: _BatchNorm = module  # type: ignore[assignment]
        assert bn.running_mean is not None and bn.running_var is not None
        self._terms.append(
            torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)
        )

    def __enter__(self) -> Self:
        for _, m in self.layers:
            self._handles.append(m.register_forward_pre_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._terms.clear()

    def loss(self) -> torch.Tensor:
        """0-d sum over the layers of the last forward pass (and resets for the next one)."""
        if not self._terms:
            raise RuntimeError("no BatchNorm layer ran: call the model inside the context first")
        terms = torch.stack(self._terms)
        # forward order: the first term belongs to the first BatchNorm the input reaches
        total = terms.sum() + (self.first_weight - 1.0) * terms[0]
        self._terms = []
        return total


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertical and horizontal neighbours of (N, C, H, W)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() if x.shape[-2] > 1 else x.new_zeros(())
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean() if x.shape[-1] > 1 else x.new_zeros(())
    return dh + dw


def balanced_targets(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """int64 (n,) labels covering the classes evenly (counts differ by at most 1), shuffled.

    Raises:
        ValueError: ``n < num_classes`` (some class would get no image).
    """
    if n < num_classes:
        raise ValueError(f"n_images ({n}) must be >= num_classes ({num_classes}) to cover every class")
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=generator)]


def _jitter(x: torch.Tensor, max_shift: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random roll by up to ``max_shift`` pixels (same for the batch) and a random h-flip."""
    if max_shift > 0:
        dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if flip and bool(torch.rand((), generator=gen) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


def synthesize(
    teacher: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    n_images: int,
    steps: int = 200,
    batch_size: int = 64,
    lr: float = 0.25,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    val_fraction: float = 0.1,
    bn_weight: float = 1.0,
    first_bn_weight: float = 1.0,
    ce_weight: float = 1.0,
    tv_weight: float = 1e-2,
    l2_weight: float = 1e-4,
    jitter: int = 1,
    flip: bool = False,
    device: str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> DataBundle:
    """Synthesise a labelled dataset from a BatchNorm teacher (DeepInversion without data).

    Images are optimised batch by batch in the teacher's normalised input space, each pixel
    kept within the range that de-normalises to [0, 1]; Adam with a cosine-decayed learning
    rate. The teacher runs in eval mode (its running statistics are the target, never
    updated) with ``requires_grad`` off; both are restored afterwards.

    Args:
        teacher: a classifier with BatchNorm layers, taking normalised (N, C, H, W).
        input_shape: (C, H, W) of the teacher's input.
        num_classes: number of teacher logits.
        n_images: images to synthesise (train + val), >= num_classes.
        steps: optimisation steps per batch.
        batch_size: images optimised together (BatchNorm statistics are batch statistics, so
            larger batches match them better).
        lr: Adam learning rate on the (normalised) pixels. 0.25 rather than 0.1: on a digits
            teacher, 100 steps at 0.1 left 25% of the images classified other than their
            target and 0.25 left 10% (lower BatchNorm loss too).
        seed: seeds the noise, targets, jitter and split: the same seed gives the same data.
        mean, std: the teacher's per-channel input normalisation (``x / 255 - mean) / std``);
            default 0.5 and 0.5 per channel. Give the teacher's own (checkpoint meta).
        val_fraction: share of the images held out as the val split (at least one image).
        bn_weight, ce_weight, tv_weight, l2_weight: loss weights (see the module docstring).
        first_bn_weight: extra multiplier of the first BatchNorm layer's term.
        jitter: maximum random shift in pixels per step (0 = off).
        flip: random horizontal flips (DeepInversion's default for natural images; off here
            by default because flipped characters change class).
        device: where to optimise.
        progress: called with the fraction of the work done, in [0, 1].

    Returns:
        DataBundle named "data-free": uint8 images, labels = the teacher's argmax on the
        quantised images, ``meta`` with ``data_free=True``, the assigned targets' agreement
        with the teacher, per-step BatchNorm loss (mean over batches), per-class counts, the
        settings and the time taken.

    Raises:
        DataError: the teacher has no BatchNorm layer.
        ValueError: bad sizes or settings.
    """
    t0 = time.perf_counter()
    c, h, w = (int(v) for v in input_shape)
    if n_images < 2:
        raise ValueError(f"n_images must be >= 2 (train and val), got {n_images}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    mean_f = tuple(float(v) for v in mean) if mean is not None else (0.5,) * c
    std_f = tuple(float(v) for v in std) if std is not None else (0.5,) * c
    if len(mean_f) != c or len(std_f) != c:
        raise ValueError(f"mean/std need {c} values, got {len(mean_f)} and {len(std_f)}")
    mean_t = torch.tensor(mean_f, dtype=torch.float32)
    std_t = torch.tensor(std_f, dtype=torch.float32)
    bn_loss = BatchNormStatsLoss(teacher, first_bn_weight)  # raises DataError before any work
    gen = torch.Generator().manual_seed(seed)
    targets = balanced_targets(n_images, num_classes, gen)
    dev = torch.device(device)
    lo = ((0.0 - mean_t) / std_t).view(1, c, 1, 1).to(dev)
    hi = ((1.0 - mean_t) / std_t).view(1, c, 1, 1).to(dev)

    was_training = teacher.training
    flags = [p.requires_grad for p in teacher.parameters()]
    orig_device = next(iter(teacher.parameters()), torch.empty(0)).device
    teacher.eval().to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)
    n_batches = math.ceil(n_images / batch_size)
    bn_history = torch.zeros(steps)
    images: list[torch.Tensor] = []
    try:
        with bn_loss:
            for b in range(n_batches):
                yb = targets[b * batch_size : (b + 1) * batch_size].to(dev)
                # start from noise around the middle of the valid range
                x0 = torch.randn(yb.shape[0], c, h, w, generator=gen)
                x = x0.to(dev).clamp(lo, hi).requires_grad_(True)
                opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9))
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
                for step in range(steps):
                    xin = _jitter(x, jitter, flip, gen)
                    logits = teacher(xin)
                    r_bn = bn_loss.loss()
                    loss = (
                        bn_weight * r_bn
                        + ce_weight * F.cross_entropy(logits, yb)
                        + tv_weight * total_variation(xin)
                        + l2_weight * xin.pow(2).mean()
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        # keep pixels representable: de-normalised they stay in [0, 1]
                        x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                    bn_history[step] += float(r_bn.detach()) * yb.shape[0] / n_images
                    if progress is not None and (step + 1) % max(1, steps // 20) == 0:
                        progress((b + (step + 1) / steps) / n_batches)
                images.append(x.detach().cpu())
    finally:
        for p, flag in zip(teacher.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        teacher.to(orig_device).train(was_training)

    x_norm = torch.cat(images)
    pixels = x_norm * std_t.view(1, c, 1, 1) + mean_t.view(1, c, 1, 1)
    x_uint8 = (pixels.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    # label what the student will see: the quantised images, re-normalised
    x_seen = (x_uint8.float() / 255.0 - mean_t.view(1, c, 1, 1)) / std_t.view(1, c, 1, 1)
    labels = _teacher_argmax(teacher, x_seen, dev)
    perm = torch.randperm(n_images, generator=gen)
    n_val = max(1, round(val_fraction * n_images))
    val_idx, train_idx = torch.sort(perm[:n_val]).values, torch.sort(perm[n_val:]).values
    counts = torch.bincount(labels, minlength=num_classes)
    meta: dict[str, Any] = {
        "data_free": True,
        "source": "synthesised from the teacher (DeepInversion: BatchNorm statistics + CE)",
        "n_images": n_images,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "weights": {
            "bn": bn_weight,
            "first_bn": first_bn_weight,
            "ce": ce_weight,
            "tv": tv_weight,
            "l2": l2_weight,
        },
        "jitter": jitter,
        "flip": flip,
        "target_agreement": float((labels == targets).float().mean()),
        "class_counts": counts.tolist(),
        "bn_loss_history": bn_history.tolist(),
        "seconds": time.perf_counter() - t0,
    }
    if progress is not None:
        progress(1.0)
    return DataBundle(
        name="data-free",
        x_train=x_uint8[train_idx],
        y_train=labels[train_idx],
        x_val=x_uint8[val_idx],
        y_val=labels[val_idx],
        num_classes=num_classes,
        class_names=[str(i) for i in range(num_classes)],
        mean=mean_f,
        std=std_f,
        meta=meta,
    )


def _teacher_argmax(teacher: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    was_training = teacher.training
    orig = next(iter(teacher.parameters()), torch.empty(0)).device
    teacher.eval().to(device)
    try:
        with torch.inference_mode():
            out = [teacher(x[i : i + 512].to(device)).argmax(dim=1).cpu() for i in range(0, x.shape[0], 512)]
    finally:
        teacher.to(orig).train(was_training)
    return torch.cat(out).to(torch.int64)
