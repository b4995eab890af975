"""Print (or --write, or --check) constraints.txt: the exact version, in this environment, of every
distribution that `pip install -e '.[test]'` pulls in.

Why: CI installs whatever resolves today; constraints.txt keeps the set it last passed with, so anyone
can install exactly that (`pip install -c constraints.txt -e .`, README "Set up"). Run it where the test
command has just passed. The closure is read from pyproject.toml and the installed distributions'
metadata (what `pip freeze` lists, filtered to what saejobs needs), so it needs no network.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("# The versions CI last passed with (python .ci/constraints.py --write where the README's test command"
          " passed).\n# Install exactly these: pip install torch==2.13.0 && pip install -c constraints.txt"
          " -e '.[test]'\n")


def closure(roots: list[str]) -> dict[str, str]:
    """{distribution name: installed version} for ``roots`` and everything they require, markers applied."""
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()  # (distribution, extra) already expanded
    todo = [(Requirement(r), "") for r in roots]  # (requirement, the extra of the requirer it came from)
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            sys.exit(f"{req.name} (required as {req}) is not installed here: run the README's install first")
        name = dist.metadata["Name"]
        for wanted in [""] + sorted(req.extras):
            key = (canonicalize_name(name), wanted)
            if key in seen:
                continue
            seen.add(key)
            found[name] = dist.version.split("+")[0]  # 2.13.0+cpu: the local label names the index, not the code
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return found


def render() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = closure(project["dependencies"] + project["optional-dependencies"]["test"])
    pins.pop("saejobs", None)
    return HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items(), key=lambda p: canonicalize_name(p[0])))


def main(args: list[str]) -> int:
    text, path = render(), ROOT / "constraints.txt"
    if "--write" in args:
        path.write_text(text)
    elif "--check" in args:
        old = path.read_text() if path.is_file() else ""
        changed = sorted(set(text.splitlines()) ^ set(old.splitlines()))
        if changed:
            print("constraints.txt differs from this environment:\n  " + "\n  ".join(changed))
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
