"""Budgeted, seeded knowledge-distillation training of one student: ``train_student``.

Built for the search loop: ~10 small candidates and a final student on 2 CPU cores within
minutes. So the loop has no DataLoader (the data are in-memory tensors, normalised once, and
batches are index slices), teacher logits come from the offline ``TeacherCache`` (indexed by
sample index), evaluation runs under ``torch.inference_mode`` in large batches, and the whole
run is reproducible: the same seed gives the same subset, the same batch order and, on CPU
with the same thread count, bit-identical weights. Data too large for memory (``StreamedData``)
take the streamed loop at the end, ``_train_streamed``, fed by a ``DataLoader``.

What a training is told and reports is in ``train_config.py``; the orthogonality penalty in
``regularizers.py``; feature terms in ``distiller.py``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import DataBundle
from ..data.stream import StreamedData, is_streamed, view_seed
from ..errors import CandidateError
from .cache import TeacherCache
from .capture import FeatureCapture
from .checkpoint import EpochCheckpoint, rng_state, set_rng_state
from .distiller import DistillerSpec, FeatureDistiller
from .inference import evaluate
from .losses import KDLoss
from .regularizers import orthogonal_modules, orthogonality_penalty
from .sparse import DynamicSparsity
from .topk_cache import OnlineTeacher, TopKCache, streamed_accuracy
from .train_config import ExtraLoss, TrainConfig, TrainResult

# TrainConfig, TrainResult and ExtraLoss are re-exported: ``from .trainer import TrainConfig``
# is how the rest of the package has always reached them
__all__ = [
    "ExtraLoss",
    "TrainConfig",
    "TrainResult",
    "amp_dtype",
    "stratified_subset",
    "train_student",
]


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
    data: DataBundle | StreamedData,
    cfg: TrainConfig,
    cache: TeacherCache | TopKCache | OnlineTeacher | None = None,
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
            validation the whole ``x_val``. A ``StreamedData`` trains through its
            ``DataLoader`` instead (``_train_streamed``).
        cfg: the training configuration.
        cache: offline teacher outputs (``TeacherCache.build(teacher, data)``); for streamed
            data a ``TopKCache`` (replayed views) or an ``OnlineTeacher`` (``stream_knowledge``).
        progress: called with the fraction of steps done, in [0, 1] (about 100 calls a run).
        teacher: online teacher, used when ``cache`` is None or lacks the teacher features
            that ``cfg.distiller`` needs (on streamed data: whenever it has feature pairs).
        extra_loss: a further loss term on student features (see ``ExtraLoss``); added only
            when ``cfg.use_kd``. Its ``index`` is the batch's sample indices into the training
            set (``x_train``, or the streamed train split).

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
    streamed = is_streamed(data)
    if cfg.use_kd and cache is not None and not streamed:
        cache.check_aligned(data)

    fork_devices = [device] if device.type == "cuda" else []
    teacher_mode = teacher.training if teacher is not None else False
    try:
        with torch.random.fork_rng(devices=fork_devices):
            # seeding here makes dropout & co. reproducible without leaking into the caller's RNG
            torch.manual_seed(cfg.seed)
            extra = extra_loss if cfg.use_kd else None
            if streamed:
                return _train_streamed(model, data, cfg, cache, progress, teacher, device, t0, extra)
            return _train(model, data, cfg, cache, progress, teacher, device, t0, extra)
    finally:
        if teacher is not None:
            teacher.train(teacher_mode)  # the online teacher ran in eval mode


def _feature_layers(cfg: TrainConfig, extra: ExtraLoss | None) -> tuple[DistillerSpec | None, list[str], list[str]]:
    """The distiller of a KD training (None: logit KD or CE only) and the student and teacher
    layers whose outputs must be captured for its feature terms and for ``extra``."""
    spec = cfg.distiller if cfg.use_kd else None
    s_layers = list(spec.student_layers) if spec is not None else []
    if extra is not None:
        s_layers += [n for n in extra.student_layers if n not in s_layers]
    t_layers = spec.teacher_layers if spec is not None else []
    return spec, s_layers, t_layers


@dataclass
class _Features:
    """The feature side of a training, the same in both loops: the capture hooks on the student
    (and on the online teacher), the ``FeatureDistiller`` of ``cfg.distiller``'s pairs, the
    ``ExtraLoss``, and ``trainable``: the student plus the adapters of both, optimised together
    (the adapters are dropped after training)."""

    trainable: nn.Module
    s_cap: FeatureCapture | None = None
    t_cap: FeatureCapture | None = None
    distiller: FeatureDistiller | None = None
    extra: ExtraLoss | None = None

    def terms(self, t_feats: dict[str, torch.Tensor], index: torch.Tensor | None) -> torch.Tensor | None:
        """The feature-distillation terms of the batch just run (None: there are none).

        Args:
            t_feats: the teacher's features of the batch, by teacher layer name.
            index: the batch's sample indices into the training set (for ``extra``).
        """
        loss: torch.Tensor | None = None
        if self.distiller is not None:
            assert self.s_cap is not None
            loss = self.distiller(self.s_cap.features, t_feats)
        if self.extra is not None:
            assert self.s_cap is not None and index is not None
            term = self.extra(self.s_cap.features, index)
            loss = term if loss is None else loss + term
        return loss


def _open_features(
    stack: contextlib.ExitStack,
    model: nn.Module,
    online: nn.Module | None,
    cfg: TrainConfig,
    extra: ExtraLoss | None,
    t_feats: dict[str, torch.Tensor],
    probe: Callable[[], torch.Tensor],
    device: torch.device,
) -> _Features:
    """Set up the feature side of a training (``_Features``) inside ``stack``.

    Feature shapes are probed on a 2-sample eval-mode pass over ``probe()`` (the in-memory
    subset, or the first streamed batch), called only when there are feature terms.
    """
    spec, s_layers, t_layers = _feature_layers(cfg, extra)
    feats = _Features(trainable=model, extra=extra)
    feats.s_cap = stack.enter_context(FeatureCapture(model, s_layers)) if s_layers else None
    if t_layers and online is not None:
        feats.t_cap = stack.enter_context(FeatureCapture(online, t_layers))
    if (spec is None or not spec.pairs) and extra is None:
        return feats
    assert feats.s_cap is not None
    s_shapes, t_shapes = _probe_shapes(model, online, probe(), t_feats, feats.s_cap, feats.t_cap)
    # adapters are trained with the student (and dropped after)
    parts: list[nn.Module] = [model]
    if spec is not None and spec.pairs:
        feats.distiller = FeatureDistiller(spec, s_shapes, t_shapes, seed=cfg.seed).to(device)
        parts.append(feats.distiller)
    if extra is not None:
        parts.append(extra.setup({n: s_shapes[n] for n in extra.student_layers}, device).to(device))
    feats.trainable = nn.ModuleList(parts)
    return feats


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


@dataclass
class _Optim:
    """What both training loops set up identically from a ``TrainConfig``: AdamW over the student
    and its adapters, the warm-up + cosine LR schedule, the ``KDLoss``, mixed precision (autocast
    dtype and, for fp16, a gradient scaler), the optionally compiled forward, the orthogonality
    penalty's modules and dynamic sparsity. Built by ``_build_optim``; one object, so the two
    loops cannot drift apart."""

    cfg: TrainConfig
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    crit: KDLoss
    half: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    forward: Callable[[torch.Tensor], torch.Tensor]
    orth_mods: list[nn.Module]
    sparse: DynamicSparsity | None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the mixed-precision dtype, or nothing in full precision."""
        return torch.autocast(device.type, dtype=self.half) if self.half is not None else contextlib.nullcontext()

    def loss(
        self,
        model: nn.Module,
        out: torch.Tensor,
        y: torch.Tensor,
        t_logits: torch.Tensor | None,
        feats: _Features,
        t_feats: dict[str, torch.Tensor],
        index: torch.Tensor | None,
    ) -> torch.Tensor:
        """One batch's loss: the logit loss, the feature terms, the orthogonality penalty."""
        loss = self.crit(out.float(), y, t_logits)
        terms = feats.terms(t_feats, index)
        if terms is not None:
            loss = loss + terms
        if self.orth_mods:
            loss = loss + self.cfg.orth_weight * orthogonality_penalty(model, self.orth_mods)
        return loss

    def step(self, loss: torch.Tensor, step: int) -> float:
        """One update from ``loss``: refuse a non-finite loss, backward (through the AMP grad
        scaler when there is one), optimizer step, sparsity schedule, LR schedule.

        Returns:
            The loss as a float.

        Raises:
            CandidateError: the loss is NaN or infinite.
        """
        loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            raise CandidateError(f"non-finite training loss ({loss_val}) at step {step}")
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        if self.sparse is not None:
            self.sparse.after_step(step + 1, self.opt)
        self.sched.step()
        return loss_val


def _build_optim(model: nn.Module, trainable: nn.Module, cfg: TrainConfig, total: int, device: torch.device) -> _Optim:
    """The ``_Optim`` of a training of ``total`` steps (``trainable``: the student and adapters)."""
    opt = torch.optim.AdamW(_param_groups(trainable, cfg.weight_decay), lr=cfg.lr)
    kind = cfg.distiller.logit if cfg.distiller is not None else cfg.logit_loss
    half = amp_dtype(cfg.amp, device)
    return _Optim(
        cfg=cfg,
        opt=opt,
        sched=torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, cfg.warmup_frac)),
        crit=KDLoss(cfg.alpha, cfg.tau, kind=kind, label_smoothing=cfg.label_smoothing),
        half=half,
        scaler=torch.amp.GradScaler(device.type) if half == torch.float16 else None,
        forward=torch.compile(model) if cfg.compile else model,
        orth_mods=orthogonal_modules(model) if cfg.orth_weight > 0 else [],
        sparse=(
            DynamicSparsity(model, cfg.sparsity, total, seed=cfg.seed, update_every=cfg.sparse_update_every)
            if cfg.sparsity > 0
            else None
        ),
    )


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
    _, _, t_layers = _feature_layers(cfg, extra)
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
    with contextlib.ExitStack() as stack:
        feats = _open_features(stack, model, online, cfg, extra, t_feats, lambda: x, device)
        return _loop(
            model, cfg, x, y, x_val, data.y_val, t_logits, t_feats, online, feats, bs, steps_per_epoch, total,
            progress, device, t0, idx.to(device),
        )  # fmt: skip


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
    feats: _Features,
    bs: int,
    steps_per_epoch: int,
    total: int,
    progress: Callable[[float], None] | None,
    device: torch.device,
    t0: float,
    index: torch.Tensor,
) -> TrainResult:
    n = int(x.shape[0])
    optim = _build_optim(model, feats.trainable, cfg, total, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    evaluate_epochs = cfg.eval_every_epoch or cfg.early_stop_patience is not None

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor, bi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of one batch (and the student's logits)."""
        out = optim.forward(xb)
        tf: dict[str, torch.Tensor] = {}
        tb: torch.Tensor | None = None
        if t_logits is not None:
            tb = t_logits[bi]
            tf = {k: v[bi] for k, v in t_feats.items()}
        elif online is not None:
            with torch.no_grad():
                tb = online(xb).float()
                if feats.t_cap is not None:
                    tf = dict(feats.t_cap.features)
        loss = optim.loss(model, out, yb, tb, feats, tf, index[bi] if feats.extra is not None else None)
        return loss, out

    validate = (lambda: evaluate(model, x_val, y_val, device=device)) if evaluate_epochs else None
    log = _EpochLog(model, optim.opt, optim.sparse, cfg, t0, steps_per_epoch, total, validate)
    last_report = -1
    perm = torch.randperm(n, generator=gen).to(device)
    pos = 0
    ckpt = _checkpoint(cfg, model, feats.extra, (n, bs, total))
    step = _resume(_kept_state(ckpt, total), feats.trainable, optim, log, device, gen)
    if step:
        pos, t0 = n, log.t0  # a new permutation next, from the restored generator, as at any epoch's end
    while step < total:
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen).to(device), 0
        bi = perm[pos : pos + bs]
        pos += bs
        xb, yb = x[bi], y[bi]
        with optim.autocast(device):
            loss, out = batch_loss(xb, yb, bi)
        loss_val = optim.step(loss, step)
        step += 1
        log.add(loss_val, out, yb)
        if progress is not None:
            pct = (100 * step) // total
            if pct != last_report:
                last_report = pct
                progress(step / total)

        out_of_time = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
        if step % steps_per_epoch == 0 or step == total or out_of_time:
            if log.end_epoch(step, out_of_time):
                break
            if step < total:
                _keep(ckpt, step, feats.trainable, optim, log, device, gen)

    log.restore_best()
    model.eval()
    val_acc = evaluate(model, x_val, y_val, device=device)
    if progress is not None and last_report != 100:
        progress(1.0)
    return log.result(val_acc, step)


# --------------------------------------------------------------------------------------------
# streamed data (data.stream): batches from a DataLoader, KD from a top-k cache or online
# --------------------------------------------------------------------------------------------


class _Schedule:
    """The training's batches, as (index, view seed) lists, generated lazily epoch by epoch.

    Epoch e is a seeded permutation of the subset cut into full batches; each item's view seed
    comes from the top-k cache (so the student replays the cached crops) or from ``view_seed``.
    Memory is one permutation of the subset, whatever the number of epochs.
    """

    def __init__(
        self, subset: np.ndarray, bs: int, total: int, seed: int, data_seed: int, cache: TopKCache | None,
        start: int = 0,
    ) -> None:  # fmt: skip
        self.subset, self.bs, self.total, self.seed = subset, bs, total, seed
        self.data_seed, self.cache = data_seed, cache
        self.per_epoch = max(1, len(subset) // bs)
        self.start = start  # a step at an epoch's end (a resumed training)

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, epoch = self.start, self.start // self.per_epoch
        while step < self.total:
            rng = np.random.default_rng([self.seed, epoch, 104729])
            order = self.subset[rng.permutation(len(self.subset))][: self.per_epoch * self.bs]
            if self.cache is not None:
                seeds = self.cache.view_seeds(order, epoch).tolist()
            else:
                seeds = [view_seed(self.data_seed, int(i), epoch) for i in order]
            ids = order.tolist()
            for b in range(self.per_epoch):
                if step >= self.total:
                    return
                lo, hi = b * self.bs, (b + 1) * self.bs
                yield list(zip(ids[lo:hi], seeds[lo:hi], strict=True))
                step += 1
            epoch += 1


def _streamed_teacher(
    cfg: TrainConfig,
    knowledge: TopKCache | OnlineTeacher | TeacherCache | None,
    teacher: nn.Module | None,
    t_layers: list[str],
    device: torch.device,
) -> tuple[TopKCache | None, nn.Module | None]:
    """Where a streamed training's KD targets come from: (top-k cache, online teacher), one of
    them set under ``use_kd``.

    A ``TopKCache`` serves logit KD. It holds logits only, so a distiller with feature pairs runs
    the teacher online on every batch (``knowledge``'s module, or ``teacher``) and then takes
    the logits from that same pass as well: the exact outputs on the view being trained, at no
    extra cost, rather than the cache's top-k approximation of them.
    """
    if not cfg.use_kd:
        return None, None
    if isinstance(knowledge, TopKCache) and not t_layers:
        return knowledge, None
    if isinstance(knowledge, OnlineTeacher):
        online = knowledge.module
    elif teacher is not None:
        online = teacher
    elif isinstance(knowledge, TopKCache):
        raise ValueError(
            f"feature distillation on streamed data runs the teacher online for its feature maps {t_layers} "
            "(the top-k cache holds logits only): pass teacher= or an OnlineTeacher"
        )
    else:
        raise ValueError("streamed KD needs a TopKCache or an online teacher (stream_knowledge)")
    online = online.to(device).eval()
    if cfg.channels_last:
        online.to(memory_format=torch.channels_last)
    return None, online


def _train_streamed(
    model: nn.Module,
    data: StreamedData,
    cfg: TrainConfig,
    knowledge: TopKCache | OnlineTeacher | TeacherCache | None,
    progress: Callable[[float], None] | None,
    teacher: nn.Module | None,
    device: torch.device,
    t0: float,
    extra: ExtraLoss | None = None,
) -> TrainResult:
    """The training loop over a streamed ImageFolder.

    Batches come from ``data.loader`` (worker processes decode and augment the next batches
    while this process computes; pinned memory and non-blocking copies on CUDA), are normalised
    on the device and fed channels-last under autocast (bf16 on a CUDA device that supports it,
    ``TrainConfig.amp``). KD targets are the cached top-k soft labels of exactly the view being
    trained on (``TopKCache.soft_logits``), or the online teacher's logits on the same batch.
    Feature distillation (``cfg.distiller`` pairs) takes the teacher's features, and logits, from
    the online teacher run on the same batch (``_streamed_teacher``); feature shapes are probed
    on the first batch. An ``ExtraLoss`` gets the batch's train-split sample indices (under
    ``--stream-augment`` each epoch sees a new view of that sample). Validation is streamed too.
    """
    _, _, t_layers = _feature_layers(cfg, extra)
    cache, online = _streamed_teacher(cfg, knowledge, teacher, t_layers, device)
    subset = stratified_subset(data.y_train, cfg.data_fraction, cfg.seed).numpy()
    n = len(subset)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    model.to(device).train()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    cuda = device.type == "cuda"
    ckpt = _checkpoint(cfg, model, extra, (n, bs, total))
    kept = _kept_state(ckpt, total)  # read now: the schedule starts at its step
    start = 0 if kept is None else int(kept["step"])
    schedule = _Schedule(subset, bs, total, cfg.seed, data.seed, cache, start=start)
    loader = data.loader("train", batch_size=bs, batches=schedule, train=True, pin_memory=cuda)
    batches = iter(loader)
    first = next(batches)  # start < total: there is a first batch; it also serves the shape probe

    def on_device(xb: torch.Tensor) -> torch.Tensor:
        return data.normalize_batch(xb.to(device, non_blocking=True)).contiguous(memory_format=fmt)

    with contextlib.ExitStack() as stack:
        feats = _open_features(stack, model, online, cfg, extra, {}, lambda: on_device(first[0]), device)
        optim = _build_optim(model, feats.trainable, cfg, total, device)
        evaluate_epochs = cfg.eval_every_epoch or cfg.early_stop_patience is not None
        validate = (lambda: streamed_accuracy(model, data, "val", device=device)) if evaluate_epochs else None
        log = _EpochLog(model, optim.opt, optim.sparse, cfg, t0, steps_per_epoch, total, validate, batch_size=bs)
        last_report = -1
        step = _resume(kept, feats.trainable, optim, log, device, None)
        t0 = log.t0
        for xb, yb, ib, _ in itertools.chain([first], batches):
            epoch = step // steps_per_epoch
            x = on_device(xb)
            yd = yb.to(device, non_blocking=True)
            tb: torch.Tensor | None = None
            tf: dict[str, torch.Tensor] = {}
            if cache is not None:
                tb = cache.soft_logits(ib, epoch).to(device, non_blocking=True)
            with optim.autocast(device):
                if online is not None:
                    with torch.no_grad():
                        tb = online(x).float()
                        if feats.t_cap is not None:
                            tf = dict(feats.t_cap.features)
                out = optim.forward(x)
                index = ib.to(device, non_blocking=True) if feats.extra is not None else None
                loss = optim.loss(model, out, yd, tb, feats, tf, index)
            loss_val = optim.step(loss, step)
            step += 1
            log.add(loss_val, out, yd)
            if progress is not None and (100 * step) // total != last_report:
                last_report = (100 * step) // total
                progress(step / total)
            out_of_time = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
            if step % steps_per_epoch == 0 or step == total or out_of_time:
                if log.end_epoch(step, out_of_time):
                    break
                if step < total:
                    _keep(ckpt, step, feats.trainable, optim, log, device, None)
    del batches, loader  # stops the workers
    log.restore_best()
    model.eval()
    val_acc = streamed_accuracy(model, data, "val", device=device)
    if progress is not None and last_report != 100:
        progress(1.0)
    return log.result(val_acc, step)


def _checkpoint(
    cfg: TrainConfig, model: nn.Module, extra: ExtraLoss | None, shape: tuple[int, ...]
) -> EpochCheckpoint | None:
    """The training's epoch checkpoint (``cfg.checkpoint``), keyed on the config, the student's
    parameters, ``shape`` and the ``ExtraLoss``'s ``checkpoint_key``; None when none is asked for,
    or for a training whose state lives outside its modules (dynamic sparsity, an ``ExtraLoss``
    without a ``checkpoint_key``)."""
    term = getattr(extra, "checkpoint_key", None) if extra is not None else ""
    if cfg.checkpoint is None or cfg.sparsity > 0 or term is None:
        return None
    return EpochCheckpoint(cfg, model, (*shape, term))


def _kept_state(ckpt: EpochCheckpoint | None, total: int) -> dict[str, Any] | None:
    """The state ``ckpt`` kept for this training at an epoch's end before its last step, or None
    (no checkpoint, none kept, another training's)."""
    state = ckpt.load() if ckpt is not None else None
    return state if state is not None and int(state["step"]) < total else None


def _resume(
    state: dict[str, Any] | None, trainable: nn.Module, optim: _Optim, log: _EpochLog, device: torch.device,
    gen: torch.Generator | None,
) -> int:  # fmt: skip
    """Restore a training's kept ``state`` (``_kept_state``) and return the step it was kept at;
    0 when there is none (the training starts afresh)."""
    if state is None:
        return 0
    trainable.load_state_dict(state["trainable"])
    optim.opt.load_state_dict(state["opt"])
    optim.sched.load_state_dict(state["sched"])
    if optim.scaler is not None and state.get("scaler") is not None:
        optim.scaler.load_state_dict(state["scaler"])
    log.load_state(state["log"])
    set_rng_state(state["rng"], device, gen)
    log.resumed_at = int(state["step"]) / log.steps_per_epoch
    return int(state["step"])


def _keep(
    ckpt: EpochCheckpoint | None, step: int, trainable: nn.Module, optim: _Optim, log: _EpochLog,
    device: torch.device, gen: torch.Generator | None,
) -> None:  # fmt: skip
    """Keep the training's state at the end of the epoch that ends at ``step``."""
    if ckpt is None:
        return
    ckpt.save({
        "step": step,
        "trainable": trainable.state_dict(),
        "opt": optim.opt.state_dict(),
        "sched": optim.sched.state_dict(),
        "scaler": None if optim.scaler is None else optim.scaler.state_dict(),
        "log": log.state(),
        "rng": rng_state(device, gen),
    })  # fmt: skip
    log.checkpoint_error = ckpt.error


class _EpochLog:
    """The per-epoch bookkeeping both training loops share: running loss and accuracy, one record
    per epoch (``TrainResult.history``), validation when asked for, and early stopping that keeps
    the best epoch's weights.

    Args:
        validate: returns the validation accuracy (the model is put back in train mode after it);
            ``None`` when epochs are not evaluated.
        batch_size: when given, each record also carries ``images_per_s`` (the streamed loop).
    """

    def __init__(
        self, model: nn.Module, opt: Any, sparse: Any, cfg: TrainConfig, t0: float, steps_per_epoch: int,
        total: int, validate: Callable[[], float] | None, batch_size: int | None = None,
    ) -> None:  # fmt: skip
        self.model, self.opt, self.sparse, self.cfg, self.t0 = model, opt, sparse, cfg, t0
        self.steps_per_epoch, self.total, self.validate, self.batch_size = steps_per_epoch, total, validate, batch_size
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_state, self.bad_epochs = -1.0, None, 0
        self.stopped, self.train_acc = "done", 0.0
        self.loss_sum, self.correct, self.seen, self.ep_steps = 0.0, 0, 0, 0
        self.resumed_at, self.checkpoint_error = 0.0, None

    def state(self) -> dict[str, Any]:
        """What an epoch checkpoint keeps of the log (at an epoch's end: no running sums)."""
        return {
            "history": self.history, "best_acc": self.best_acc, "best_state": self.best_state,
            "bad_epochs": self.bad_epochs, "train_acc": self.train_acc, "elapsed": time.perf_counter() - self.t0,
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.best_acc, self.best_state = float(state["best_acc"]), state["best_state"]
        self.bad_epochs, self.train_acc = int(state["bad_epochs"]), float(state["train_acc"])
        self.t0 = time.perf_counter() - float(state["elapsed"])  # the time spent before counts

    def add(self, loss_val: float, out: torch.Tensor, y: torch.Tensor) -> None:
        """Count one training step's loss and correct predictions."""
        self.ep_steps += 1
        self.loss_sum += loss_val
        self.correct += int((out.detach().argmax(dim=1) == y).sum())
        self.seen += int(y.shape[0])

    def end_epoch(self, step: int, out_of_time: bool) -> bool:
        """Close an epoch at ``step``: record it, validate, track the best. True: stop training
        (``stopped`` says why: the time limit or early stopping)."""
        rec: dict[str, Any] = {
            "epoch": step / self.steps_per_epoch,
            "step": step,
            "loss": self.loss_sum / self.ep_steps,
            "train_acc": self.correct / max(1, self.seen),
            "lr": self.opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - self.t0,
        }
        if self.batch_size is not None:
            rec["images_per_s"] = step * self.batch_size / max(1e-9, time.perf_counter() - self.t0)
        if self.sparse is not None:
            rec["density"] = self.sparse.density()
        if self.validate is not None:
            acc = self.validate()
            rec["val_acc"] = acc
            if acc > self.best_acc:
                self.best_acc, self.bad_epochs = acc, 0
                if self.cfg.early_stop_patience is not None:
                    self.best_state = copy.deepcopy(self.model.state_dict())
            else:
                self.bad_epochs += 1
            self.model.train()
        self.history.append(rec)
        self.train_acc = rec["train_acc"]
        self.loss_sum, self.correct, self.seen, self.ep_steps = 0.0, 0, 0, 0
        if out_of_time and step < self.total:
            self.stopped = "time"
            return True
        if self.cfg.early_stop_patience is not None and self.bad_epochs >= self.cfg.early_stop_patience:
            if step < self.total:
                self.stopped = "early_stop"
            return True
        return False

    def restore_best(self) -> None:
        """Load the best validated epoch's weights (kept only under early stopping)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def result(self, val_acc: float, step: int) -> TrainResult:
        return TrainResult(
            val_acc=val_acc,
            train_acc=self.train_acc,
            epochs_run=step / self.steps_per_epoch,
            steps=step,
            seconds=time.perf_counter() - self.t0,
            history=self.history,
            stopped=self.stopped,
            resumed_at=self.resumed_at,
            checkpoint_error=self.checkpoint_error,
        )
