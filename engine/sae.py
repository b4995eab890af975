"""JumpReLU SAEs as Gemma Scope defines them, loaded without SAELens.

Gemma Scope sets ``apply_b_dec_to_input: False``, so nothing is subtracted from the input:
``pre = x @ W_enc + b_enc``; ``acts = relu(pre) * (pre > threshold)``; ``recon = acts @ W_dec + b_dec``
(SAELens 6.54 ``saes/jumprelu_sae.py``).

The first load of a downloaded folder parses its original files and writes ``saejobs.safetensors``
beside them; later loads memory-map that file instead of unzipping and re-checking a multi-GB npz.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from saejobs.engine.formats import PARAM_NAMES, check_params, module_for, read_params
from saejobs.engine.registry.entry import SaeEntry

CONVERTED_FILE = "saejobs.safetensors"
CONVERTED_VERSION = "1"
SPARSE_BELOW = 1 / 32  # active share under which gathering decoder rows beats the dense matmul (bench/encode.py)


class JumpReLUSAE(torch.nn.Module):
    def __init__(self, params: dict[str, torch.Tensor], entry: SaeEntry):
        super().__init__()
        self.entry = entry
        for name in PARAM_NAMES:
            self.register_buffer(name, params[name])
        self.register_buffer("threshold_floor", self.threshold.clamp(min=0), persistent=False)

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(pre) * (pre > threshold)`` with the bias added and the mask applied in place.

        Bit-exact with the formula: the same matmul then add (a fused addmm rounds differently and
        flips the odd value sitting at its threshold); with the threshold floored at 0, ``pre <= floor``
        zeroes what relu or the threshold would, and NaN stays NaN.
        """
        flat = x.reshape(-1, x.shape[-1])
        pre = flat @ self.W_enc
        pre += self.b_enc
        return pre.masked_fill_(pre <= self.threshold_floor, 0).view(*x.shape[:-1], -1)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """``acts @ W_dec + b_dec``; on the CPU a sparse batch sums only its active decoder rows."""
        flat = acts.reshape(-1, acts.shape[-1])
        if flat.device.type == "cpu" and flat.numel() and int(torch.count_nonzero(flat)) < SPARSE_BELOW * flat.numel():
            rows, cols = flat.nonzero(as_tuple=True)  # row-major: rows ascending
            offsets = torch.searchsorted(rows, torch.arange(flat.shape[0], device=rows.device))
            out = torch.nn.functional.embedding_bag(cols, self.W_dec, offsets, mode="sum",
                                                    per_sample_weights=flat[rows, cols]) + self.b_dec
        else:
            out = torch.addmm(self.b_dec, flat, self.W_dec)
        return out.view(*acts.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def feature_vector(self, index: int) -> torch.Tensor:
        """The decoder row Neuronpedia steers along."""
        return self.W_dec[index]


def load_sae(entry: SaeEntry, folder: Path, *, device: str | torch.device = "cpu") -> JumpReLUSAE:
    folder = Path(folder)
    params = _load_converted(folder, entry)
    if params is None:
        params = read_params(folder, entry)
        _write_converted(folder, entry, params)
    return JumpReLUSAE(params, entry).to(device)


def _source_stamp(folder: Path, entry: SaeEntry) -> str:
    """Size and mtime of the original files: the converted copy is stale when either changes."""
    params = folder / module_for(entry.format).PARAMS_FILE
    st = params.stat()
    return f"{params.name}:{st.st_size}:{st.st_mtime_ns}"


def _load_converted(folder: Path, entry: SaeEntry) -> dict[str, torch.Tensor] | None:
    """The converted copy, memory-mapped; None when absent, stale or unreadable (then re-parse)."""
    path = folder / CONVERTED_FILE
    if not path.exists():
        return None
    try:
        meta, params = mmap_safetensors(path)
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("version") != CONVERTED_VERSION or meta.get("source") != _source_stamp(folder, entry):
        return None
    if set(params) != set(PARAM_NAMES):
        return None
    check_params(params, entry, path, finite=False)  # values were checked before the copy was written
    return params


def mmap_safetensors(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Zero-copy float32 tensors over a safetensors file (8-byte header length, JSON header, data).

    Pages are read on first touch, so steering, which needs a few decoder rows, never reads the rest.
    Copy-on-write mapping: tensors are writable without ever changing the file.
    """
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    start = 8 + n
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {info['dtype']}, converted copies are F32")
        begin, end = info["data_offsets"]
        count = (end - begin) // 4
        arr = np.memmap(path, dtype=np.float32, mode="c", offset=start + begin, shape=(count,))
        tensors[name] = torch.from_numpy(arr).view(*info["shape"])
    return meta, tensors


def _write_converted(folder: Path, entry: SaeEntry, params: dict[str, torch.Tensor]) -> None:
    """Written to a temporary file and renamed, so a crash never leaves a half copy behind."""
    meta = {"version": CONVERTED_VERSION, "source": _source_stamp(folder, entry), "entry": json.dumps(entry.to_json())}
    fd, tmp = tempfile.mkstemp(prefix=".saejobs-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in params.items()}, tmp, metadata=meta)
        os.replace(tmp, folder / CONVERTED_FILE)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
