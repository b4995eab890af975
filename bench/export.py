"""Exports of a 100k-row sweep: time and peak memory of each format, and whether each says what is stored.

    python bench/export.py [--rows 100000] [--fast]

A sweep of ``--rows`` scored generations (400-character outputs, 32 tokens with logprobs each; written
straight to a fresh SQLite database, no model) is exported by the CLI, one process per format:
``results --json``, ``results --csv``, ``results --format parquet``, ``report --html``, and a search
whose round is that sweep (``results SEARCH --format parquet``, every round's rows). Each process's
peak RSS (``wait4``) is printed beside its time and output size; the goal is < 300 MB each. Every
output is checked against a plain sqlite3 query (rows, ids or keys, in order) before its figure is
printed. Exits 1 when a check fails or a peak reaches the goal. ``--fast``: 1,200 rows (more than one
page of reads), so that a test (tests/test_benches.py) runs the whole script in seconds; its figures say nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOAL_MB = 300


# Peak RSS survives exec (Linux keeps the old image's high-water mark), so each export is started by a
# small interpreter rather than by this one, which holds the stored sweep's rows.
SPAWN = """
import os, sys
pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "saejobs.cli.main", *sys.argv[1:]], os.environ)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(args: list[str], out: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one CLI process writing its stdout to ``out``."""
    t0 = time.perf_counter()
    with out.open("wb") as f:
        p = subprocess.run([sys.executable, "-c", SPAWN, *args], cwd=ROOT, stdout=f, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise SystemExit(f"saejobs {' '.join(args)}: exit {p.returncode}: {p.stderr[-500:]}")
    return time.perf_counter() - t0, int(p.stderr.strip().splitlines()[-1]) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--fast", action="store_true", help="1,200 rows: the script and its checks, in seconds")
    args = p.parse_args()
    if args.fast:
        args.rows = 1_200
    tmp = Path(tempfile.mkdtemp(prefix="saejobs-bench-export-"))
    db = tmp / "saejobs.db"
    os.environ.update(SAEJOBS_HOME=str(tmp), SAEJOBS_DB=str(db))
    from tests.exportdata import stored_search, stored_sweep

    t0 = time.perf_counter()
    sweep = stored_sweep(args.rows)
    search = stored_search([sweep])
    print(f"stored {args.rows} generations in {time.perf_counter() - t0:.1f} s "
          f"(database {db.stat().st_size / 1e6:.0f} MB)")
    plain = sqlite3.connect(db)
    want = plain.execute("SELECT g.id, g.config_key FROM generations g JOIN sweeps s ON s.id = g.sweep_id "
                         "WHERE s.job_id = ? ORDER BY g.id", (sweep,)).fetchall()
    ids, keys = [w[0] for w in want], [w[1] for w in want]

    def check_json(out: Path) -> bool:
        return [r["id"] for r in json.loads(out.read_text())] == ids

    def check_csv(out: Path) -> bool:
        with out.open(newline="") as f:
            return [r["config_key"] for r in csv.DictReader(f)] == keys

    def check_parquet(path: Path, round_: str | None) -> bool:
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["id", "config_key", "round"])
        return (t.column("id").to_pylist() == ids and t.column("config_key").to_pylist() == keys
                and set(t.column("round").to_pylist()) == {round_})

    def check_report(out: Path, page: Path) -> bool:  # every row here is listed (a DEFAULT or at a scored point)
        info = json.loads(out.read_text())
        return info["generations"] == len(ids) and page.read_text().count('<div class="gen">') == len(ids)

    cases = [
        ("JSON", ["results", sweep, "--json"], lambda o: check_json(o), None),
        ("CSV", ["results", sweep, "--csv"], lambda o: check_csv(o), None),
        ("Parquet", ["results", sweep, "--format", "parquet", "--out", str(tmp / "s.parquet")],
         lambda o: check_parquet(tmp / "s.parquet", None), tmp / "s.parquet"),
        ("report", ["report", sweep, "--html", str(tmp / "r.html"), "--json"],
         lambda o: check_report(o, tmp / "r.html"), tmp / "r.html"),
        ("search", ["results", search, "--format", "parquet", "--out", str(tmp / "q.parquet")],
         lambda o: check_parquet(tmp / "q.parquet", sweep), tmp / "q.parquet"),  # its round: the sweep
    ]
    failed = []
    print(f"{'format':<8} {'time':>8} {'peak RSS':>10} {'output':>9}")
    for name, cli_args, check, file in cases:
        out = tmp / f"{name}.out"
        secs, peak = run(cli_args, out)
        if not check(out):
            failed.append(f"{name}: the export differs from the stored rows")
            continue
        size = (file or out).stat().st_size / 1e6
        print(f"{name:<8} {secs:>7.1f}s {peak:>7.0f} MB {size:>6.1f} MB")
        if peak >= GOAL_MB:
            failed.append(f"{name}: peak RSS {peak:.0f} MB, goal < {GOAL_MB} MB")
    for f in failed:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
