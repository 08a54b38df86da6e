"""Auto-KD's distiller design space as data: ``DistillerChoice`` (one distiller, a root -> leaf
path) and ``DistillerTree`` (the options of each level).

The options are names of the feature-distillation vocabulary (``distill.features``): every
transform and every row distance, plus a weight and a temperature. A choice becomes a
``FeatureSpec`` (``DistillerChoice.spec``) for training; its temperature also sets the logit KD
temperature (Auto-KD Eq. 1).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..features import ROW_DISTANCES, TRANSFORMS, FeatureSpec

__all__ = ["DistillerChoice", "DistillerTree"]


@dataclass(frozen=True)
class DistillerChoice:
    """One distiller: a root -> leaf path of the Auto-KD tree.

    Attributes:
        transform: a name in ``features.TRANSFORMS``.
        distance: a name in ``features.DISTANCES`` (the tree's default level holds the row
            distances, ``features.ROW_DISTANCES``).
        weight: weight ``W_f`` of the feature term.
        temperature: temperature of the logit KD term and of the feature "kl" distance.
    """

    transform: str = "none"
    distance: str = "l2"
    weight: float = 1.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        # the vocabulary validates the rest: the names, their combination, the weight
        self.spec()
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "temperature", float(self.temperature))

    def spec(self, student: str | None = None, teacher: str | None = None) -> FeatureSpec:
        """This distiller as a term of the feature-distillation vocabulary.

        Alignment is "full" (pool to the smaller size, 1x1 adapter for channel-dependent
        transforms), as in Auto-KD; the temperature becomes the "kl" distance's ``tau``.

        Args:
            student, teacher: the layers it is applied to (None: chosen by the caller).
        """
        return FeatureSpec(
            self.transform,
            self.distance,
            weight=self.weight,
            tau=self.temperature,
            align="full",
            student=student,
            teacher=teacher,
        )

    @property
    def key(self) -> tuple[str, str, float, float]:
        """The path as a hashable tuple (transform, distance, weight, temperature)."""
        return (self.transform, self.distance, self.weight, self.temperature)

    def describe(self) -> str:
        """Compact name, e.g. ``attention+kl w5 t4``."""
        return f"{self.transform}+{self.distance} w{self.weight:g} t{self.temperature:g}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillerChoice:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class DistillerTree:
    """The tree-structured distiller space: one level per component, in this order.

    Defaults follow Auto-KD Table 1 (weights ``W_f`` in {1, 5, 25} of its {1, 5, 25, 50}: 50
    overwhelms CE for the small students kd-compile trains; temperatures {1, 2, 4, 8}), so the
    full tree has 6 * 4 * 3 * 4 = 288 leaves.

    Attributes:
        transforms, distances, weights, temperatures: the options of each level (every
            transform must pair with every distance: the map distance "nst" only fits a tree
            whose sole transform is "none").
    """

    transforms: tuple[str, ...] = TRANSFORMS
    distances: tuple[str, ...] = ROW_DISTANCES
    weights: tuple[float, ...] = (1.0, 5.0, 25.0)
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)

    def __post_init__(self) -> None:
        for name, opts in self.levels:
            if not opts:
                raise ValueError(f"level {name!r} of the distiller tree has no options")
            if len(set(opts)) != len(opts):
                raise ValueError(f"level {name!r} has duplicate options: {opts}")
        # validates every option once, here, instead of at the first leaf that uses it
        for t, d in itertools.product(self.transforms, self.distances):
            DistillerChoice(transform=t, distance=d)
        for w in self.weights:
            DistillerChoice(weight=w)
        for tau in self.temperatures:
            DistillerChoice(temperature=tau)

    @property
    def levels(self) -> list[tuple[str, tuple[Any, ...]]]:
        """(field name of ``DistillerChoice``, options) from root to leaves."""
        return [
            ("transform", tuple(self.transforms)),
            ("distance", tuple(self.distances)),
            ("weight", tuple(float(w) for w in self.weights)),
            ("temperature", tuple(float(t) for t in self.temperatures)),
        ]

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def size(self) -> int:
        """Number of leaves (distillers)."""
        return math.prod(len(o) for _, o in self.levels)

    def choice(self, path: Sequence[Any]) -> DistillerChoice:
        """The distiller of a full path (one option per level)."""
        if len(path) != self.depth:
            raise ValueError(f"a full path has {self.depth} options, got {len(path)}")
        return DistillerChoice(**{name: v for (name, _), v in zip(self.levels, path, strict=True)})

    def leaves(self, prefix: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every full path that starts with ``prefix``, in tree order."""
        rest = [opts for _, opts in self.levels[len(prefix) :]]
        return [tuple(prefix) + tail for tail in itertools.product(*rest)]

    def to_dict(self) -> dict[str, Any]:
        return {name: list(opts) for name, opts in self.levels}
