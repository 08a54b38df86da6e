"""The KD hyper-parameters a search may tune, as a model-free parameter space.

TRADE and AutoKD search the distillation temperature and weight together with the student, so
the API composes this space after the student family's (``ComposedSpace([family, kd_space()])``);
the student families themselves carry no KD settings. A config without these keys trains with
the defaults of ``TrainConfig`` (tau 4, alpha 0.7).
"""

from __future__ import annotations

from typing import Any

from ..search.space import Param, ParamSpace
from .trainer import TrainConfig

__all__ = ["KD_PARAMS", "kd_hparams", "kd_space"]

_DEFAULTS = TrainConfig()

KD_PARAMS: tuple[Param, ...] = (
    Param("kd_tau", "float", low=1.0, high=8.0, default=_DEFAULTS.tau),
    Param("kd_alpha", "float", low=0.1, high=0.95, default=_DEFAULTS.alpha),
)


def kd_space() -> ParamSpace:
    """``kd_tau`` (temperature, 1..8) and ``kd_alpha`` (KD weight, 0.1..0.95)."""
    return ParamSpace(KD_PARAMS, name="kd")


def kd_hparams(config: dict[str, Any]) -> dict[str, float]:
    """The temperature and weight a config asks for, with ``TrainConfig``'s defaults."""
    return {"tau": float(config.get("kd_tau", _DEFAULTS.tau)), "alpha": float(config.get("kd_alpha", _DEFAULTS.alpha))}
