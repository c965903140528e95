"""``mtkd.eval`` sits below prune/export/report/cli in the package graph: none of its modules imports them,
not even inside a function (the sample-overlay drawing lives in ``mtkd.eval.overlays``)."""

from __future__ import annotations

import ast
from pathlib import Path

import mtkd.eval

LATER = ("mtkd.prune", "mtkd.export", "mtkd.report", "mtkd.cli", "mtkd.demo")


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_eval_imports_nothing_from_later_packages():
    bad = {
        f"{p.name}: {m}"
        for p in Path(mtkd.eval.__file__).parent.glob("*.py")
        for m in imported_modules(p)
        if any(m == pkg or m.startswith(pkg + ".") for pkg in LATER)
    }
    assert not bad, sorted(bad)
