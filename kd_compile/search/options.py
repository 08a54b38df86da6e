"""What each strategy option may be, checked before a run does any work and whenever a strategy is created.

``--strategy-options`` reaches a strategy's constructor as ``KEY=VALUE`` pairs, and a constructor
takes what it is given: ``n_init=-3`` or ``n_candidates=1e12`` would run (or exhaust memory) rather
than be refused. Each option name means one thing across the built-in strategies (``n_init`` is a
design size wherever it appears), so the rules are kept here by name: its type, its range, and the
pairs that must be ordered. An option without a rule (a third-party strategy's) is left to its
strategy.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

__all__ = ["OPTION_RULES", "ORDERED_OPTIONS", "OptionRule", "check_strategy_options", "option_defaults"]


@dataclass(frozen=True)
class OptionRule:
    """One option's type (``int``: a whole number, ``float``: any finite number, ``bool``) and range."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False  # ``lo`` itself is refused
    open_hi: bool = False
    why: str = ""  # what a value past ``hi`` would cost

    def problem(self, v: Any) -> str | None:
        """Why ``v`` does not suit this option (None: it does)."""
        if self.kind == "bool":
            return None if isinstance(v, bool) else "must be true or false"
        if isinstance(v, bool) or not isinstance(v, numbers.Integral if self.kind == "int" else numbers.Real):
            return f"must be {'a whole number' if self.kind == 'int' else 'a number'}"
        if not math.isfinite(v):
            return "must be finite"
        low = self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo)
        high = self.hi is not None and (v >= self.hi if self.open_hi else v > self.hi)
        if low or high:
            return f"must be in {self.range_text()}" + (f" ({self.why})" if high and self.why else "")
        return None

    def range_text(self) -> str:
        if self.kind == "bool":
            return "true or false"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.open_lo else '['}{lo}, {hi}{')' if self.open_hi else ']'}"


_JOINT = "each proposal scores them all under the GP, and TuRBO's Thompson draw is joint over them: N^2 memory"
_COUNT = OptionRule("int", 1, 10_000)
OPTION_RULES: dict[str, OptionRule] = {
    # designs and counts
    "n_init": _COUNT,
    "n_high_init": _COUNT,
    "n_seeds": _COUNT,
    "min_points": _COUNT,
    "block_size": _COUNT,
    "population_size": OptionRule("int", 2, 10_000),
    "sample_size": _COUNT,
    "n_regions": OptionRule("int", 1, 64),
    "batch_size": OptionRule("int", 1, 1024),
    "n_candidates": OptionRule("int", 1, 10_000, why=_JOINT),
    "num_samples": OptionRule("int", 1, 100_000),
    "mc_samples": OptionRule("int", 1, 4096),
    "gp_maxiter": OptionRule("int", 1, 100_000),
    # TuRBO's trust region (unit-cube side lengths) and its counters
    "failure_tolerance": OptionRule("int", 0, 1000),  # 0: the tutorial's default
    "success_tolerance": OptionRule("int", 1, 1000),
    "length_init": OptionRule("float", 0, 4, open_lo=True),
    "length_min": OptionRule("float", 0, 4, open_lo=True),
    "length_max": OptionRule("float", 0, 4, open_lo=True),
    "learn_constraints": OptionRule("bool"),
    # BOHB
    "eta": OptionRule("int", 2, 100),  # int(eta) is the halving rate
    "min_fidelity": OptionRule("float", 0, 1, open_lo=True),
    "random_fraction": OptionRule("float", 0, 1),
    "top_n_percent": OptionRule("float", 0, 100, open_lo=True, open_hi=True),
    "bandwidth_factor": OptionRule("float", 0, 1000, open_lo=True),
    "min_bandwidth": OptionRule("float", 0, 10, open_lo=True),
    # two-fidelity strategies
    "low_fidelity": OptionRule("float", 0, 1, open_lo=True, open_hi=True),
    "low_share": OptionRule("float", 0, 1, open_lo=True, open_hi=True),
    "beta": OptionRule("float", 0, 1000),
    "gamma": OptionRule("float", 0, 1000),
    "local": OptionRule("bool"),
}
#: pairs (a, b) with a <= b, the defaults counted for the one not given
ORDERED_OPTIONS = (("length_min", "length_init"), ("length_init", "length_max"), ("sample_size", "population_size"))


def option_defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of ``cls.__init__`` and its bases' (a subclass's win)."""
    out: dict[str, Any] = {}
    for klass in reversed(inspect.getmro(cls)):
        init = klass.__dict__.get("__init__")
        if init is not None:
            out.update({p.name: p.default for p in inspect.signature(init).parameters.values()
                        if p.default is not inspect.Parameter.empty})
    return out


def check_strategy_options(cls: type, given: dict[str, Any]) -> None:
    """Refuse (``UsageError``, exit 2) an option value outside its rule, or an ordered pair out of order.

    ``None`` is accepted where the option's default is None (the strategy then picks it)."""
    name = getattr(cls, "name", cls.__name__)
    defaults = option_defaults(cls)
    for key, v in given.items():
        rule = OPTION_RULES.get(key)
        if rule is None or (v is None and key in defaults and defaults[key] is None):
            continue
        why = rule.problem(v)
        if why:
            raise UsageError(f"strategy '{name}' option {key}={v!r} {why}")
    merged = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    for a, b in ORDERED_OPTIONS:
        va, vb = merged.get(a), merged.get(b)
        if (a in given or b in given) and isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va > vb:
            hint = (f"give {a} too, at most {vb:g}" if a not in given
                    else f"give {b} too, at least {va:g}" if b not in given else None)
            raise UsageError(f"strategy '{name}': {a} ({va:g}) must not exceed {b} ({vb:g})", hint=hint)
