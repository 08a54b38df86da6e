"""Name registries for plugins (spaces, strategies, profilers, targets).

Like timm's ``register_model``/``create_model``: a name maps to a factory; a duplicate name
raises. Third-party plugins come in through entry-point groups ``kd_compile.<kind>``; one that
fails to load is reported (warning) and skipped.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory mapping for one kind of plugin."""

    def __init__(self, kind: str, error_cls: type[Exception] = KeyError) -> None:
        self.kind = kind
        self.group = f"kd_compile.{kind}"
        self._items: dict[str, Callable[..., T]] = {}
        self._error_cls = error_cls
        self._entry_points_loaded = False

    def register(self, name: str, factory: Callable[..., T] | None = None):
        """Register ``factory`` under ``name``; usable as a decorator."""

        def deco(f: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = f
            return f

        return deco(factory) if factory is not None else deco

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as exc:  # a broken plugin must never crash the tool
                warnings.warn(
                    f"kd-compile: skipped {self.kind} plugin '{ep.name}' ({ep.value}): {exc}",
                    stacklevel=2,
                )

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items

    def get(self, name: str) -> Callable[..., T]:
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise self._error_cls(
                f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(self._items))})"
            ) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)
