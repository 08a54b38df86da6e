"""Loading a script of ``benchmarks/`` as a module, for the tests of its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(script: str, module_name: str) -> ModuleType:
    """``benchmarks/<script>`` imported as ``module_name``, registered in ``sys.modules`` (spawned
    workers unpickle its functions by that name)."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "benchmarks" / script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(module_name, mod)
    spec.loader.exec_module(mod)
    return mod
