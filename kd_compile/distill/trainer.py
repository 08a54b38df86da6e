"""Budgeted, seeded knowledge-distillation training of one student.

Built for the search loop: ~10 small candidates and a final student on 2 CPU cores within
minutes. So the loop has no DataLoader (the data are in-memory tensors, normalised once, and
batches are index slices), teacher logits come from the offline ``TeacherCache`` (indexed by
sample index), evaluation runs under ``torch.inference_mode`` in large batches, and the whole
run is reproducible: the same seed gives the same subset, the same batch order and, on CPU
with the same thread count, bit-identical weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..data import DataBundle
from ..errors import CandidateError
from .cache import TeacherCache
from .losses import DistillerSpec, FeatureCapture, FeatureDistiller, KDLoss
from .sparse import DynamicSparsity

__all__ = [
    "ExtraLoss",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "orthogonal_modules",
    "orthogonality_penalty",
    "predict_logits",
    "stratified_subset",
    "train_student",
]

# class names (lower-cased substrings) of transformer feed-forward blocks whose Linear layers
# get the orthogonality penalty: timm's Mlp/GluMlp/SwiGLU, torchvision's MLPBlock, and the
# common hand-written names
_FFN_NAMES = ("mlp", "ffn", "feedforward", "feed_forward", "swiglu")


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
    """

    val_acc: float
    train_acc: float
    epochs_run: float
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "done"

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
    """

    student_layers: Sequence[str]

    def setup(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> nn.Module: ...

    def __call__(self, features: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor: ...


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A fixed, class-stratified subset of sample indices.

    Each class keeps ``round(fraction * count)`` of its samples (at least one), drawn by a
    generator seeded with ``seed`` only, so every candidate trained with the same seed sees
    exactly the same samples.

    Args:
        labels: int64 (N,).
        fraction: in (0, 1]; 1.0 returns all indices.
        seed: subset seed.

    Returns:
        int64 (n,) sorted indices into ``labels``.
    """
    n = labels.shape[0]
    if fraction >= 1.0:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    picked: list[torch.Tensor] = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c, as_tuple=True)[0]
        k = max(1, round(fraction * members.numel()))
        picked.append(members[torch.randperm(members.numel(), generator=gen)[:k]])
    return torch.sort(torch.cat(picked)).values


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


def orthogonal_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers TRADE regularises: 1x1 convolutions and Linear layers of transformer FFNs.

    Selected: ``nn.Conv2d`` with a 1x1 kernel and ``groups == 1`` (depthwise 1x1 filters have
    a single input and no matrix to orthogonalise); ``nn.Linear`` whose parent module is a
    feed-forward block (class name containing mlp/ffn/feedforward/swiglu, as in timm's ``Mlp``)
    or is ``linear1``/``linear2`` of ``nn.TransformerEncoderLayer``/``DecoderLayer``; and any
    module with a weight whose attribute ``kd_orthogonal`` is True (an opt-in for student
    spaces). TRADE found the penalty on 3x3 convs and classifier heads to hurt, so those are
    left out.
    """
    chosen: list[tuple[str, nn.Module]] = []
    for parent_name, parent in model.named_modules():
        pname = type(parent).__name__.lower()
        is_ffn = any(k in pname for k in _FFN_NAMES)
        is_tlayer = isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
        for child_name, child in parent.named_children():
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if getattr(child, "kd_orthogonal", False) and isinstance(getattr(child, "weight", None), torch.Tensor):
                chosen.append((full, child))
            elif isinstance(child, nn.Conv2d):
                if tuple(child.kernel_size) == (1, 1) and child.groups == 1:
                    chosen.append((full, child))
            elif isinstance(child, nn.Linear) and (is_ffn or (is_tlayer and child_name in ("linear1", "linear2"))):
                chosen.append((full, child))
    return chosen


def _orth_term(weight: torch.Tensor) -> torch.Tensor:
    w = weight.reshape(weight.shape[0], -1)
    # the smaller Gram matrix: W W^T when rows <= cols (rows can be orthonormal), else W^T W
    gram = w @ w.t() if w.shape[0] <= w.shape[1] else w.t() @ w
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return (gram - eye).pow(2).sum()


def orthogonality_penalty(model: nn.Module, modules: list[tuple[str, nn.Module]] | None = None) -> torch.Tensor:
    """TRADE's orthogonality regulariser: mean over layers of ``||W W^T - I||_F^2``.

    Each weight is reshaped to (C_out, C_in * kH * kW) and the smaller of its two Gram
    matrices is compared with the identity (TRADE Eq. 4, averaged over ``|W|`` layers).

    Args:
        model: the student.
        modules: the layers to use; default ``orthogonal_modules(model)`` (pass the list to
            avoid walking the module tree every step).

    Returns:
        0-d tensor (0 when there is no such layer), differentiable in the weights.
    """
    mods = orthogonal_modules(model) if modules is None else modules
    if not mods:
        p = next(iter(model.parameters()), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    terms = [_orth_term(m.weight) for _, m in mods]  # type: ignore[arg-type]
    return torch.stack(terms).mean()


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``TrainConfig.amp`` on ``device`` (None: full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' or 'off' on the CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        # biases and norm scales/shifts are 1-D: decaying them only hurts small students
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _lr_lambda(total: int, warmup_frac: float) -> Callable[[int], float]:
    warm = max(1, round(warmup_frac * total)) if warmup_frac > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        span = max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))

    return factor


def train_student(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    cache: TeacherCache | None = None,
    progress: Callable[[float], None] | None = None,
    *,
    teacher: nn.Module | None = None,
    extra_loss: ExtraLoss | None = None,
) -> TrainResult:
    """Train ``model`` in place with KD (or CE only) under a step/time budget.

    AdamW with linear warm-up then cosine decay over the total number of steps
    (``round(epochs * steps_per_epoch)``, last partial batch dropped so BatchNorm never sees
    a batch of one). Teacher logits come from ``cache`` (offline, indexed by sample index, so
    the cache must be aligned with ``data.x_train``) or, if no cache is given, from running
    ``teacher`` on each batch (online; slower, kept for comparison).

    Args:
        model: the student (any device; moved to ``cfg.device``).
        data: the bundle; training uses a stratified ``cfg.data_fraction`` of ``x_train``,
            validation the whole ``x_val``.
        cfg: the training configuration.
        cache: offline teacher outputs (``TeacherCache.build(teacher, data)``).
        progress: called with the fraction of steps done, in [0, 1] (about 100 calls a run).
        teacher: online teacher, used when ``cache`` is None or lacks the teacher features
            that ``cfg.distiller`` needs.
        extra_loss: a further loss term on student features (see ``ExtraLoss``); added only
            when ``cfg.use_kd``.

    Returns:
        TrainResult; the model is left trained, in eval mode, on ``cfg.device``.

    Raises:
        CandidateError: the loss became NaN or infinite.
        ValueError: ``use_kd`` without a cache or teacher, or a cache not aligned with data.
    """
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    if cfg.use_kd and cache is None and teacher is None:
        raise ValueError("use_kd=True needs a TeacherCache (or an online teacher=)")
    if cfg.use_kd and cache is not None:
        cache.check_aligned(data)

    fork_devices = [device] if device.type == "cuda" else []
    teacher_mode = teacher.training if teacher is not None else False
    try:
        with torch.random.fork_rng(devices=fork_devices):
            # seeding here makes dropout & co. reproducible without leaking into the caller's RNG
            torch.manual_seed(cfg.seed)
            extra = extra_loss if cfg.use_kd else None
            return _train(model, data, cfg, cache, progress, teacher, device, t0, extra)
    finally:
        if teacher is not None:
            teacher.train(teacher_mode)  # the online teacher ran in eval mode


def _train(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    cache: TeacherCache | None,
    progress: Callable[[float], None] | None,
    teacher: nn.Module | None,
    device: torch.device,
    t0: float,
    extra: ExtraLoss | None = None,
) -> TrainResult:
    idx = stratified_subset(data.y_train, cfg.data_fraction, cfg.seed)
    # normalise the subset once; every step is then an index gather on a ready tensor
    x = data.normalize(data.x_train[idx]).to(device)
    y = data.y_train[idx].to(device)
    x_val = data.normalize(data.x_val)
    if cfg.channels_last and x.dim() == 4:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        x_val = x_val.contiguous(memory_format=torch.channels_last)
    spec = cfg.distiller if cfg.use_kd else None
    s_layers = list(spec.student_layers) if spec is not None else []
    if extra is not None:
        s_layers += [n for n in extra.student_layers if n not in s_layers]
    t_layers = spec.teacher_layers if spec is not None else []
    t_logits: torch.Tensor | None = None
    t_feats: dict[str, torch.Tensor] = {}
    online = None
    if cfg.use_kd:
        cached_feats = cache is not None and all(n in cache.train_features for n in t_layers)
        if cache is not None and cached_feats:
            # one gather out of the (possibly memory-mapped) cache, then it lives in RAM
            t_logits = cache.train_logits[idx].float().to(device)
            t_feats = {n: cache.train_features[n][idx].float().to(device) for n in t_layers}
        elif teacher is not None:
            online = teacher.to(device).eval()
        else:
            raise ValueError(
                f"the teacher cache holds no features for {t_layers}: build it with "
                "feature_layers=spec.teacher_layers, or pass teacher= for online distillation"
            )

    model.to(device).train()
    n = int(x.shape[0])
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    stack = contextlib.ExitStack()
    s_cap = stack.enter_context(FeatureCapture(model, s_layers)) if s_layers else None
    t_cap = stack.enter_context(FeatureCapture(online, t_layers)) if t_layers and online is not None else None
    distiller: FeatureDistiller | None = None
    trainable: nn.Module = model
    with stack:
        extra_module: nn.Module | None = None
        if (spec is not None and spec.pairs) or extra is not None:
            assert s_cap is not None
            s_shapes, t_shapes = _probe_shapes(model, online, x, t_feats, s_cap, t_cap)
            # adapters are trained with the student (and dropped after)
            parts: list[nn.Module] = [model]
            if spec is not None and spec.pairs:
                distiller = FeatureDistiller(spec, s_shapes, t_shapes).to(device)
                parts.append(distiller)
            if extra is not None:
                extra_module = extra.setup({n: s_shapes[n] for n in extra.student_layers}, device)
                parts.append(extra_module.to(device))
            trainable = nn.ModuleList(parts)
        return _loop(
            model,
            cfg,
            x,
            y,
            x_val,
            data.y_val,
            t_logits,
            t_feats,
            online,
            s_cap,
            t_cap,
            distiller,
            trainable,
            bs,
            steps_per_epoch,
            total,
            progress,
            device,
            t0,
            extra,
            idx.to(device),
        )


def _probe_shapes(
    model: nn.Module,
    online: nn.Module | None,
    x: torch.Tensor,
    t_feats: dict[str, torch.Tensor],
    s_cap: FeatureCapture,
    t_cap: FeatureCapture | None,
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Student and teacher feature shapes (without the batch dimension) from a 2-sample
    eval-mode pass (eval: the probe must not move BatchNorm running statistics)."""
    was_training = model.training
    model.eval()
    t_shapes: dict[str, tuple[int, ...]] = {}
    with torch.no_grad():
        model(x[:2])
        s_shapes = {k: tuple(v.shape[1:]) for k, v in s_cap.features.items()}
        if t_feats:
            t_shapes = {k: tuple(v.shape[1:]) for k, v in t_feats.items()}
        elif online is not None and t_cap is not None:
            online(x[:2])
            t_shapes = {k: tuple(v.shape[1:]) for k, v in t_cap.features.items()}
    model.train(was_training)
    return s_shapes, t_shapes


def _loop(
    model: nn.Module,
    cfg: TrainConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    t_logits: torch.Tensor | None,
    t_feats: dict[str, torch.Tensor],
    online: nn.Module | None,
    s_cap: FeatureCapture | None,
    t_cap: FeatureCapture | None,
    distiller: FeatureDistiller | None,
    trainable: nn.Module,
    bs: int,
    steps_per_epoch: int,
    total: int,
    progress: Callable[[float], None] | None,
    device: torch.device,
    t0: float,
    extra: ExtraLoss | None,
    index: torch.Tensor,
) -> TrainResult:
    n = int(x.shape[0])
    opt = torch.optim.AdamW(_param_groups(trainable, cfg.weight_decay), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, cfg.warmup_frac))
    kind = cfg.distiller.logit if cfg.distiller is not None else cfg.logit_loss
    crit = KDLoss(cfg.alpha, cfg.tau, kind=kind, label_smoothing=cfg.label_smoothing)
    orth_mods = orthogonal_modules(model) if cfg.orth_weight > 0 else []
    gen = torch.Generator().manual_seed(cfg.seed)
    evaluate_epochs = cfg.eval_every_epoch or cfg.early_stop_patience is not None
    half = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if half == torch.float16 else None
    forward = torch.compile(model) if cfg.compile else model
    sparse = (
        DynamicSparsity(model, cfg.sparsity, total, seed=cfg.seed, update_every=cfg.sparse_update_every)
        if cfg.sparsity > 0
        else None
    )

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor, bi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of one batch (and the student's logits)."""
        out = forward(xb)
        tf: dict[str, torch.Tensor] = {}
        tb: torch.Tensor | None = None
        if t_logits is not None:
            tb = t_logits[bi]
            tf = {k: v[bi] for k, v in t_feats.items()}
        elif online is not None:
            with torch.no_grad():
                tb = online(xb).float()
                if t_cap is not None:
                    tf = dict(t_cap.features)
        loss = crit(out.float(), yb, tb)
        if distiller is not None:
            assert s_cap is not None
            loss = loss + distiller(s_cap.features, tf)
        if extra is not None:
            assert s_cap is not None
            loss = loss + extra(s_cap.features, index[bi])
        if orth_mods:
            loss = loss + cfg.orth_weight * orthogonality_penalty(model, orth_mods)
        return loss, out

    history: list[dict[str, Any]] = []
    best_acc, best_state, bad_epochs = -1.0, None, 0
    stopped = "done"
    step = 0
    epoch = 0
    loss_sum, correct, seen, ep_steps = 0.0, 0, 0, 0
    last_report = -1
    perm = torch.randperm(n, generator=gen).to(device)
    pos = 0
    while step < total:
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen).to(device), 0
        bi = perm[pos : pos + bs]
        pos += bs
        xb, yb = x[bi], y[bi]
        with torch.autocast(device.type, dtype=half) if half is not None else contextlib.nullcontext():
            loss, out = batch_loss(xb, yb, bi)
        loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            raise CandidateError(f"non-finite training loss ({loss_val}) at step {step}")
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if sparse is not None:
            sparse.after_step(step + 1, opt)
        sched.step()
        step += 1
        ep_steps += 1
        loss_sum += loss_val
        correct += int((out.detach().argmax(dim=1) == yb).sum())
        seen += int(yb.shape[0])
        if progress is not None:
            pct = (100 * step) // total
            if pct != last_report:
                last_report = pct
                progress(step / total)

        out_of_time = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
        epoch_end = step % steps_per_epoch == 0 or step == total or out_of_time
        if epoch_end:
            epoch += 1
            rec: dict[str, Any] = {
                "epoch": step / steps_per_epoch,
                "step": step,
                "loss": loss_sum / ep_steps,
                "train_acc": correct / max(1, seen),
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            if sparse is not None:
                rec["density"] = sparse.density()
            if evaluate_epochs:
                acc = evaluate(model, x_val, y_val, device=device)
                rec["val_acc"] = acc
                if acc > best_acc:
                    best_acc, bad_epochs = acc, 0
                    if cfg.early_stop_patience is not None:
                        best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_epochs += 1
                model.train()
            history.append(rec)
            train_acc = rec["train_acc"]
            loss_sum, correct, seen, ep_steps = 0.0, 0, 0, 0
            if out_of_time and step < total:
                stopped = "time"
                break
            if cfg.early_stop_patience is not None and bad_epochs >= cfg.early_stop_patience:
                if step < total:
                    stopped = "early_stop"
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    val_acc = evaluate(model, x_val, y_val, device=device)
    if progress is not None and last_report != 100:
        progress(1.0)
    return TrainResult(
        val_acc=val_acc,
        train_acc=train_acc,
        epochs_run=step / steps_per_epoch,
        steps=step,
        seconds=time.perf_counter() - t0,
        history=history,
        stopped=stopped,
    )
