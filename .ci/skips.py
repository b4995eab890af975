"""Print every skipped test with its reason; exit 1 if one is not on the allow-list (or nothing ran).

    python .ci/skips.py JUNIT.xml ALLOW-LIST

The allow-list holds one ``fnmatch`` pattern of test ids per line (``#`` starts a comment saying why).
A skip nobody listed is a test that silently stopped testing: CI fails on it.
"""

from __future__ import annotations

import fnmatch
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(report: str, allow_file: str) -> int:
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
          f"{sum(float(c.get('time', 0)) for c in faults):.0f} s")
    print("ci: skips (allow-list: .ci/skips-allowed)" + (":" if skipped else ": none"))
    print("\n".join(skipped)) if skipped else None
    if unexpected:
        print(f"ci: {len(unexpected)} unexpected skip(s): each is a test that did not test; fix its cause or "
              f"allow it in .ci/skips-allowed with the reason", file=sys.stderr)
        return 1
    return 0 if ran > 0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
