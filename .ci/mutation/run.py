"""Mutation check (issue 25 item 4): mutmut over one module with that module's fast tests.

mutmut names a mutant by the mutated file's path (``saejobs/engine/request.py`` -> ``saejobs.engine.request``)
and compares that name with the function's ``__module__`` at run time, so it needs the package laid out
as it is imported. The repository maps ``saejobs.engine`` to ``engine/`` (pyproject's package-dir), so this
script stages a copy in that layout under ``.mutation/<module>/`` (ignored by git; the checkout is never
mutated), runs ``mutmut run`` there, and prints the killed share. mutmut runs the tests in-process and forks
per mutant, so a module's few hundred mutants take minutes, not the hours a subprocess per mutant costs.

    pip install mutmut==3.8.1
    python .ci/mutation/run.py engine/request.py            # or: all
    python .ci/mutation/run.py engine/request.py --show     # diffs of the survivors

Equivalent mutants (no test can tell them apart from the original) are listed with their reason in
``.ci/mutation/equivalent/<module>.toml`` (``"mutant name" = "why"``) and counted as killed only through
that list. ``FUNCTIONS`` narrows a module to the part the issue names (generate.py: its sampling).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / ".mutation"
PACKAGES = {"cli": "cli", "db": "db", "engine": "engine", "tasks": "tasks", "worker": "worker"}

# Each module with the fast tests that own it (no Celery worker, no model subprocess).
MODULES: dict[str, list[str]] = {
    "engine/request.py": ["tests/test_request.py", "tests/test_grid_slice.py", "tests/test_mutation_request.py",
                          "tests/test_steers_request.py"],
    "engine/steering.py": ["tests/test_steering.py", "tests/test_mutation_steering.py"],
    "engine/interventions.py": ["tests/test_steers_request.py"],
    # test_score.py / test_generate.py load Gemma 3 270M (61 s to collect statistics, then again for every
    # mutant that reaches the scoring group): these modules' fast tests are their mutation files.
    "engine/score.py": ["tests/test_mutation_score.py"],
    "engine/generate.py": ["tests/test_mutation_generate.py", "tests/test_sampling_batched.py"],
    "db/jobs.py": ["tests/test_db.py", "tests/test_db_scale.py", "tests/test_mutation_jobs.py"],
}

# Only these functions count (a substring of mutmut's mangled name); absent: the whole module.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "engine/generate.py": ("ǁTokenSamplerǁ", "ǁRowStreamsǁ", "x_draw", "x__draw_exponential", "x__draw_multinomial",
                           "x__exponential_trick_holds"),
}

PYPROJECT = """\
[tool.mutmut]
source_paths = ["saejobs"]
only_mutate = [{only}]
pytest_add_cli_args = ["-p", "no:xdist", "-p", "no:cacheprovider", "-m", "not postgres"]
pytest_add_cli_args_test_selection = [{tests}]
debug = false

[tool.pytest.ini_options]
filterwarnings = [
    "error::DeprecationWarning:saejobs",
    "error::PendingDeprecationWarning:saejobs",
    "error::FutureWarning:saejobs",
]
markers = [
    "model: needs the real Gemma 3 270M (loaded once per session)",
    "postgres: needs PostgreSQL on 127.0.0.1:5432",
]
"""


def undecorated(source: str) -> str:
    """mutmut 3 leaves decorated functions unmutated (a decorator runs at definition time), which would hide
    db/jobs.py's every ``@retried`` function. So in the staged copy a top-level ``@d`` / ``def f`` becomes a
    plain ``def f`` and ``f = d(f)`` at the end of the module: the same object under the same name by the
    time anything calls it, now with mutmut's trampoline inside the decorator."""
    lines, out, wrap, pending = source.splitlines(), [], [], []
    for line in lines:
        if line.startswith("@") and not line.startswith("@dataclass"):
            pending.append(line[1:].strip())
            continue
        if pending and line.startswith("def "):
            name = line[4:].split("(", 1)[0].strip()
            wrap.extend(f"{name} = {d}({name})" for d in reversed(pending))
        elif pending:
            out.extend("@" + d for d in pending)
        pending = []
        out.append(line)
    return "\n".join(out + ["", "# .ci/mutation/run.py: the decorators, applied after mutmut's trampolines", *wrap, ""])


def stage(module: str) -> Path:
    """A fresh copy of the package in its import layout, with the tests, for one module's run."""
    where = STAGE / slug(module)
    if where.exists():
        shutil.rmtree(where)
    pkg = where / "saejobs"
    shutil.copytree(ROOT / "saejobs", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name, folder in PACKAGES.items():
        shutil.copytree(ROOT / folder, pkg / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", where / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    tests = [t for t in MODULES[module] if (ROOT / t).exists()]
    folder, _, rest = module.partition("/")
    target = pkg / PACKAGES[folder] / rest
    target.write_text(undecorated(target.read_text()))
    only = f'"saejobs/{PACKAGES[folder]}/{rest}"'
    (where / "pyproject.toml").write_text(PYPROJECT.format(only=only, tests=", ".join(f'"{t}"' for t in tests)))
    return where


def slug(module: str) -> str:
    return module.replace("/", "-").removesuffix(".py")


def equivalents(module: str) -> dict[str, str]:
    """mutant name -> why no test can kill it, from equivalent/<module>.toml."""
    path = Path(__file__).parent / "equivalent" / f"{slug(module)}.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


def run(module: str, show: bool) -> dict:
    where = stage(module)
    # torch's thread pool hangs in mutmut's forked children: every mutant reaching torch would "time out"
    # and count as killed. One thread each keeps the verdicts honest (and the run quicker).
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=where, env=env, check=False)
    subprocess.run([sys.executable, "-m", "mutmut", "export-cicd-stats"], cwd=where, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=where, env=env,
                             check=True, capture_output=True, text=True).stdout
    status: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name and any(f in name for f in FUNCTIONS.get(module, ("",))):
            status[name] = state
    explained = equivalents(module)
    survivors = sorted(n for n, s in status.items() if s == "survived" and n not in explained)
    killed = sum(1 for s in status.values() if s in ("killed", "timeout", "caught by type check"))
    counted = sum(1 for s in status.values() if s not in ("skipped", "not checked"))
    equivalent = sum(1 for n, s in status.items() if s == "survived" and n in explained)
    other = {s for s in status.values()} - {"killed", "survived", "timeout", "caught by type check"}
    summary = {"module": module, "mutants": len(status), "killed": killed, "equivalent": equivalent,
               "survived": len(survivors), "timeouts": sum(1 for s in status.values() if s == "timeout"),
               "no_tests": sum(1 for s in status.values() if s == "no tests"),
               "share_killed": round((killed + equivalent) / counted, 4) if counted else 0.0,
               "other_states": sorted(other)}
    if show:
        for name in survivors:
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=where, env=env,
                                  capture_output=True, text=True).stdout
            print(diff)
    print("survivors:", " ".join(survivors) if survivors else "none")
    print(json.dumps(summary))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="one of " + ", ".join(MODULES) + ", or all")
    parser.add_argument("--show", action="store_true", help="print each survivor's diff")
    parser.add_argument("--goal", type=float, default=0.85, help="exit 1 below this killed share")
    args = parser.parse_args()
    modules = list(MODULES) if args.module == "all" else [args.module]
    if any(m not in MODULES for m in modules):
        print(f"mutation: unknown module {args.module!r}; one of {', '.join(MODULES)} or all", file=sys.stderr)
        return 2
    results = [run(m, args.show) for m in modules]
    return 0 if all(r["share_killed"] >= args.goal for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
