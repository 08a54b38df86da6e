"""Student families: a model-free ``ParamSpace`` plus ``build(config) -> nn.Module``.

A config is the plain dict of ``kd_compile.search.space``; a student is rebuilt from it exactly
(``space.build(config)``), so ``student.pt`` stores only the config and a state_dict, never
pickled code. Families register by name (``register_space``) and are created with
``create_space(name, input_shape=..., num_classes=...)``, like timm's ``create_model``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from ..errors import UsageError
from ..registry import Registry
from ..search.space import Config, Param, ParamSpace

__all__ = ["StudentSpace", "create_space", "get_space", "list_spaces", "register_space", "space_for_teacher"]


class StudentSpace(ParamSpace):
    """A family of students over an input shape and a class count.

    Subclasses set the parameters and implement ``build``; they may offer
    ``estimate_params(config) -> int`` (exact, without building), which lets the search reject a
    candidate over ``--max-params`` before it is built.

    Args:
        input_shape: (C, H, W) of the student input (the teacher's).
        num_classes: number of logits.
        params: the family's parameters, in encoding order.
        name: the registered name.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, params: Sequence[Param], name: str
    ) -> None:
        if len(input_shape) != 3 or min(int(v) for v in input_shape) < 1:
            raise UsageError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
        if int(num_classes) < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__(params, name)
        self.input_shape: tuple[int, int, int] = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        self.num_classes = int(num_classes)

    def build(self, config: Config) -> nn.Module:
        """The student of ``config``: (N, C, H, W) float -> (N, num_classes) logits."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(input_shape=list(self.input_shape), num_classes=self.num_classes)
        return d


_SPACES: Registry[StudentSpace] = Registry("spaces", UsageError)


def register_space(name: str):
    """Class decorator: register a ``StudentSpace`` subclass under ``name``."""
    return _SPACES.register(name)


def get_space(name: str) -> type[StudentSpace]:
    """The family registered as ``name`` (an unknown name raises ``UsageError`` with suggestions)."""
    return _SPACES.get(name)  # type: ignore[return-value]


def create_space(name: str, **kwargs: Any) -> StudentSpace:
    """Create a registered family: ``create_space("trade", input_shape=..., num_classes=...)``."""
    return _SPACES.create(name, **kwargs)


def space_for_teacher(name: str, teacher: Any) -> StudentSpace:
    """The family ``name`` for a loaded teacher (``kd_compile.teacher.Teacher``).

    A family that derives itself from the teacher (``from_teacher``, e.g. ``teacher-family``)
    reads what it needs from it (and refuses, with ``UsageError``, a teacher it cannot use);
    any other is created for the teacher's input shape and class count.
    """
    cls = get_space(name)
    from_teacher = getattr(cls, "from_teacher", None)
    if callable(from_teacher):
        return from_teacher(teacher)
    return create_space(name, input_shape=tuple(teacher.input_shape), num_classes=teacher.num_classes)


def list_spaces() -> list[str]:
    return _SPACES.names()
