"""SAE file formats: one module per format, one validation for all.

Each format module reads its files into tensors under its own key names (``KEYS`` maps them onto
``W_enc, W_dec, b_enc, b_dec, threshold``); ``read_params`` then checks every array against the
registry entry, so a wrong download fails here with a message that names the file and the array.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from saejobs.engine.errors import FormatError, IntegrityError
from saejobs.engine.formats import gemma_scope, gemma_scope_2
from saejobs.engine.registry.entry import SaeEntry, SaeFormat

FORMATS: dict[str, ModuleType] = {SaeFormat.GEMMA_SCOPE: gemma_scope, SaeFormat.GEMMA_SCOPE_2: gemma_scope_2}
assert set(FORMATS) == set(SaeFormat), "every SaeFormat needs a reader"
PARAM_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def module_for(fmt: str) -> ModuleType:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise FormatError(f"unknown SAE format '{fmt}' (known: {', '.join(FORMATS)})") from None


def expected_shapes(entry: SaeEntry) -> dict[str, tuple[int, ...]]:
    m, s = entry.d_model, entry.d_sae
    return {"W_enc": (m, s), "W_dec": (s, m), "b_enc": (s,), "b_dec": (m,), "threshold": (s,)}


def read_params(folder: Path, entry: SaeEntry) -> dict[str, torch.Tensor]:
    """The five JumpReLU arrays of ``entry`` from ``folder``, checked and as float32."""
    fmt = module_for(entry.format)
    raw = fmt.read(folder)
    source = folder / fmt.PARAMS_FILE
    missing = [k for k in fmt.KEYS if k not in raw]
    if missing:
        raise FormatError(f"{source}: missing arrays {', '.join(missing)} (found: {', '.join(sorted(raw))})")
    extra = sorted(set(raw) - set(fmt.KEYS))
    if extra:
        raise FormatError(f"{source}: unexpected arrays {', '.join(extra)}")
    params = {fmt.KEYS[k]: v for k, v in raw.items()}
    check_params(params, entry, source, fmt.ALLOWED_DTYPES)
    return {k: params[k].to(torch.float32) for k in PARAM_NAMES}


def check_params(
    params: dict[str, torch.Tensor], entry: SaeEntry, source: Path, dtypes=(torch.float32,), *, finite: bool = True
) -> None:
    for name, shape in expected_shapes(entry).items():
        t = params[name]
        found = tuple(t.shape)
        if found != shape:
            hint = " (transposed?)" if len(shape) == 2 and found == shape[::-1] else ""
            raise FormatError(f"{source}: {name} has shape {found}, expected {shape}{hint}")
        if t.dtype not in dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise FormatError(f"{source}: {name} has dtype {str(t.dtype).removeprefix('torch.')}, expected {allowed}")
        if finite and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise IntegrityError(f"{source}: {name} holds {bad} non-finite values (NaN or inf)")
