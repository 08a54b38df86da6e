"""Knowledge distillation: losses, the offline teacher cache, and budgeted student training.

Typical use::

    from kd_compile.distill import TeacherCache, TrainConfig, train_student

    cache = TeacherCache.build(teacher, data, cache_dir=out / "cache")
    result = train_student(student, data, TrainConfig(epochs=1, data_fraction=0.2), cache)
"""

from __future__ import annotations

from .cache import TeacherCache, data_fingerprint, module_fingerprint
from .losses import (
    FeatureCapture,
    KDLoss,
    dist_loss,
    kd_loss,
    pearson_distance,
    standardize_logits,
)
from .trainer import (
    TrainConfig,
    TrainResult,
    evaluate,
    orthogonal_modules,
    orthogonality_penalty,
    predict_logits,
    stratified_subset,
    train_student,
)

__all__ = [
    "FeatureCapture",
    "KDLoss",
    "TeacherCache",
    "TrainConfig",
    "TrainResult",
    "data_fingerprint",
    "dist_loss",
    "evaluate",
    "kd_loss",
    "module_fingerprint",
    "orthogonal_modules",
    "orthogonality_penalty",
    "pearson_distance",
    "predict_logits",
    "standardize_logits",
    "stratified_subset",
    "train_student",
]
