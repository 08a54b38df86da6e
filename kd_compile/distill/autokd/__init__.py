"""Auto-KD: a tree-structured distiller space searched by Monte Carlo tree search.

Auto-KD (Li et al., ICCV 2023; ``/work/shared/papers/auto-kd-distiller-search.txt``) decomposes
a feature distiller into a feature *transform* ``T_f``, a *distance* ``D_f``, a loss *weight*
``W_f`` and a *temperature* ``tau`` (its Eq. 1):

    L_KD = W_f * D_f(T_f<f_S, f_T>) + W_p * D_p(p_S / tau, p_T / tau)

Those are the parts of kd-compile's feature-distillation vocabulary (``distill.features``), so a
searched distiller is an ordinary ``FeatureSpec``. The options form a tree (one level per
component); a path root -> leaf is one distiller (``DistillerChoice``). MCTS with UCB1 picks
which leaves to try, rewarded by a short proxy training of the student (a stratified subset, a
fraction of an epoch, teacher knowledge computed once offline) as ``-(val CE) - gap_weight *
(1 - CKA(student, teacher features))`` (the paper's Eq. 3 up to a constant and the gap's
weight).

Layout of this package:

* ``space``: ``DistillerChoice`` / ``DistillerTree``, the space as data.
* ``mcts``: generic MCTS over such a tree with any reward function (no torch).
* ``knowledge``: ``TeacherKnowledge``, the teacher's outputs computed once, and
  ``last_feature_layer``.
* ``search``: ``train_with_distiller``, ``distiller_reward``, ``search_distiller``: the
  kd-compile glue (the final training, the proxy reward, the search).
"""

from __future__ import annotations

from .knowledge import TeacherKnowledge, last_feature_layer
from .mcts import MctsNode, MctsResult, mcts_search, select_child, ucb_score
from .search import distiller_reward, search_distiller, train_with_distiller
from .space import DistillerChoice, DistillerTree

__all__ = [
    "DistillerChoice",
    "DistillerTree",
    "MctsNode",
    "MctsResult",
    "TeacherKnowledge",
    "distiller_reward",
    "last_feature_layer",
    "mcts_search",
    "search_distiller",
    "select_child",
    "train_with_distiller",
    "ucb_score",
]
