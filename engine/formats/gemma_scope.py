"""Gemma Scope (Gemma 2) SAEs: one ``params.npz`` per folder, no config.

Layout (SAELens 6.54 ``gemma_2_sae_huggingface_loader``; Gemma Scope model card): keys ``W_enc``
(d_model, d_sae), ``W_dec`` (d_sae, d_model), ``b_enc`` (d_sae), ``b_dec`` (d_model), ``threshold``
(d_sae), all float32.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from saejobs.engine.errors import FormatError
from saejobs.engine.registry.entry import SaeFormat

PARAMS_FILE = SaeFormat.GEMMA_SCOPE.params_file
FILES = SaeFormat.GEMMA_SCOPE.files
ALLOWED_DTYPES = (torch.float32,)
KEYS = {"W_enc": "W_enc", "W_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}


def read(folder: Path) -> dict[str, torch.Tensor]:
    """Read the arrays as stored, under their file names, refusing pickled objects."""
    path = folder / PARAMS_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: torch.from_numpy(np.ascontiguousarray(npz[name])) for name in npz.files}
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise FormatError(f"{path}: holds pickled object arrays; refused (never unpickled)") from None
        raise FormatError(f"{path}: not a valid .npz ({e})") from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise FormatError(f"{path}: truncated or not an .npz file ({e})") from None
