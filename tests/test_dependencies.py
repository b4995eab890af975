"""pyproject.toml declares what the code imports, with floors, and nothing it does not use.

Why: a module that imports only because another package happens to pull it in breaks the day that
package stops (``tqdm``, ``tokenizers`` and ``jinja2`` were such). The imports are found mechanically:
an AST walk over every module the distribution ships (pyproject's package-dir), top-level names mapped
to distributions by ``importlib.metadata.packages_distributions()``.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections import defaultdict
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Declared, never imported by saejobs, and needed all the same: why each is there.
RUNTIME_ONLY = {
    "redis": "kombu's Redis transport: the broker",
    "kombu": "tasks/broker.py reads its Redis channel's internals (Celery hands the channel over)",
    "accelerate": "transformers refuses a gguf_file load without it",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(spec: str) -> tuple[str, str]:
    """(canonical name, version specifier) of a PEP 508 string such as ``psycopg[binary]>=3.1``."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)", spec)
    return canonical(m[1]), m[2].strip()


def declared() -> dict[str, dict[str, str]]:
    """{"": core dependencies, extra: its requirements}, each {canonical name: specifier}."""
    groups = {"": PYPROJECT["project"]["dependencies"], **PYPROJECT["project"].get("optional-dependencies", {})}
    return {group: dict(requirement(s) for s in specs) for group, specs in groups.items()}


def shipped_files() -> list[Path]:
    dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


@cache
def imports() -> dict[str, dict[Path, bool]]:
    """{top-level module: {file: imported at module level}} for every absolute import outside the stdlib."""
    found: dict[str, dict[Path, bool]] = defaultdict(dict)

    def visit(node: ast.AST, path: Path, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                module = name.split(".")[0]
                if module not in sys.stdlib_module_names and module != "saejobs":
                    found[module][path] = found[module].get(path, False) or top
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, path, inner)

    for path in shipped_files():
        visit(ast.parse(path.read_text(), str(path)), path, True)
    return found


@cache
def installed() -> dict[str, list[str]]:
    return packages_distributions()  # reads every installed distribution's RECORD: once


def distributions(module: str) -> list[str]:
    return [canonical(d) for d in installed().get(module, [])]


def test_the_walk_sees_the_code():
    found = imports()
    assert len(shipped_files()) > 40 and {"torch", "celery", "sqlalchemy", "huggingface_hub"} <= set(found)
    assert not any(found["pandas"].values()), "pandas (the notebook extra) is imported inside functions only"


def test_every_imported_module_is_declared():
    deps, missing = declared(), []
    extras = {g: names for g, names in deps.items() if g not in ("", "test")}
    for module, files in sorted(imports().items()):
        dists = distributions(module)
        where = ", ".join(sorted(str(p.relative_to(ROOT)) for p in files))
        if not dists:
            missing.append(f"{module} (imported by {where}) is not installed: which distribution ships it?")
        elif not any(d in deps[""] for d in dists):
            lazy_extra = [g for g, names in extras.items() if any(d in names for d in dists)]
            if not lazy_extra:
                missing.append(f"{module} ({'/'.join(dists)}, imported by {where}) is not in pyproject's dependencies")
            elif any(files.values()):
                missing.append(f"{module} is only in the {lazy_extra} extra, yet imported at module level by {where}")
    assert not missing, "\n".join(missing)


def test_every_dependency_has_a_floor():
    bare = [f"{g or 'dependencies'}: {name}" for g, names in declared().items()
            for name, spec in names.items() if not re.search(r"(>=|==|~=)\s*\d", spec)]
    assert not bare, f"requirements without a floor (>=, ==, ~=): {bare}"


def test_every_dependency_is_used():
    imported = {d for module in imports() for d in distributions(module)}
    core = set(declared()[""])
    unused = sorted(core - imported - set(RUNTIME_ONLY))
    assert not unused, ("declared in pyproject's dependencies but never imported (drop them, or say why in "
                        f"RUNTIME_ONLY): {unused}")
    stale = sorted(name for name in RUNTIME_ONLY if name in imported or name not in core)
    assert not stale, f"RUNTIME_ONLY entries that are imported or no longer declared: {stale}"


def test_constraints_pin_every_declared_dependency_within_its_floor():
    from packaging.specifiers import SpecifierSet

    lines = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    pins = dict((canonical(n), v) for n, _, v in (ln.partition("==") for ln in lines))
    wrong = [f"{g or 'dependencies'}: {name}{spec} pinned {pins.get(name, 'nowhere')}"
             for g, names in declared().items() for name, spec in names.items()
             if name not in pins or pins[name] not in SpecifierSet(spec)]
    assert not wrong, f"constraints.txt (python .ci/constraints.py --write) does not satisfy pyproject: {wrong}"
    assert "saejobs" not in pins and not any("+" in v for v in pins.values())
