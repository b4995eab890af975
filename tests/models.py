"""Tiny random models for tests: a Gemma 2 saved once as a transformers directory (Gemma 3's
tokenizer), and a Gemma 3 GGUF."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
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


def tiny_gemma3_gguf(path: Path) -> tuple[Path, np.ndarray]:
    """A tiny random Gemma 3 written as llama.cpp writes one (gguf's own writer and tensor names, norms
    stored +1, every matrix Q8_0): the GGUF load path in seconds. Returns the file and the float32
    ``model.layers.0.mlp.down_proj.weight`` it quantised."""
    import gguf
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=128,
                           sliding_window=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(cfg)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_sliding_window(cfg.sliding_window)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_freq_base(10000.0)
    for key, t in model.state_dict().items():
        if key == "lm_head.weight":  # tied to the embedding, as in Gemma's GGUFs
            continue
        name, a = names.get_name(key.removesuffix(".weight")) + ".weight", t.float().numpy()
        if key.endswith("norm.weight"):
            w.add_tensor(name, a + 1)
        else:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, model.state_dict()["model.layers.0.mlp.down_proj.weight"].numpy()
