"""Print every skipped test with its reason; exit 1 if one is not on the allow-list, if nothing ran, or if
the report holds fewer or more tests than were collected with no selection.

    python .ci/skips.py JUNIT.xml ALLOW-LIST [--collected "N tests collected in T s"] [--took SECONDS]

The allow-list holds one ``fnmatch`` pattern of test ids per line (``#`` starts a comment saying why).
A skip nobody listed is a test that silently stopped testing: CI fails on it.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def collected_count(line: str) -> int:
    """The count in pytest's ``--collect-only -q`` last line ("502 tests collected in 3.1s")."""
    m = re.match(r"\s*(\d+) tests? collected", line)
    if not m:
        raise SystemExit(f"ci: cannot read a collected count from {line!r}")
    return int(m.group(1))


def main(report: str, allow_file: str, collected: str | None = None, took: str | None = None) -> int:
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    cases = [c for s in suites for c in s.iter("testcase")]
    allowed = [line.split("#", 1)[0].strip() for line in Path(allow_file).read_text().splitlines()]
    allowed = [p for p in allowed if p]
    skipped, unexpected = [], []
    for c in cases:
        skip = c.find("skipped")
        if skip is None:
            continue
        test_id = f"{c.get('classname', '').replace('.', '/')}.py::{c.get('name')}"
        ok = any(fnmatch.fnmatch(test_id, p) for p in allowed)
        skipped.append(f"  {'allowed   ' if ok else 'UNEXPECTED'} {test_id}: {skip.get('message', '')}")
        if not ok:
            unexpected.append(test_id)
    ran = len(cases) - len(skipped)
    faults = [c for c in cases if c.get("classname", "").startswith("tests.faults.")]
    print(f"ci: {ran} tests ran, {len(skipped)} skipped; tests/faults: {len(faults)} tests in "
          f"{sum(float(c.get('time', 0)) for c in faults):.0f} s; all tests: {sum(float(c.get('time', 0)) for c in cases):.0f} s"
          f" of test time" + (f" in {took} s of wall time" if took else ""))
    if collected is not None and (want := collected_count(collected)) != len(cases):
        print(f"ci: the report holds {len(cases)} tests but {want} were collected with no selection (an inherited "
              f"PYTEST_ADDOPTS -k/-m/--deselect, or tests lost): every test must run", file=sys.stderr)
        return 1
    print("ci: skips (allow-list: .ci/skips-allowed)" + (":" if skipped else ": none"))
    print("\n".join(skipped)) if skipped else None
    if unexpected:
        print(f"ci: {len(unexpected)} unexpected skip(s): each is a test that did not test; fix its cause or "
              f"allow it in .ci/skips-allowed with the reason", file=sys.stderr)
        return 1
    return 0 if ran > 0 else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("allow_file")
    ap.add_argument("--collected")
    ap.add_argument("--took")
    a = ap.parse_args()
    sys.exit(main(a.report, a.allow_file, a.collected, a.took))
