"""The model-free search space: typed parameters, a unit-cube encoding, sampling.

A *config* is a plain ``dict[str, int | float | str | bool]`` that is JSON-serialisable.
Strategies, the journal and the search loop see only this module's ``ParamSpace``: parameters,
``to_unit``/``from_unit``, ``sample``, ``canonical`` and ``key``. They never see a model; student
families (``kd_compile.students``) extend ``ParamSpace`` with ``build(config) -> nn.Module``,
and the API composes the searched space from parts (``ComposedSpace``: the student family's
parameters followed by the KD hyper-parameters of ``kd_compile.distill``).

Encoding for model-based strategies: every parameter maps to one coordinate in [0, 1]
(``to_unit``/``from_unit``). Integers and ordered choices split [0, 1] into equal-width bins, one
per value (log-spaced for log integers); a value encodes at the centre of its bin and decodes by the
bin a coordinate falls in, so ``decode(encode(v)) == v`` exactly and a small step from any value
reaches its lower neighbour as easily as its upper one (a trust region around a middle value can
move both ways). Floats map linearly (log-scaled ones through ``log``); unordered categoricals get
one coordinate per choice (one-hot; decode takes the argmax), so a GP kernel never sees a false order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["ComposedSpace", "Config", "Feasible", "Param", "ParamSpace"]

Config = dict[str, Any]

#: A feasibility predicate: ``feasible(config) -> bool`` on a canonical config. It must be a
#: pure function of the config (strategies replay a journal by re-asking, and a predicate that
#: changed its mind would change the proposals), and cheap (strategies call it on every
#: candidate, e.g. an analytic parameter count).
Feasible = Callable[[Config], bool]


@dataclass(frozen=True)
class Param:
    """One searchable parameter.

    Attributes:
        name: key in the config.
        kind: "int", "float", "choice" (ordered choices) or "cat" (unordered, one-hot).
        low, high: bounds for int/float (inclusive).
        choices: values for "choice"/"cat".
        log: log-scaled float/int.
        default: value used by ``space.default()``.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False
    default: Any = None

    def __post_init__(self) -> None:
        if self.kind not in ("int", "float", "choice", "cat"):
            raise ValueError(f"param {self.name}: unknown kind {self.kind}")
        if self.kind in ("int", "float"):
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"param {self.name}: need low <= high")
            if self.log and self.low <= 0:
                raise ValueError(f"param {self.name}: log scale needs low > 0")
        elif len(self.choices) == 0:
            raise ValueError(f"param {self.name}: need choices")

    @property
    def width(self) -> int:
        """Number of unit-cube coordinates this parameter takes."""
        return len(self.choices) if self.kind == "cat" else 1

    @property
    def cardinality(self) -> float:
        if self.kind == "int":
            return int(self.high) - int(self.low) + 1
        if self.kind == "float":
            return math.inf
        return len(self.choices)

    def encode(self, value: Any) -> list[float]:
        """The value's unit-cube coordinates: one-hot for "cat", the centre of its bin for
        "int"/"choice" (so ``decode`` inverts it exactly), a linear or log position for "float"."""
        if self.kind == "cat":
            return [1.0 if c == value else 0.0 for c in self.choices]
        if self.kind == "choice":
            return [(self.choices.index(value) + 0.5) / len(self.choices)]
        if self.kind == "int":
            lo, hi, k = int(self.low), int(self.high), int(value)
            if self.log:
                # bin k is [log k, log(k + 1)) of [log lo, log(hi + 1)); its centre in log space
                span = math.log(hi + 1) - math.log(lo)
                return [((math.log(k) + math.log(k + 1)) / 2 - math.log(lo)) / span]
            return [(k - lo + 0.5) / (hi - lo + 1)]
        lo, hi = float(self.low), float(self.high)
        if self.log:
            lo, hi, value = math.log(lo), math.log(hi), math.log(value)
        return [0.5 if hi == lo else (float(value) - lo) / (hi - lo)]

    def decode(self, u: Sequence[float]) -> Any:
        """The value whose bin holds ``u`` (clipped to [0, 1]); argmax for "cat"."""
        if self.kind == "cat":
            return self.choices[int(np.argmax(np.asarray(u)))]
        x = min(max(float(u[0]), 0.0), 1.0)
        if self.kind == "choice":
            n = len(self.choices)
            return self.choices[min(int(x * n), n - 1)]
        if self.kind == "int":
            # bins of equal width so every integer has the same share of [0, 1]
            lo, hi = int(self.low), int(self.high)
            if self.log:
                v = math.exp(math.log(lo) + x * (math.log(hi + 1) - math.log(lo)))
                return min(max(int(math.floor(v)), lo), hi)
            return min(lo + int(x * (hi - lo + 1)), hi)
        lo, hi = float(self.low), float(self.high)
        if self.log:
            v = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))
        else:
            v = lo + x * (hi - lo)
        # exp(log(hi)) and lo + (hi - lo) can land one ulp outside [lo, hi]: clamp
        return float(min(max(v, lo), hi))

    def contains(self, value: Any) -> bool:
        if self.kind in ("choice", "cat"):
            return value in self.choices
        if self.kind == "int" and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
            return False
        try:
            return float(self.low) <= float(value) <= float(self.high)
        except (TypeError, ValueError):
            return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "low": self.low, "high": self.high,
            "choices": list(self.choices), "log": self.log, "default": self.default,
        }


class ParamSpace:
    """A set of typed parameters with a unit-cube encoding; knows nothing of models.

    Subclasses may override ``canonical`` (normalise configs that mean the same thing) and
    ``describe`` (a short human string).

    A space may carry a feasibility predicate (:meth:`with_constraint`): strategies generate
    candidates through the helpers of :mod:`kd_compile.search.gp`, which drop configs that
    :meth:`feasible` rejects before any proposal exists. Encoding, sampling, ``key`` and
    ``validate`` ignore it (an infeasible config is still a config of the space).

    Args:
        params: the parameters, in encoding order.
        name: the space's name (journals and reports show it).
    """

    #: the feasibility predicate (None: every config is feasible); see :meth:`with_constraint`
    constraint: Feasible | None = None
    _feasible_memo: dict[str, bool] | None = None

    def __init__(self, params: Sequence[Param], name: str = "space") -> None:
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"space {name}: duplicate parameter names {', '.join(dup)}")
        self.params: list[Param] = list(params)
        self.name = name
        self._by_name = {p.name: p for p in self.params}

    def param(self, name: str) -> Param:
        """The parameter called ``name`` (KeyError if the space has none)."""
        return self._by_name[name]

    # -- encoding ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension of the unit-cube encoding."""
        return sum(p.width for p in self.params)

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def to_unit(self, config: Config) -> np.ndarray:
        out: list[float] = []
        for p in self.params:
            out.extend(p.encode(config[p.name]))
        return np.asarray(out, dtype=np.float64)

    def from_unit(self, u: Sequence[float]) -> Config:
        u = np.asarray(u, dtype=np.float64)
        if u.shape != (self.dim,):
            raise ValueError(f"expected a vector of {self.dim} unit coordinates, got {u.shape}")
        cfg: Config = {}
        i = 0
        for p in self.params:
            cfg[p.name] = _py(p.decode(u[i : i + p.width]))
            i += p.width
        return self.canonical(cfg)

    def canonical(self, config: Config) -> Config:
        """Normalise a config (e.g. zero out parameters of inactive stages). Default: identity."""
        return dict(config)

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Config:
        return self.from_unit(self.random_unit(rng))

    def random_unit(self, rng: np.random.Generator) -> np.ndarray:
        """A uniform draw in the encoding: one-hot for categoricals, U(0, 1) otherwise."""
        out: list[float] = []
        for p in self.params:
            if p.kind == "cat":
                onehot = [0.0] * p.width
                onehot[int(rng.integers(p.width))] = 1.0
                out.extend(onehot)
            else:
                out.append(float(rng.random()))
        return np.asarray(out)

    def complete(self, config: Config) -> Config:
        """``config`` with missing keys at their defaults and foreign keys dropped, canonical
        (so ``build``/``describe`` accept partial configs, e.g. from older journals)."""
        c = {p.name: p.default for p in self.params}
        c.update({k: v for k, v in config.items() if k in self._by_name})
        return self.canonical(c)

    def default(self) -> Config:
        return self.canonical({p.name: p.default for p in self.params})

    def validate(self, config: Config) -> Config:
        """Check a config against the parameters; return its canonical form."""
        missing = [p.name for p in self.params if p.name not in config]
        if missing:
            raise UsageError(f"config lacks {', '.join(missing)}")
        bad = [f"{p.name}={config[p.name]!r}" for p in self.params if not p.contains(config[p.name])]
        if bad:
            raise UsageError(f"config out of the space: {', '.join(bad)}")
        return self.canonical({p.name: config[p.name] for p in self.params})

    def key(self, config: Config) -> str:
        """A stable identity for a canonical config (dedup of proposals)."""
        c = self.canonical(config)
        return "|".join(f"{k}={c[k]}" for k in sorted(c))

    def describe(self, config: Config) -> str:
        return self.key(config)

    # -- feasibility ------------------------------------------------------------------------
    def with_constraint(self, feasible: Feasible | None) -> ParamSpace:
        """A copy of this space (same class, same parameters, ``build``/``describe``/parts
        kept) whose :meth:`feasible` also applies ``feasible``; a space that already has a
        constraint keeps it (both must hold). ``None`` returns the space itself.

        The predicate gets the canonical config and must be a pure function of it (see
        :data:`Feasible`); its answers are memoised by ``key``.
        """
        if feasible is None:
            return self
        out = copy.copy(self)
        prev = self.constraint
        out.constraint = feasible if prev is None else _both(prev, feasible)
        out._feasible_memo = {}
        return out

    def feasible(self, config: Config) -> bool:
        """Whether ``config`` passes the space's constraint (always True without one)."""
        if self.constraint is None:
            return True
        memo = self._feasible_memo
        if memo is None:
            memo = self._feasible_memo = {}
        c = self.canonical(config)
        k = self.key(c)
        ok = memo.get(k)
        if ok is None:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            ok = memo[k] = bool(self.constraint(c))
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": [p.to_dict() for p in self.params]}


_MEMO_MAX = 200_000  # memoised feasibility answers per space (cleared when full)


def _both(a: Feasible, b: Feasible) -> Feasible:
    def feasible(config: Config) -> bool:
        return bool(a(config)) and bool(b(config))

    return feasible


class ComposedSpace(ParamSpace):
    """Parts searched together: the parameters of each part in order, each part canonicalising
    its own keys (e.g. a student family followed by the KD hyper-parameters).

    Args:
        parts: spaces with disjoint parameter names.
        name: the composed space's name (default: the first part's).
    """

    def __init__(self, parts: Sequence[ParamSpace], name: str | None = None) -> None:
        if not parts:
            raise ValueError("a composed space needs at least one part")
        self.parts = list(parts)
        super().__init__([p for part in self.parts for p in part.params], name or self.parts[0].name)

    def canonical(self, config: Config) -> Config:
        out: Config = {}
        for part in self.parts:
            names = set(part.param_names)
            out.update(part.canonical({k: v for k, v in config.items() if k in names}))
        return out

    def split(self, config: Config) -> list[Config]:
        """The config of each part, in order."""
        return [{k: config[k] for k in part.param_names if k in config} for part in self.parts]

    def describe(self, config: Config) -> str:
        return self.parts[0].describe(self.split(config)[0])


def _py(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v
