"""Auto-KD glue: training a student with a searched distiller, the proxy reward, and the
distiller search itself.

Training with a ``DistillerChoice`` is ``trainer.train_student`` with the choice's
``FeatureLoss`` plugged in as an ``ExtraLoss`` (``_ChoiceLoss``): the same subset, batch order,
optimiser, schedule and logit loss as any other training. On streamed data the choice becomes a
one-pair ``DistillerSpec`` distilled from the online teacher (the same ``FeatureLoss``, fed the
teacher's features of the very view being trained), and the reward's val pass is streamed.
``search_distiller`` runs ``mcts.mcts_search`` over a ``DistillerTree`` with
``distiller_reward``-style proxy rewards.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data import DataBundle
from ...data.stream import StreamedData, is_streamed
from ...errors import CandidateError
from ..distiller import DistillerSpec, FeatureLoss
from ..features import cka_loss
from ..train_config import TrainConfig, TrainResult
from ..trainer import train_student
from .knowledge import (
    TeacherKnowledge,
    features_and_logits,
    last_feature_layer,
    sample_batch,
    streamed_features_and_logits,
)
from .mcts import mcts_search
from .space import DistillerChoice, DistillerTree

__all__ = ["distiller_reward", "search_distiller", "train_with_distiller"]


class _ChoiceLoss:
    """The ``FeatureLoss`` of a ``DistillerChoice`` on one student layer against cached teacher
    features, as an ``ExtraLoss`` for ``train_student``."""

    def __init__(self, choice: DistillerChoice, layer: str, knowledge: TeacherKnowledge, seed: int):
        self.spec = choice.spec(student=layer, teacher=knowledge.layer)
        self.student_layers = (layer,)
        self.knowledge = knowledge
        self.seed = seed
        self.loss: FeatureLoss | None = None
        self.t_feats = knowledge.train_features
        # its one changing state is ``loss``, the module setup returns: epoch checkpoints keep it
        self.checkpoint_key = f"distiller {self.spec!r} seed {seed}"

    def setup(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> nn.Module:
        (shape,) = shapes.values()
        assert self.knowledge.train_features is not None
        t_shape = tuple(self.knowledge.train_features.shape[1:])
        self.loss = FeatureLoss(self.spec, shape, t_shape, seed=self.seed)
        self.t_feats = self.knowledge.train_features.to(device)
        return self.loss

    def __call__(self, features: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        assert self.loss is not None and self.t_feats is not None
        (layer,) = self.student_layers
        return self.loss(features[layer], self.t_feats[index.to(self.t_feats.device)])


def _student_layer(model: nn.Module, data: DataBundle | StreamedData, layer: str | None) -> str:
    if layer is not None:
        return layer
    device = next(iter(model.parameters()), torch.empty(0)).device
    return last_feature_layer(model, sample_batch(data).to(device))


def train_with_distiller(
    model: nn.Module,
    data: DataBundle | StreamedData,
    cfg: TrainConfig,
    cache: Any,
    teacher: nn.Module | None,
    choice: DistillerChoice,
    *,
    knowledge: TeacherKnowledge | None = None,
    student_layer: str | None = None,
    teacher_layer: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with logit KD plus the feature distiller ``choice``.

    ``loss = KDLoss(cfg.alpha, choice.temperature, kind=cfg.logit_loss)(s, y, t) +
    FeatureLoss(choice.spec())(f_S, f_T)`` on the student's last feature map and the teacher's
    (``knowledge.layer``); ``cfg.tau`` and ``cfg.distiller`` are ignored (the choice sets the
    temperature and the feature term). ``cfg.use_kd=False`` trains with CE only. On streamed
    data the term is ``cfg.distiller``'s one pair, the teacher running online
    (``knowledge.teacher``, or ``teacher``) for its features and logits of each batch.

    Args:
        model: the student (trained in place, left in eval mode on ``cfg.device``).
        data: the bundle, or streamed data.
        cfg: the training configuration.
        cache: offline teacher logits (and features) aligned with ``data`` (a
            ``TeacherCache``); may be None; unused on streamed data.
        teacher: the teacher; needed unless ``knowledge`` is given.
        choice: the distiller.
        knowledge: teacher knowledge from ``TeacherKnowledge.build`` (reuse it across calls).
        student_layer: student module to distil; default its last feature map.
        teacher_layer: teacher module; default its last feature map (ignored with
            ``knowledge``).
        progress: called with the fraction of steps done.

    Returns:
        TrainResult (``val_acc`` on the full val set).

    Raises:
        CandidateError: non-finite loss.
        ValueError: neither ``knowledge`` nor ``teacher``.
    """
    if knowledge is None:
        knowledge = TeacherKnowledge.build(
            teacher, data, cache=cache, layer=teacher_layer, seed=cfg.seed, device=cfg.device
        )
    if not cfg.use_kd:
        return train_student(model, data, dataclasses.replace(cfg, distiller=None), progress=progress)
    layer = _student_layer(model, data, student_layer)
    if knowledge.online:
        return _train_online(model, data, cfg, knowledge.teacher or teacher, choice, layer, knowledge.layer, progress)
    term = _ChoiceLoss(choice, layer, knowledge, cfg.seed)
    try:
        return train_student(
            model,
            data,
            dataclasses.replace(cfg, tau=choice.temperature, distiller=None),
            knowledge.logit_cache(),
            progress,
            extra_loss=term,
        )
    except CandidateError as exc:
        raise CandidateError(f"{exc} with distiller {choice.describe()}") from exc


def _train_online(
    model: nn.Module,
    data: DataBundle | StreamedData,
    cfg: TrainConfig,
    teacher: nn.Module | None,
    choice: DistillerChoice,
    layer: str,
    teacher_layer: str,
    progress: Callable[[float], None] | None,
) -> TrainResult:
    """``train_with_distiller`` with the teacher online: the choice as a one-pair distiller (the
    same ``FeatureLoss``, seed and logit loss as ``_ChoiceLoss``)."""
    if teacher is None:
        raise ValueError("distilling with an Auto-KD distiller on streamed data needs the teacher module (teacher=)")
    spec = DistillerSpec(cfg.logit_loss, (choice.spec(student=layer, teacher=teacher_layer),))
    try:
        return train_student(
            model,
            data,
            dataclasses.replace(cfg, tau=choice.temperature, distiller=spec),
            None,
            progress,
            teacher=teacher,
        )
    except CandidateError as exc:
        raise CandidateError(f"{exc} with distiller {choice.describe()}") from exc


def _val_ce_and_gap_features(
    model: nn.Module, data: DataBundle | StreamedData, layer: str, knowledge: TeacherKnowledge, device: torch.device
) -> tuple[float, torch.Tensor]:
    """The student's val cross-entropy and its ``layer`` features on the gap subset."""
    if is_streamed(data):
        logits, _ = streamed_features_and_logits(model, data, "val", layer, None, device=device)
        _, s_gap = streamed_features_and_logits(
            model, data, "val", layer, knowledge.feature_pool, knowledge.gap_index, device=device
        )
        return float(F.cross_entropy(logits, data.y_val)), s_gap
    x_val = data.normalize(data.x_val)
    logits, _ = features_and_logits(model, x_val, layer, None, device=device)
    val_ce = float(F.cross_entropy(logits, data.y_val))
    _, s_gap = features_and_logits(model, x_val[knowledge.gap_index], layer, knowledge.feature_pool, device=device)
    return val_ce, s_gap


def _reward_details(
    student_builder: Callable[[], nn.Module],
    data: DataBundle | StreamedData,
    knowledge: TeacherKnowledge,
    choice: DistillerChoice,
    train_cfg: TrainConfig,
    gap_weight: float,
    student_layer: str | None,
) -> dict[str, Any]:
    with torch.random.fork_rng():
        # every candidate starts from the same initial weights: only the distiller differs
        torch.manual_seed(train_cfg.seed)
        model = student_builder()
    try:
        res = train_with_distiller(
            model,
            data,
            train_cfg,
            None,
            None,
            choice,
            knowledge=knowledge,
            student_layer=student_layer,
        )
    except CandidateError as exc:
        return {"reward": -math.inf, "error": str(exc)}
    layer = _student_layer(model, data, student_layer)
    val_ce, s_gap = _val_ce_and_gap_features(model, data, layer, knowledge, torch.device(train_cfg.device))
    gap = float(cka_loss(s_gap, knowledge.gap_features))
    reward = -val_ce - gap_weight * gap
    if not math.isfinite(reward):
        reward = -math.inf
    return {
        "reward": reward,
        "val_ce": val_ce,
        "gap": gap,
        "val_acc": res.val_acc,
        "seconds": res.seconds,
    }


def distiller_reward(
    student_builder: Callable[[], nn.Module],
    data: DataBundle | StreamedData,
    cache_or_teacher: TeacherKnowledge | nn.Module,
    choice: DistillerChoice,
    train_cfg: TrainConfig,
    gap_weight: float = 0.1,
    *,
    student_layer: str | None = None,
) -> float:
    """Proxy reward of a distiller: ``-(val CE) - gap_weight * (1 - CKA(f_S, f_T))``.

    A fresh student (``student_builder()`` under ``torch.manual_seed(train_cfg.seed)``, so
    every distiller starts from the same weights) is trained with ``train_with_distiller``
    under ``train_cfg`` (set a small ``epochs``/``data_fraction`` for a proxy); then the val
    cross-entropy over the whole val set and the linear-CKA distance between the student's
    and the teacher's last feature maps on ``knowledge.gap_index`` are measured (Auto-KD
    Eq. 3: test loss plus representation gap).

    Args:
        student_builder: builds an untrained student.
        data: the bundle.
        cache_or_teacher: ``TeacherKnowledge`` (computed once, reused; the search's way) or
            the teacher module (its knowledge is then computed on every call).
        choice: the distiller.
        train_cfg: the proxy training configuration.
        gap_weight: weight of the representation gap.
        student_layer: student module to distil; default its last feature map.

    Returns:
        The reward (higher is better); ``-inf`` when the training diverged.
    """
    knowledge = (
        cache_or_teacher
        if isinstance(cache_or_teacher, TeacherKnowledge)
        else TeacherKnowledge.build(cache_or_teacher, data, seed=train_cfg.seed, device=train_cfg.device)
    )
    return float(
        _reward_details(student_builder, data, knowledge, choice, train_cfg, gap_weight, student_layer)["reward"]
    )


def search_distiller(
    student_builder: Callable[[], nn.Module],
    data: DataBundle | StreamedData,
    teacher: nn.Module,
    cache: Any,
    *,
    iterations: int = 8,
    epochs: float = 0.5,
    data_fraction: float = 0.3,
    seed: int = 0,
    tree: DistillerTree | None = None,
    train_cfg: TrainConfig | None = None,
    gap_weight: float = 0.1,
    c: float = 1.4,
    student_layer: str | None = None,
    teacher_layer: str | None = None,
    knowledge: TeacherKnowledge | None = None,
    progress: Callable[[int, DistillerChoice, float], None] | None = None,
    known: Mapping[tuple[Any, ...], dict[str, Any]] | None = None,
    on_evaluated: Callable[[DistillerChoice, dict[str, Any]], None] | None = None,
) -> tuple[DistillerChoice, dict[str, Any]]:
    """Search the Auto-KD distiller tree for one student by MCTS on proxy rewards.

    The teacher's knowledge (train logits and features, val features for the gap) is computed
    once (``TeacherKnowledge.build``, reusing ``cache``'s logits); each MCTS iteration trains a
    fresh student for ``epochs`` on a stratified ``data_fraction`` of the train set and scores
    it with ``distiller_reward``.

    Args:
        student_builder: builds an untrained student (called once per evaluated distiller).
        data: the bundle.
        teacher: the teacher.
        cache: offline teacher logits aligned with ``data`` (a ``TeacherCache``, optional;
            unused on streamed data, where the teacher runs online).
        iterations: MCTS iterations (about one proxy training each).
        epochs: proxy training epochs.
        data_fraction: proxy training subset.
        seed: seed of the search, the proxy subset and the student init.
        tree: the distiller space; default ``DistillerTree()``.
        train_cfg: base training configuration (its epochs, data_fraction and seed are
            replaced by the proxy's; early stopping and per-epoch evaluation are turned off).
        gap_weight: weight of the representation gap in the reward.
        c: UCB1 exploration constant.
        student_layer, teacher_layer: layers to distil (default: last feature maps).
        knowledge: precomputed teacher knowledge (skips ``TeacherKnowledge.build``).
        progress: called after each iteration with (iteration index, choice, reward).
        known: evaluations an interrupted search made (``choice.key`` -> the details
            ``on_evaluated`` was given): taken instead of training again. The tree search is
            deterministic for a seed and its rewards, so it makes the same choices.
        on_evaluated: called with each distiller trained and its details (reward, val_ce, gap,
            val_acc, seconds), as soon as it is scored (kd-compile journals them).

    Returns:
        (best distiller, report) with report keys: iterations, evaluations, rewards (one dict
        per iteration: iteration, choice, describe, reward, cached, and val_ce, gap, val_acc,
        seconds for evaluated ones), best, best_reward, teacher_layer, tree, proxy (the proxy
        TrainConfig as a dict), seconds.
    """
    t0 = time.perf_counter()
    tree = tree or DistillerTree()
    base = train_cfg or TrainConfig()
    proxy = dataclasses.replace(
        base,
        epochs=epochs,
        data_fraction=data_fraction,
        seed=seed,
        early_stop_patience=None,
        eval_every_epoch=False,
        distiller=None,
    )
    if knowledge is None:
        knowledge = TeacherKnowledge.build(
            teacher, data, cache=cache, layer=teacher_layer, seed=seed, device=proxy.device
        )
    details: dict[tuple[Any, ...], dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []

    def reward_fn(choice: DistillerChoice) -> float:
        if known is not None and choice.key in known:
            d = dict(known[choice.key])
        else:
            d = _reward_details(student_builder, data, knowledge, choice, proxy, gap_weight, student_layer)
            if on_evaluated is not None:
                on_evaluated(choice, d)
        details[choice.key] = d
        return float(d["reward"])

    def on_result(choice: DistillerChoice, reward: float, cached: bool) -> None:
        row: dict[str, Any] = {
            "iteration": len(rows),
            "choice": choice.to_dict(),
            "describe": choice.describe(),
            "reward": reward,
            "cached": cached,
        }
        if not cached:
            row.update({k: v for k, v in details[choice.key].items() if k != "reward"})
        rows.append(row)
        if progress is not None:
            progress(row["iteration"], choice, reward)

    result = mcts_search(reward_fn, tree, iterations, seed=seed, c=c, on_result=on_result)
    report = {
        "iterations": iterations,
        "evaluations": result.evaluations,
        "rewards": rows,
        "best": result.best.to_dict(),
        "best_describe": result.best.describe(),
        "best_reward": result.best_reward,
        "teacher_layer": knowledge.layer,
        "tree": tree.to_dict(),
        "proxy": proxy.to_dict(),
        "gap_weight": gap_weight,
        "seconds": time.perf_counter() - t0,
    }
    return result.best, report
