"""What one student training is told and what it reports: ``TrainConfig``, ``TrainResult``,
and the ``ExtraLoss`` protocol through which a further loss term plugs into the trainer.

Kept apart from the loop (``trainer.py``) so that code which only configures or reads trainings
(the API, executors, reports) does not need the loop's internals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from .distiller import DistillerSpec

__all__ = ["ExtraLoss", "TrainConfig", "TrainResult"]


@dataclass(frozen=True)
class TrainConfig:
    """How one student is trained.

    Attributes:
        epochs: passes over the (sub)set; fractional values allowed (0.5 = half the steps of
            one epoch).
        data_fraction: fraction of the training set used, a fixed stratified subset chosen by
            ``seed`` (the same for every candidate with the same seed).
        batch_size: training batch size (capped at the subset size).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay, applied to weights (dim >= 2) only, not to biases and
            normalisation parameters.
        alpha: KD weight; loss = (1 - alpha) * CE + alpha * KD (see ``KDLoss``).
        tau: KD temperature.
        use_kd: False trains with CE only (the no-KD baseline; also used to train teachers).
        seed: seeds the subset, the batch order, dropout and any other randomness.
        device: "cpu", "cuda", ...
        label_smoothing: CE label smoothing.
        orth_weight: weight of TRADE's orthogonality penalty (0 = off).
        early_stop_patience: stop after this many epochs without a val-accuracy improvement and
            restore the best weights (evaluates val after every epoch); None = off.
        max_seconds: wall-clock budget; training stops at the first step past it (results are
            then no longer reproducible across machines).
        logit_loss: "kl" (Hinton), "kl_std" (logit standardisation), "dist" (DIST).
        warmup_frac: fraction of the steps used for linear learning-rate warm-up before the
            cosine decay.
        eval_every_epoch: record val accuracy in the history after every epoch.
        channels_last: train 4-D image models in the channels-last memory format (oneDNN and
            cuDNN run convolutions, depthwise ones above all, markedly faster in it; measured
            1.4-1.6x per step for TRADE students on this project's CPU machine).
        distiller: feature distillation on layer pairs (its ``logit`` replaces
            ``logit_loss``); teacher features come from the cache (``TeacherCache.build(...,
            feature_layers=spec.teacher_layers)``) or from the online teacher.
        sparsity: dynamic sparse training (``sparse.DynamicSparsity``: random mask, RigL
            prune-and-regrow every ``sparse_update_every`` steps), the fraction of zero weights;
            0 = dense. A fidelity knob of proxy trainings (Auto-KD); no speed-up with dense
            kernels.
        sparse_update_every: steps between mask updates (0: a static random mask).
        amp: mixed precision: "auto" (bf16 autocast on a CUDA device that supports it, else
            fp16 with a gradient scaler; off on the CPU, which keeps CPU runs deterministic),
            "off", "fp16" (CUDA only) or "bf16".
        compile: run the student's forward through ``torch.compile`` (worth it on a GPU for
            long trainings; the first steps pay the compilation).
        checkpoint: a file where the training keeps its state at each epoch's end, and resumes
            from when it holds this training's state (``checkpoint.EpochCheckpoint``; not with
            ``sparsity`` or an ``ExtraLoss`` without a ``checkpoint_key``); None = none.
    """

    epochs: float = 2
    data_fraction: float = 1.0
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    alpha: float = 0.7
    tau: float = 4.0
    use_kd: bool = True
    seed: int = 0
    device: str = "cpu"
    label_smoothing: float = 0.0
    orth_weight: float = 0.0
    early_stop_patience: int | None = None
    max_seconds: float | None = None
    logit_loss: str = "kl"
    warmup_frac: float = 0.1
    eval_every_epoch: bool = False
    channels_last: bool = True
    distiller: DistillerSpec | None = None
    sparsity: float = 0.0
    sparse_update_every: int = 50
    amp: str = "auto"
    compile: bool = False
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.amp not in ("auto", "off", "fp16", "bf16"):
            raise ValueError(f"amp must be auto, off, fp16 or bf16, got {self.amp!r}")
        if isinstance(self.distiller, dict):
            object.__setattr__(self, "distiller", DistillerSpec.from_dict(self.distiller))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        # a nested distiller dict is turned back into a DistillerSpec by __post_init__
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """What one training run produced (the model itself is trained in place).

    Attributes:
        val_acc: top-1 accuracy on the full val set at the end (the best epoch's when early
            stopping restored it), in [0, 1].
        train_acc: running top-1 accuracy on the training batches of the last (possibly
            partial) epoch, in train mode (no extra forward pass is spent on it).
        epochs_run: steps done / steps per epoch (fractional).
        steps: optimiser steps done.
        seconds: wall-clock time of the whole call, final evaluation included.
        history: one dict per (possibly partial) epoch: epoch, step, loss, train_acc, lr,
            seconds, and val_acc where evaluated.
        stopped: why training ended: "done", "early_stop" or "time".
        resumed_at: the epoch it resumed at from ``TrainConfig.checkpoint`` (0: from the start).
        checkpoint_error: why its epoch checkpoints stopped being written (a full disk), if so.
    """

    val_acc: float
    train_acc: float
    epochs_run: float
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "done"
    resumed_at: float = 0.0
    checkpoint_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ExtraLoss(Protocol):
    """A loss term on captured student features, trained with the student.

    This is how Auto-KD's searched distillers (``autokd.train_with_distiller``) plug into
    ``train_student`` without a loop of their own. ``train_student`` captures
    ``student_layers``, probes their shapes once in eval mode, calls ``setup(shapes, device)``
    for the term's trainable part (adapters: optimised with the student, dropped after), then
    adds ``term(features, index)`` to every step's loss, ``index`` being the batch's sample
    indices into ``data.x_train`` (so the term can look up cached teacher features).

    A term whose only changing state is the module ``setup`` returns may say so with a
    ``checkpoint_key`` attribute (a string naming the term: its kind and settings); a training
    with it then keeps epoch checkpoints (``TrainConfig.checkpoint``), else it does not.
    """

    student_layers: Sequence[str]

    def setup(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> nn.Module: ...

    def __call__(self, features: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor: ...
