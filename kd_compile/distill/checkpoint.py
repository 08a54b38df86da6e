"""A training's state at each epoch's end, kept on disk so a killed training resumes where it
stopped (``TrainConfig.checkpoint``; kd-compile gives one to each final training).

What is kept is everything the next step depends on: the weights of the student and of any
adapters, the optimiser, the LR schedule, the AMP gradient scaler, the epoch log (history, the
best epoch's weights under early stopping), the RNG states (torch's, CUDA's, the batch order's)
and the wall-clock time spent. A training resumed at an epoch's end from this state takes the
same steps as one never stopped, so on the CPU (deterministic kernels) it ends with the same
weights bit for bit. The file is written atomically (a temporary file renamed over it; a write that fails, on a full
disk, leaves the last one and the training goes on without more) and read with
``torch.load(weights_only=True)``; a file written for another training (another config,
architecture, subset or schedule: ``key``) is ignored, and the training starts afresh.

Not kept, so left out: trainings with dynamic sparsity or an ``ExtraLoss`` without a
``checkpoint_key`` (their state lives outside the modules); they start afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import write_failure
from .train_config import TrainConfig

__all__ = ["EpochCheckpoint", "remove_saved", "save_atomically"]


class EpochCheckpoint:
    """The epoch-end state of one training, at ``cfg.checkpoint``.

    Args:
        cfg: the training's config (its ``checkpoint`` path; every other field but the time
            limit goes into the key).
        model: the student (its parameters' names, shapes and dtypes go into the key; its
            adapters follow from it and ``cfg``).
        shape: what else fixes the step sequence (subset size, batch size, total steps, the
            extra loss term).
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, shape: tuple[Any, ...]) -> None:
        assert cfg.checkpoint is not None
        self.path = Path(cfg.checkpoint)
        params = [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
        body = repr((dataclasses.replace(cfg, checkpoint=None, max_seconds=None), params, shape))
        self.key = hashlib.sha256(body.encode()).hexdigest()[:24]
        self.error: str | None = None  # why a checkpoint could not be written

    def load(self) -> dict[str, Any] | None:
        """The state kept for this training, or None (no file, another training's, unreadable)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (a torn or foreign file: start afresh)
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (plus the key) atomically. A checkpoint is a safety net, never worth
        the training: when it cannot be written (a full disk), the previous one stays, ``error``
        says why, and no further one is attempted."""
        if self.error is None:
            self.error = save_atomically({**state, "key": self.key}, self.path)


def save_atomically(obj: Any, path: Path) -> str | None:
    """``torch.save`` ``obj`` to ``path`` through a temporary file (``.<name>.tmp``), fsynced and
    renamed over it, so ``path`` is either the old file or the whole new one.

    Returns:
        None, or why it could not be written (a full disk: ``errors.write_failure``); the
        temporary file is then removed and ``path`` left as it was.
    """
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save's short write is a RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return write_failure(exc) or f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def remove_saved(path: Path) -> None:
    """Remove a file ``save_atomically`` wrote, and the temporary file a killed write of it left."""
    for p in (path, _temporary(path)):
        p.unlink(missing_ok=True)


def rng_state(device: torch.device, gen: torch.Generator | None) -> dict[str, Any]:
    """Torch's RNG state (and CUDA's on a CUDA device, and ``gen``'s)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "gen": None if gen is None else gen.get_state(),
    }


def set_rng_state(state: dict[str, Any], device: torch.device, gen: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    if gen is not None and state.get("gen") is not None:
        gen.set_state(state["gen"])
