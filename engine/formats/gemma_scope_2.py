"""Gemma Scope 2 (Gemma 3) SAEs: ``params.safetensors`` plus ``config.json``.

Layout (SAELens 6.54 ``gemma_3_sae_huggingface_loader``): lowercase ``w_enc`` (d_model, d_sae),
``w_dec`` (d_sae, d_model), ``b_enc``, ``b_dec``, ``threshold``; the config carries
``architecture: "jump_relu"``, ``model_name`` and ``hf_hook_point_in``. SAELens casts the weights to
float32 on load, so half-precision files are accepted and widened the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saejobs.engine.errors import FormatError
from saejobs.engine.registry.entry import SaeFormat

PARAMS_FILE = SaeFormat.GEMMA_SCOPE_2.params_file
CONFIG_FILE = SaeFormat.GEMMA_SCOPE_2.config_file
FILES = SaeFormat.GEMMA_SCOPE_2.files
ALLOWED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
CONFIG_TYPES = {"architecture": str, "model_name": str, "hf_hook_point_in": str}


def read(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / PARAMS_FILE
    try:
        return load_file(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path}: truncated or not a safetensors file ({e})") from None


def read_config(folder: Path) -> dict | None:
    """The folder's config.json, type-checked; None when the folder has none (SAELens infers it)."""
    path = folder / CONFIG_FILE
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: expected a JSON object, found {type(config).__name__}")
    for key, kind in CONFIG_TYPES.items():
        if key in config and not isinstance(config[key], kind):
            raise FormatError(f"{path}: '{key}' must be a {kind.__name__}, found {type(config[key]).__name__}")
    if config.get("architecture", "jump_relu") != "jump_relu":
        raise FormatError(f"{path}: architecture '{config['architecture']}' is not jump_relu")
    return config
