"""Model-free search: parameter spaces, strategies, the journaled loop and the scores.

Nothing here knows of models: a strategy sees configs (plain dicts), fidelities and scores.
Built-in strategies register by being imported here; plugins come in through the
``kd_compile.strategies`` entry-point group.
"""

# importing a strategy module registers its strategies (the built-ins, one module each)
from . import bohb as _bohb  # noqa: F401
from . import evolution as _evolution  # noqa: F401
from . import mobo as _mobo  # noqa: F401
from . import multifidelity as _multifidelity  # noqa: F401
from . import quasirandom as _quasirandom  # noqa: F401
from . import random as _random  # noqa: F401
from . import turbo as _turbo  # noqa: F401
from . import turbo_m as _turbo_m  # noqa: F401
from .base import (
    AUTO,
    GP_MIN_BUDGET,
    GP_STRATEGY,
    RUN_SET_OPTIONS,
    Recommendation,
    Strategy,
    create_strategy,
    get_strategy,
    list_strategies,
    register_strategy,
    strategy_for_budget,
    strategy_options,
)
from .journal import Journal
from .loop import SearchResult, run_search
from .mobo import Objective
from .space import ComposedSpace, Config, Feasible, Param, ParamSpace
from .trial import Suggestion, Trial, TrialStatus, best_trial, pareto_mask, pareto_trials

__all__ = [
    "AUTO",
    "GP_MIN_BUDGET",
    "GP_STRATEGY",
    "strategy_for_budget",
    "ComposedSpace",
    "Config",
    "Feasible",
    "Journal",
    "Objective",
    "Param",
    "ParamSpace",
    "RUN_SET_OPTIONS",
    "Recommendation",
    "SearchResult",
    "Strategy",
    "Suggestion",
    "Trial",
    "TrialStatus",
    "best_trial",
    "create_strategy",
    "get_strategy",
    "list_strategies",
    "pareto_mask",
    "pareto_trials",
    "register_strategy",
    "run_search",
    "strategy_options",
]
