"""Session-wide: one converted Gemma 3 270M shared by every test (and every worker subprocess)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests give each case an empty $SAEJOBS_HOME, but the converted model (a minute to make) is shared.
os.environ.setdefault("SAEJOBS_MODEL_CACHE", str(Path.home() / ".cache" / "saejobs" / "models"))


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M from the PyPI package, loaded once (first run converts the GGUF: ~1 min)."""
    from engine.models import load_model

    return load_model("gemma-3-270m-gguf")


@pytest.fixture(scope="session")
def tiny_gemma2_dir(gemma3) -> Path:
    """A small random Gemma 2 saved as a transformers directory: the Gemma 2 code path, quickly."""
    from tests.models import tiny_gemma2_dir as make

    return make(gemma3)


@pytest.fixture(scope="session")
def tiny_gemma2(tiny_gemma2_dir):
    from engine.models import load_model

    return load_model(str(tiny_gemma2_dir))
