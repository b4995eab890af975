"""A tiny random Gemma 2, saved once as a real transformers directory (Gemma 3's tokenizer)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from saejobs.engine import paths

D_MODEL = 64
N_LAYERS = 4


def tiny_gemma2_dir(gemma3) -> Path:
    folder = paths.model_cache() / "tiny-gemma-2-seed0"
    if (folder / "config.json").is_file():
        return folder
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=gemma3.config.vocab_size, hidden_size=D_MODEL, intermediate_size=128,
                       num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=512, sliding_window=64, bos_token_id=gemma3.tokenizer.bos_token_id,
                       eos_token_id=gemma3.tokenizer.eos_token_id, pad_token_id=gemma3.tokenizer.pad_token_id)
    model = Gemma2ForCausalLM(cfg).eval()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    model.save_pretrained(tmp)
    gemma3.tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
