"""The public front of ``kd_compile.profilers``: registry, contract over every profiler, layering."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kd_compile.profilers as profilers
from kd_compile.errors import UsageError
from kd_compile.profilers import InputSpec, Profiler, TimingPolicy, create_profiler, is_profiler, list_profilers
from kd_compile.testing.profilers import available_profilers, make_profiler, profiler_contract, tiny_cnn

SPEC = InputSpec((3, 16, 16), batch=2)
PACKAGE = Path(profilers.__file__).parent

# Constructor arguments that keep each profiler quick in a test; a profiler not listed here
# (a plugin, or one added later) is built with its defaults, which is itself part of the
# contract: every registered name must be constructible for the CLI's `--profiler NAME`.
FAST = TimingPolicy(warmup=2, min_iters=5, max_iters=200, min_time_s=0.05, max_time_s=2.0)
CONTRACT_KWARGS: dict[str, dict] = {
    "onnxruntime": dict(threads=1, timing=FAST),
    "torch": dict(device="cpu", threads=1, timing=FAST),
    "roofline": dict(target="2080ti"),
}


@pytest.mark.parametrize("name", available_profilers())
def test_profiler_contract(name: str) -> None:
    """Every registered profiler: context manager, input checks, consistent Measurement."""
    model = tiny_cnn()
    m = profiler_contract(lambda: make_profiler(name, **CONTRACT_KWARGS.get(name, {})), model, SPEC)
    if name in ("onnxruntime", "torch"):
        assert m.method == "measured"
        assert m.device.startswith("cpu:")


def test_my_profilers_are_registered() -> None:
    names = available_profilers()
    for n in ("onnxruntime", "torch", "tensorrt", "trtexec"):
        assert n in names


def test_builtins_register_on_package_import() -> None:
    """timm-style: importing kd_compile.profilers registers every built-in, nothing else needed."""
    assert list_profilers() == sorted(list_profilers())
    assert {"counting", "onnxruntime", "roofline", "tensorrt", "torch", "trtexec"} <= set(list_profilers())
    assert is_profiler("roofline") and not is_profiler("sundial")
    with pytest.raises(UsageError, match="did you mean 'roofline'"):
        create_profiler("rooflne", target="2080ti")


def test_register_profiler_adds_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from kd_compile.profilers import base

    # a scratch registry, so the test leaves the real one as it was
    monkeypatch.setattr(base, "_PROFILERS", type(base._PROFILERS)("profilers", UsageError))

    @profilers.register_profiler("null")
    class NullProfiler(Profiler):
        name = "null"

    assert profilers.list_profilers() == ["null"]
    assert isinstance(profilers.create_profiler("null"), NullProfiler)
    with pytest.raises(ValueError, match="already registered"):
        profilers.register_profiler("null")(NullProfiler)


def test_public_front() -> None:
    for name in (
        "InputSpec",
        "LayerCost",
        "Measurement",
        "Profiler",
        "TimingPolicy",
        "create_profiler",
        "list_profilers",
        "register_profiler",
    ):
        assert name in profilers.__all__ and hasattr(profilers, name)
    assert not [n for n in profilers.__all__ if n.startswith("_")]
    assert not hasattr(profilers.base, "_load_builtins")


def test_import_is_light() -> None:
    """Importing the package must not import onnx, onnxruntime or tensorrt (lazy backends)."""
    code = (
        "import sys, kd_compile.profilers as p; p.list_profilers(); "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxsim', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# the same rule as the import-linter contract in pyproject.toml, checked here without the tool
FORBIDDEN = tuple(
    f"kd_compile.{m}"
    for m in (
        "search", "distill", "students", "api", "cli", "evaluate", "final", "inputs", "executors", "report", "testing"
    )
)


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    pkg = ["kd_compile", *path.parent.relative_to(PACKAGE.parent).parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            names += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layering_and_size(path: Path) -> None:
    """profilers/ imports no higher layer (search, training, API, CLI, test helpers); no module over 500 lines."""
    bad = [n for n in _imports(path) if n.startswith(FORBIDDEN)]
    assert not bad, f"{path.name} imports {bad}"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 500
