"""Running a trained model over in-memory tensors: its outputs and its top-1 accuracy.

Shared by the trainer (per-epoch and final evaluation), the teacher cache's users, Auto-KD's
teacher knowledge and data-free synthesis. Eval mode, ``torch.inference_mode``, large batches;
the model's train/eval mode is restored afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["evaluate", "predict_logits"]


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Model outputs over ``x`` in eval mode, without autograd.

    Args:
        model: the network; its train/eval mode is restored afterwards.
        x: normalised float (N, C, H, W) (e.g. ``data.val_tensors()[0]``).
        batch_size: inference batch size.
        device: where to run; default: the model's device.

    Returns:
        float32 (N, K) on the CPU.
    """
    if not torch.is_floating_point(x):
        raise TypeError(
            f"predict_logits expects normalised float inputs, got {x.dtype}; use data.normalize(x) / data.val_tensors()"
        )
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    outs: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, x.shape[0], batch_size):
                outs.append(model(x[start : start + batch_size].to(dev)).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.empty(0, 0)
    return torch.cat(outs)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on normalised ``x`` (N, C, H, W), labels ``y`` (N,)."""
    if x.shape[0] == 0:
        return float("nan")
    logits = predict_logits(model, x, batch_size, device)
    return float((logits.argmax(dim=1) == y.cpu()).float().mean())
