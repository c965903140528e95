"""The package graph is acyclic and layered, and no module is too long to read (the redesign's contract).

Layers, lowest first (a unit may import its own layer or lower ones, never a higher one; no cycles at all):
``errors, utils`` → ``config, checkpoint`` → ``data, models`` → ``losses`` → ``engine, eval`` →
``prune, export, report`` → ``cli, demo, study``. Imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mtkd"
LAYERS = [
    ("errors", "utils", "mtkd"),
    ("config", "checkpoint"),
    ("data", "models"),
    ("losses",),
    ("engine", "eval"),
    ("prune", "export", "report"),
    ("cli", "demo", "study"),
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
MAX_LINES = 450


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mtkd"


def import_graph() -> dict[str, dict[str, list[str]]]:
    """``{unit: {imported unit: ["file:line", ...]}}`` over every ``mtkd`` import, at any depth of the code."""
    graph: dict[str, dict[str, list[str]]] = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent)
        unit = _unit(".".join(rel.with_suffix("").parts))
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = (
                    [node.module]
                    if node.module != "mtkd"
                    else [
                        f"mtkd.{a.name}"
                        if (PKG / a.name).exists() or (PKG / f"{a.name}.py").exists()
                        else "mtkd"
                        for a in node.names
                    ]
                )
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("mtkd.") and _unit(name) != unit:
                    graph.setdefault(unit, {}).setdefault(_unit(name), []).append(f"{rel}:{node.lineno}")
    return graph


def test_every_unit_has_a_layer():
    units = {
        p.stem if p.suffix == ".py" else p.name
        for p in PKG.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert units - set(LAYER) == set(), "add new top-level modules/sub-packages to LAYERS"


def test_imports_only_go_down_the_layers():
    bad = [
        f"{u} -> {v} ({where[0]})"
        for u, deps in import_graph().items()
        for v, where in deps.items()
        if LAYER.get(v, 99) > LAYER[u]
    ]
    assert not bad, bad


def test_no_import_cycles():
    graph = {u: set(d) for u, d in import_graph().items()}
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            assert state.get(v) != 1, f"import cycle: {' -> '.join([*path, u, v])}"
            if v not in state:
                visit(v, [*path, u])
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [])


def test_no_module_is_longer_than_the_limit():
    long = {
        str(f.relative_to(PKG.parent)): n
        for f in PKG.rglob("*.py")
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_checkpoint_dict_is_assembled_in_one_module():
    """Only mtkd/checkpoint.py writes a dict literal with the checkpoint's "model" and "names" keys."""
    offenders = []
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            keys = {k.value for k in getattr(node, "keys", ()) if isinstance(k, ast.Constant)}
            if isinstance(node, ast.Dict) and {"model", "names"} <= keys and f != PKG / "checkpoint.py":
                offenders.append(f"{f.relative_to(PKG.parent)}:{node.lineno}")
    assert not offenders, offenders
