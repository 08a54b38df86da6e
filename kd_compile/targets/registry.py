"""Plugin registry for targets supplied as code (entry-point group ``kd_compile.targets``)."""

from __future__ import annotations

from ..errors import TargetError
from ..registry import Registry

TARGETS: Registry = Registry("targets", TargetError)
