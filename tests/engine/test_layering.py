"""``mtkd.engine`` in the package graph: it imports only the packages below it (also inside functions), and nothing
but the entry points (``mtkd.cli`` by name, ``mtkd.demo``) imports it."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "mtkd"
BELOW = (
    "mtkd.config",
    "mtkd.data",
    "mtkd.models",
    "mtkd.losses",
    "mtkd.eval",
    "mtkd.utils",
    "mtkd.errors",
    "mtkd.checkpoint",
    "mtkd.engine",
)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if node.module == "mtkd")
    return {m for m in out if m == "mtkd" or m.startswith("mtkd.")}


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_engine_imports_only_lower_packages():
    bad = {
        f"{p.name}: {m}" for p in (PKG / "engine").glob("*.py") for m in _imports(p) if not _under(m, BELOW)
    }
    assert not bad, sorted(bad)


def test_only_entry_points_import_engine():
    allowed = {PKG / "cli.py", PKG / "demo.py", *(PKG / "study").rglob("*.py")}  # the top layer
    bad = {
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if p not in allowed
        and "engine" not in p.relative_to(PKG).parts[:1]
        and any(_under(m, ("mtkd.engine",)) for m in _imports(p))
    }
    assert not bad, sorted(bad)
