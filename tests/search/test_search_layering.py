"""``kd_compile.search`` is model-free: it imports no model code, and torch only lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kd_compile.search

SEARCH = Path(kd_compile.search.__file__).parent
FORBIDDEN = (
    "kd_compile.students",
    "kd_compile.distill",
    "kd_compile.profilers",
    "kd_compile.api",
    "kd_compile.cli",
    "torch.nn",
)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module, imported when the module loads) for every import in ``path``; an import
    under ``if TYPE_CHECKING:`` is for annotations only and does not count as loaded."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for n in tree.body:
        if isinstance(n, ast.If) and not (isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"):
            top.update(id(m) for m in n.body)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from kd_compile/search/<file>.py
                base = "kd_compile.search".rsplit(".", node.level - 1)[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append((mod, id(node) in top))
    return out


def test_no_search_module_imports_model_code() -> None:
    bad = [
        f"{p.name}: {m}"
        for p in sorted(SEARCH.glob("*.py"))
        for m, _ in _imports(p)
        if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert not bad, bad


def test_torch_is_imported_only_inside_functions() -> None:
    eager = [
        f"{p.name}: {m}"
        for p in sorted(SEARCH.glob("*.py"))
        for m, top in _imports(p)
        if top and m.split(".")[0] in ("torch", "botorch", "gpytorch") and p.name != "__init__.py"
    ]
    assert not eager, eager


def test_importing_search_and_its_test_harness_loads_no_torch() -> None:
    code = (
        "import sys, kd_compile.search, kd_compile.testing.strategies; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'botorch') "
        "or m.startswith(('kd_compile.students', 'kd_compile.distill', 'kd_compile.profilers'))); "
        "print(bad); sys.exit(bool(bad))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
