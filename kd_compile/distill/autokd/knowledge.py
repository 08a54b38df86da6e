"""Teacher knowledge computed once for Auto-KD (its "offline processing"): which layer to
distil, the teacher's train logits and features, and its features on the val subset that the
reward's representation gap is measured on.

On streamed data (``data.stream``) the train set neither fits in memory nor shows the same view
twice, so no train logits or features are stored: the knowledge keeps the teacher itself, which
runs online next to the student (``trainer`` feature distillation on streamed batches), and only
the gap subset's features are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data import DataBundle
from ...data.stream import StreamedData, is_streamed
from ..cache import TeacherCache
from ..capture import FeatureCapture
from ..inference import predict_logits
from ..trainer import stratified_subset

__all__ = [
    "TeacherKnowledge",
    "features_and_logits",
    "last_feature_layer",
    "pool_feature",
    "sample_batch",
    "streamed_features_and_logits",
]


def last_feature_layer(model: nn.Module, sample: torch.Tensor | None = None) -> str:
    """Name of the module whose output is the model's last feature map (before pooling).

    kd-compile students (and teachers built by a kd-compile space) name their stage outputs in
    ``model.feature_names``; the last one is used. Other models are probed with ``sample`` (a
    normalised batch (N, C, H, W)): the last module in execution order with a 4-D output.

    Raises:
        ValueError: no ``feature_names`` and no sample, or no module gives a 4-D output.
    """
    names = getattr(model, "feature_names", None)
    if names:
        return str(list(names)[-1])
    if sample is None:
        raise ValueError(f"{type(model).__name__} has no feature_names; pass a sample batch or a layer name")
    order: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                order.append(name)

        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample[:2])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not order:
        raise ValueError(f"no module of {type(model).__name__} outputs a 4-D feature map")
    return order[-1]


def pool_feature(f: torch.Tensor, pool: int | None) -> torch.Tensor:
    """Average-pool a map (N, C, H, W) larger than ``pool`` x ``pool`` down to at most that;
    anything else (smaller maps, tokens, ``pool`` None) as is."""
    if pool is None or f.dim() != 4 or (f.shape[-2] <= pool and f.shape[-1] <= pool):
        return f
    return F.adaptive_avg_pool2d(f, (min(pool, f.shape[-2]), min(pool, f.shape[-1])))


def features_and_logits(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    pool: int | None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits (N, K) and ``layer`` features (N, ...) of ``model`` on normalised x."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    try:
        with torch.inference_mode(), FeatureCapture(model, [layer]) as cap:
            for start in range(0, x.shape[0], batch_size):
                out = model(x[start : start + batch_size].to(device))
                logits.append(out.float().cpu())
                feats.append(pool_feature(cap.features[layer], pool).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


def sample_batch(data: DataBundle | StreamedData, n: int = 2) -> torch.Tensor:
    """The first ``n`` val images, normalised (a probe batch for ``last_feature_layer``)."""
    if not is_streamed(data):
        return data.normalize(data.x_val[:n])
    loader = data.loader("val", batch_size=n, batches=[[(i, 0) for i in range(min(n, data.size("val")))]], workers=0)
    xb = next(iter(loader))[0]
    return data.normalize_batch(xb)


def streamed_features_and_logits(
    model: nn.Module,
    data: StreamedData,
    split: str,
    layer: str,
    pool: int | None,
    index: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``features_and_logits`` over a streamed split (evaluation transforms, in order), on the
    samples ``index`` (default: all), read through the split's ``DataLoader``."""
    ids = [int(i) for i in (range(data.size(split)) if index is None else index)]
    batches = [[(i, 0) for i in ids[s : s + batch_size]] for s in range(0, len(ids), batch_size)]
    was_training = model.training
    model.eval()
    logits, feats = [], []
    dev = torch.device(device)
    try:
        with torch.inference_mode(), FeatureCapture(model, [layer]) as cap:
            for xb, *_ in data.loader(split, batch_size=batch_size, batches=batches, pin_memory=dev.type == "cuda"):
                out = model(data.normalize_batch(xb.to(dev, non_blocking=True)))
                logits.append(out.float().cpu())
                feats.append(pool_feature(cap.features[layer], pool).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


@dataclass
class TeacherKnowledge:
    """Everything the distiller search needs from the teacher, computed once.

    Attributes:
        layer: teacher module name whose features are distilled (its last feature map).
        train_logits: float32 (N, K), aligned with ``data.x_train``; None on streamed data.
        train_features: float32 (N, C, h, w) teacher features on ``data.x_train``; None on
            streamed data.
        gap_index: int64 (G,) indices into ``data.x_val`` of the samples the representation
            gap is measured on (a fixed stratified subset).
        gap_features: float32 (G, C, h, w) teacher features on those samples.
        feature_pool: maps larger than this were average-pooled to it (None: full size).
        val_logits: float32 (M, K) teacher logits on ``data.x_val``.
        teacher: on streamed data, the teacher itself: it runs online on every training batch
            and provides the features of exactly the view being trained on.
    """

    layer: str
    train_logits: torch.Tensor | None
    train_features: torch.Tensor | None
    gap_index: torch.Tensor
    gap_features: torch.Tensor
    feature_pool: int | None = 4
    val_logits: torch.Tensor | None = None
    teacher: nn.Module | None = None

    @property
    def online(self) -> bool:
        """True when the teacher runs online (streamed data): no train features are stored."""
        return self.train_features is None

    def logit_cache(self) -> TeacherCache:
        """The teacher logits as a ``TeacherCache`` for ``train_student``."""
        if self.val_logits is None or self.train_logits is None:
            raise ValueError("this TeacherKnowledge holds no train/val logits; build it with build() on in-memory data")
        return TeacherCache(
            train_logits=self.train_logits,
            val_logits=self.val_logits,
            teacher_val_acc=float("nan"),
        )

    @classmethod
    def build(
        cls,
        teacher: nn.Module | None,
        data: DataBundle | StreamedData,
        *,
        cache: Any = None,
        layer: str | None = None,
        feature_pool: int | None = 4,
        gap_samples: int = 256,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 256,
    ) -> TeacherKnowledge:
        """Run the teacher once (or reuse ``cache``) over the train set and a val subset.

        Args:
            teacher: the teacher (always needed: the reward's gap uses its val features;
                with a ``cache`` that holds the train logits and ``layer`` features at the same
                pooling, it only runs on the ``gap_samples`` val images).
            data: the bundle, or streamed data (then only the gap features are computed and
                the knowledge keeps ``teacher`` to run online).
            cache: a ``TeacherCache``, reused for the train logits (and features, when it
                holds them); ignored on streamed data (a top-k cache holds no features).
            layer: teacher feature layer; default ``last_feature_layer(teacher, ...)``.
            feature_pool: average-pool maps larger than this (memory: the features of the whole
                train set are held); None keeps full size.
            gap_samples: val samples the representation gap is measured on.
            seed: seed of the stratified val subset.
            device: where the teacher runs.
            batch_size: inference batch size.

        Raises:
            ValueError: no teacher, or a cache not aligned with ``data``.
        """
        if teacher is None:
            raise ValueError(
                "distilling with an Auto-KD distiller needs the teacher module (teacher=) for its feature maps"
            )
        if is_streamed(data):
            return cls._build_streamed(teacher, data, layer, feature_pool, gap_samples, seed, device, batch_size)
        x_val = data.normalize(data.x_val)
        layer = layer or last_feature_layer(teacher, x_val[:2].to(device))
        orig = next(iter(teacher.parameters()), torch.empty(0)).device
        teacher.to(device)
        try:
            frac = min(1.0, gap_samples / max(1, data.x_val.shape[0]))
            gap_index = stratified_subset(data.y_val, frac, seed)
            _, gap_feats = features_and_logits(teacher, x_val[gap_index], layer, feature_pool, batch_size, device)
            cached = cache is not None and layer in cache.train_features and cache.feature_pool == feature_pool
            if cache is not None:
                cache.check_aligned(data)
            if cached:
                assert cache is not None
                logits = cache.train_logits.float()
                feats = pool_feature(cache.train_features[layer].float(), feature_pool)
            else:
                t_logits, feats = features_and_logits(
                    teacher, data.normalize(data.x_train), layer, feature_pool, batch_size, device
                )
                logits = cache.train_logits.float() if cache is not None else t_logits
            val_logits = (
                cache.val_logits.float() if cache is not None else predict_logits(teacher, x_val, batch_size, device)
            )
        finally:
            teacher.to(orig)
        return cls(
            layer=layer,
            train_logits=logits.contiguous(),
            train_features=feats.contiguous(),
            gap_index=gap_index,
            gap_features=gap_feats.contiguous(),
            feature_pool=feature_pool,
            val_logits=val_logits.contiguous(),
        )

    @classmethod
    def _build_streamed(
        cls, teacher: nn.Module, data: StreamedData, layer: str | None, feature_pool: int | None,
        gap_samples: int, seed: int, device: str, batch_size: int,
    ) -> TeacherKnowledge:  # fmt: skip
        """``build`` on streamed data: the layer and the gap subset's features; the teacher is kept."""
        orig = next(iter(teacher.parameters()), torch.empty(0)).device
        teacher.to(device)
        try:
            layer = layer or last_feature_layer(teacher, sample_batch(data).to(device))
            frac = min(1.0, gap_samples / max(1, data.size("val")))
            gap_index = stratified_subset(data.y_val, frac, seed)
            _, gap_feats = streamed_features_and_logits(
                teacher, data, "val", layer, feature_pool, gap_index, batch_size, device
            )
        finally:
            teacher.to(orig)
        return cls(
            layer=layer,
            train_logits=None,
            train_features=None,
            gap_index=gap_index,
            gap_features=gap_feats.contiguous(),
            feature_pool=feature_pool,
            teacher=teacher,
        )
