"""Knowledge distillation: losses, the offline teacher cache, and budgeted student training.

Typical use::

    from kd_compile.distill import TeacherCache, TrainConfig, train_student

    cache = TeacherCache.build(teacher, data, cache_dir=out / "cache")
    result = train_student(student, data, TrainConfig(epochs=1, data_fraction=0.2), cache)
"""

from __future__ import annotations

from .cache import TeacherCache, data_fingerprint, module_fingerprint
from .losses import (
    FEATURE_LOSSES,
    LOGIT_LOSSES,
    DistillerSpec,
    FeatureAligner,
    FeatureCapture,
    FeatureDistiller,
    FeaturePair,
    KDLoss,
    at_loss,
    cka_loss,
    dist_loss,
    feature_loss,
    hint_loss,
    kd_loss,
    nst_loss,
    pearson_distance,
    sp_loss,
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
    "FEATURE_LOSSES",
    "LOGIT_LOSSES",
    "DistillerSpec",
    "FeatureAligner",
    "FeatureCapture",
    "FeatureDistiller",
    "FeaturePair",
    "KDLoss",
    "TeacherCache",
    "TrainConfig",
    "TrainResult",
    "at_loss",
    "cka_loss",
    "data_fingerprint",
    "dist_loss",
    "evaluate",
    "feature_loss",
    "hint_loss",
    "kd_loss",
    "module_fingerprint",
    "nst_loss",
    "orthogonal_modules",
    "orthogonality_penalty",
    "pearson_distance",
    "predict_logits",
    "sp_loss",
    "standardize_logits",
    "stratified_subset",
    "train_student",
]

# Auto-KD distiller search and data-free synthesis
from .augment import augment_images, augmented_bundle
from .autokd import (
    DistillerChoice,
    DistillerLoss,
    DistillerTree,
    MctsResult,
    TeacherKnowledge,
    distiller_reward,
    mcts_search,
    search_distiller,
    train_with_distiller,
)
from .datafree import BatchNormStatsLoss, synthesize

__all__ += [
    "BatchNormStatsLoss",
    "DistillerChoice",
    "DistillerLoss",
    "DistillerTree",
    "MctsResult",
    "TeacherKnowledge",
    "augment_images",
    "augmented_bundle",
    "distiller_reward",
    "mcts_search",
    "search_distiller",
    "synthesize",
    "train_with_distiller",
]
