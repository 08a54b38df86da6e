"""Knowledge distillation: losses, the offline teacher cache, budgeted student training, Auto-KD
distiller search and data-free synthesis.

Typical use::

    from kd_compile.distill import TeacherCache, TrainConfig, train_student

    cache = TeacherCache.build(teacher, data, cache_dir=out / "cache")
    result = train_student(student, data, TrainConfig(epochs=1, data_fraction=0.2), cache)

Feature distillation has one vocabulary (``features``): a term is a ``FeatureSpec`` (transform
+ distance + weight + tau + alignment + layer pair); the classic losses are presets::

    spec = DistillerSpec("kl", (FeatureSpec.named("at", student="layers.l3", teacher="layers.l3", weight=100),))
    train_student(student, data, TrainConfig(distiller=spec), TeacherCache.build(
        teacher, data, feature_layers=spec.teacher_layers))

and Auto-KD (``autokd``) searches the same vocabulary.

Layout: ``losses`` (logit KD), ``features`` (the feature vocabulary), ``distiller`` (feature
terms as trainable modules, ``DistillerSpec``), ``capture`` (forward hooks), ``cache`` (offline
teacher outputs), ``train_config`` / ``trainer`` / ``regularizers`` / ``inference`` / ``sparse``
(training one student), ``autokd`` (distiller search), ``augment`` and ``datafree`` (training
data).
"""

from __future__ import annotations

from .augment import augment_images, augmented_bundle
from .autokd import (
    DistillerChoice,
    DistillerTree,
    MctsResult,
    TeacherKnowledge,
    distiller_reward,
    mcts_search,
    search_distiller,
    train_with_distiller,
)
from .cache import TeacherCache, data_fingerprint, module_fingerprint
from .capture import FeatureCapture
from .datafree import BatchNormStatsLoss, synthesize
from .distiller import DistillerSpec, FeatureAligner, FeatureDistiller, FeatureLoss
from .features import (
    DISTANCES,
    FEATURE_PRESETS,
    TRANSFORMS,
    FeatureSpec,
    at_loss,
    cka_loss,
    feature_distance,
    feature_loss,
    hint_loss,
    nst_loss,
    sp_loss,
    transform_features,
)
from .inference import evaluate, predict_logits
from .losses import LOGIT_LOSSES, KDLoss, dist_loss, kd_loss, pearson_distance, standardize_logits
from .regularizers import orthogonal_modules, orthogonality_penalty
from .train_config import ExtraLoss, TrainConfig, TrainResult
from .trainer import stratified_subset, train_student

__all__ = [
    "DISTANCES",
    "FEATURE_PRESETS",
    "LOGIT_LOSSES",
    "TRANSFORMS",
    "BatchNormStatsLoss",
    "DistillerChoice",
    "DistillerSpec",
    "DistillerTree",
    "ExtraLoss",
    "FeatureAligner",
    "FeatureCapture",
    "FeatureDistiller",
    "FeatureLoss",
    "FeatureSpec",
    "KDLoss",
    "MctsResult",
    "TeacherCache",
    "TeacherKnowledge",
    "TrainConfig",
    "TrainResult",
    "at_loss",
    "augment_images",
    "augmented_bundle",
    "cka_loss",
    "data_fingerprint",
    "dist_loss",
    "distiller_reward",
    "evaluate",
    "feature_distance",
    "feature_loss",
    "hint_loss",
    "kd_loss",
    "mcts_search",
    "module_fingerprint",
    "nst_loss",
    "orthogonal_modules",
    "orthogonality_penalty",
    "pearson_distance",
    "predict_logits",
    "search_distiller",
    "sp_loss",
    "standardize_logits",
    "stratified_subset",
    "synthesize",
    "train_student",
    "train_with_distiller",
    "transform_features",
]
