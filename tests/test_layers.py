"""The layers as a checked contract: cli → worker → tasks → db → engine, imports only downward, and no
import circles between modules (function-level imports included: a lazy import is still a dependency).

Read from the source with ``ast`` (no import runs), so the check costs nothing and sees every import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository folder of each layer, top first; a layer may import its own and every layer below it.
LAYERS = ("cli", "saejobs", "worker", "tasks", "db", "engine")
RANK = {"cli": 4, "saejobs": 4, "worker": 3, "tasks": 2, "db": 1, "engine": 0}  # saejobs/: the notebook API, a peer of cli


def modules() -> dict[str, Path]:
    """Import name (``saejobs.tasks.runner``) → file, for every module of every layer."""
    out = {}
    for folder in LAYERS:
        base = ROOT / folder
        for py in base.rglob("*.py"):
            if "migrations" in py.parts:
                continue  # run by Alembic, not imported
            rel = py.relative_to(base).with_suffix("").parts
            name = ".".join(("saejobs",) + (() if folder == "saejobs" else (folder,)) + rel)
            out[name.removesuffix(".__init__")] = py
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK and parts[1] != "saejobs" else "saejobs"


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of other saejobs modules (``from saejobs.x import y`` counts as x.y when y is
    a module, else as x)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            for t in targets:
                if t.split(".")[0] != "saejobs":
                    continue
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_layer_folder_is_found():
    mods = modules()
    assert {layer(m) for m in mods} == set(RANK)
    assert "saejobs.tasks.runner" in mods and "saejobs.engine.registry" in mods and "saejobs" in mods


def test_imports_only_go_down_the_layers():
    graph = imports(modules())
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts if RANK[layer(t)] > RANK[layer(m)])
    assert upward == [], "imports against the layers (cli → worker → tasks → db → engine):\n" + "\n".join(upward)


def test_no_import_circles():
    found = cycles(imports(modules()))
    assert found == [], "import circles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_the_checks_catch_an_upward_import_and_a_circle():
    """The checker itself bites: an engine module importing tasks, and two modules importing each other."""
    graph = {"saejobs.engine.a": {"saejobs.tasks.b"}, "saejobs.tasks.b": {"saejobs.engine.a"}}
    assert cycles(graph) == [["saejobs.engine.a", "saejobs.tasks.b"]]
    assert RANK[layer("saejobs.tasks.b")] > RANK[layer("saejobs.engine.a")]
