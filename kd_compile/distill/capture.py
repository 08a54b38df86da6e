"""Capture the outputs of named submodules with forward hooks.

One job: hand a network's intermediate feature maps to whoever needs them: the trainer's feature
losses (student and online teacher), the offline ``TeacherCache`` and Auto-KD's teacher
knowledge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Self

import torch
from torch import nn

__all__ = ["FeatureCapture"]


class FeatureCapture:
    """Capture the outputs of named submodules with forward hooks.

    Use as a context manager; hooks are removed on exit. After each forward pass
    ``features[name]`` holds that module's output (the first element when it returns a tuple).
    Outputs are kept as they are (with their autograd graph), so a student's captured features
    can carry gradients into a feature loss.

    Args:
        model: the network.
        names: module names as in ``model.named_modules()``.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            sample = [n for n in modules if n][:12]
            raise ValueError(f"no module named {missing} in {type(model).__name__}; some names: {sample}")
        self._modules = [(n, modules[n]) for n in self.names]

    def _hook(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            if isinstance(out, (tuple, list)):
                out = out[0]
            self.features[name] = out  # type: ignore[assignment]

        return hook

    def __enter__(self) -> Self:
        for name, module in self._modules:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.features.clear()
