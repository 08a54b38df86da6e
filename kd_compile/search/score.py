"""Objectives. TRADE's KD-guided score (minimise) and the smooth variant the search uses.

TRADE (Kim et al., ICML 2022, Eq. 2), after the NeurIPS MicroNet challenge::

    score = acc_target / (acc_s * (1[acc_target <= acc_s] + eps)) * s
    s     = params_s / params_t + flops_s / flops_t + latency_s / latency_t

Below the accuracy bracket the score jumps by 1/eps. Short proxy trainings put almost every
candidate below a bracket set from the fully trained teacher, and then the exact score ranks by
``s / acc_s``, which rewards the tiniest students. Inside the search we therefore use a smooth
variant that keeps the same cost term ``s`` but weighs accuracy relative to the teacher with an
exponent (``ACCURACY_WEIGHT``, declared here once)::

    search_score = s / (acc_s / acc_target) ** ACCURACY_WEIGHT

``acc_target`` is the teacher's accuracy unless the user sets one (``--target-acc``): a higher
target weighs accuracy more against the cost term at the same exponent.

It is stationary (it does not depend on the other candidates), so GP models and journal replay
stay valid. The report shows both: the search score and TRADE's exact score.
"""

from __future__ import annotations

import math

__all__ = ["ACCURACY_WEIGHT", "cost_term", "search_score", "trade_score"]

# How strongly the search score trades accuracy (relative to the target) against resources.
ACCURACY_WEIGHT = 4.0


def cost_term(
    params: float, flops: float, latency_ms: float, params_t: float, flops_t: float, latency_t_ms: float
) -> float:
    """TRADE's ``s``: the student's resources relative to the teacher's."""
    return params / params_t + flops / flops_t + latency_ms / latency_t_ms


def trade_score(acc_student: float, acc_target: float, s: float, eps: float = 0.01) -> float:
    """TRADE's exact KD-guided score (lower is better). Accuracies in [0, 1]."""
    if acc_student <= 0:
        return math.inf
    indicator = 1.0 if acc_target <= acc_student else 0.0
    return acc_target / (acc_student * (indicator + eps)) * s


def search_score(acc_student: float, acc_target: float, s: float, accuracy_weight: float = ACCURACY_WEIGHT) -> float:
    """The smooth variant optimised by the search (lower is better)."""
    if acc_student <= 0:
        return math.inf
    return s / (acc_student / acc_target) ** accuracy_weight
