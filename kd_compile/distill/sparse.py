"""Dynamic sparse student training (Auto-KD's acceleration: a random mask, then prune-and-regrow).

Auto-KD (section 2.3) trains search-time students sparse: "we first set up a random mask to force
certain weights of the student model to be zero and then configure a dynamic strategy to
preserve the distillation gains". ``DynamicSparsity`` does that with RigL's update rule:

* at the start, each masked weight tensor keeps a random ``1 - sparsity`` of its entries
  (uniform sparsity per tensor; the first weight tensor, the stem that sees the raw input, stays
  dense, as in RigL);
* after every optimiser step the masked entries are set back to zero;
* every ``update_every`` steps, until ``stop_frac`` of training, each tensor drops the
  ``k`` active entries of smallest magnitude and regrows the ``k`` inactive entries of largest
  dense gradient (regrown weights start at zero, their AdamW moments are reset);
  ``k = drop_frac * (1 + cos(pi * t / T)) / 2 * active``, RigL's cosine decay.

The point on a GPU with sparse kernels is memory and compute; with the dense kernels PyTorch
uses (this project's CPU path included) a masked student costs as much per step as a dense one,
so here sparsity is a fidelity knob of the proxy training, not a speed-up.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DynamicSparsity"]


class DynamicSparsity:
    """Masks and RigL updates for one training run (see the module docstring).

    Args:
        model: the student; its weight tensors (dim >= 2) except the first are masked.
        sparsity: fraction of zero entries per masked tensor, in [0, 1).
        total_steps: optimiser steps of the run (for the update schedule).
        seed: seed of the initial random masks.
        update_every: steps between mask updates (0: static random mask).
        drop_frac: initial fraction of active entries replaced per update.
        stop_frac: no updates after this fraction of the steps.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        total_steps: int,
        *,
        seed: int = 0,
        update_every: int = 50,
        drop_frac: float = 0.3,
        stop_frac: float = 0.75,
    ) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = float(sparsity)
        self.total = max(1, int(total_steps))
        self.update_every = int(update_every)
        self.drop_frac = float(drop_frac)
        self.stop_frac = float(stop_frac)
        weights = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]
        self.params: list[tuple[str, nn.Parameter]] = weights[1:]
        self.masks: dict[str, torch.Tensor] = {}
        self.updates = 0
        gen = torch.Generator().manual_seed(int(seed))
        for name, p in self.params:
            keep = max(1, round((1.0 - self.sparsity) * p.numel()))
            order = torch.randperm(p.numel(), generator=gen)
            mask = torch.zeros(p.numel(), dtype=torch.bool)
            mask[order[:keep]] = True
            self.masks[name] = mask.view_as(p).to(p.device)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked entries."""
        for name, p in self.params:
            p.mul_(self.masks[name])

    def density(self) -> float:
        """Fraction of active entries over the masked tensors."""
        active = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return active / total if total else 1.0

    @torch.no_grad()
    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Call after ``optimizer.step()`` (gradients still in ``.grad``); ``step`` is 1-based."""
        if self.update_every > 0 and step % self.update_every == 0 and step < self.stop_frac * self.total:
            frac = self.drop_frac * (1 + math.cos(math.pi * step / (self.stop_frac * self.total))) / 2
            for name, p in self.params:
                if p.grad is not None:
                    self._update(name, p, frac, optimizer)
            self.updates += 1
        self.apply()

    def _update(self, name: str, p: nn.Parameter, frac: float, optimizer: torch.optim.Optimizer) -> None:
        mask = self.masks[name].view(-1)
        active = int(mask.sum())
        k = min(int(frac * active), mask.numel() - active)
        if k < 1:
            return
        # reshape, not view: weights may be channels-last
        w = p.detach().reshape(-1).abs()
        g = p.grad.detach().reshape(-1).abs()
        # drop: the k active entries of smallest magnitude
        drop = torch.where(mask, w, torch.full_like(w, math.inf)).topk(k, largest=False).indices
        # grow: the k inactive entries (before dropping) of largest gradient
        grow = torch.where(mask, torch.full_like(g, -math.inf), g).topk(k).indices
        mask[drop] = False
        mask[grow] = True
        regrown = torch.zeros_like(mask)
        regrown[grow] = True
        regrown = regrown.view(p.shape)
        p[regrown] = 0.0
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            buf = state.get(key)
            if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                buf[regrown] = 0.0
