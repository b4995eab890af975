"""Where saejobs keeps things on disk: one root, overridable for tests and clusters."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$SAEJOBS_HOME``, default ``~/.cache/saejobs``."""
    return Path(os.environ.get("SAEJOBS_HOME") or Path.home() / ".cache" / "saejobs")


def sae_cache() -> Path:
    """Downloaded SAE folders, laid out like the Hub: ``saes/{repo_id}/{folder}/``."""
    return home() / "saes"


def model_cache() -> Path:
    """Converted model copies (e.g. GGUF turned into safetensors once)."""
    return home() / "models"
