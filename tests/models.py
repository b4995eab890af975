"""Tiny random models for tests: a Gemma 2 saved once as a transformers directory (Gemma 3's
tokenizer cut to its first ``VOCAB`` ids), and a Gemma 3 GGUF."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from saejobs.engine import paths

D_MODEL = 64
N_LAYERS = 4
# Gemma 3's tokenizer cut to 8192 ids: the full 262k vocabulary made the tiny model's head, sampling and
# tokenizer load cost more than its four layers (a queue sweep spent most of its time there).
VOCAB = 8192
KEEP_IDS = 494  # Gemma 3's ids below this: <pad> <eos> <bos> ..., <start_of_turn> 105, <end_of_turn> 106, bytes 238-493


def cut_vocabulary(tokenizer_json: Path, size: int) -> None:
    """A smaller BPE tokenizer.json that is still a real one: ids below ``KEEP_IDS`` unchanged (special and
    byte-fallback tokens), every one-character token of printable ASCII (and ``▁``), then Gemma's merges in
    their order wherever both parts are already kept, until ``size`` tokens; new ids dense in the original
    order. Normaliser, pre-tokeniser, post-processor and decoder stay, so any text still tokenises."""
    t = json.loads(tokenizer_json.read_text())
    model = t["model"]
    assert model["type"] == "BPE" and model["byte_fallback"], model["type"]
    old = model["vocab"]
    keep = {tok for tok, i in old.items() if i < KEEP_IDS}
    keep |= {c for c in [chr(x) for x in range(32, 127)] + ["\u2581", "\n"] if c in old}
    merges = []
    for a, b in model["merges"]:
        if len(keep) >= size:
            break
        if a in keep and b in keep and a + b in old:
            merges.append([a, b])
            keep.add(a + b)
    order = sorted(keep, key=old.__getitem__)
    new = {tok: (old[tok] if old[tok] < KEEP_IDS else KEEP_IDS + n) for n, tok in
           enumerate(tok for tok in order if old[tok] >= KEEP_IDS)} | {tok: old[tok] for tok in order if old[tok] < KEEP_IDS}
    assert sorted(new.values()) == list(range(len(new))), "ids must be dense"
    model["vocab"], model["merges"] = new, merges
    t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < KEEP_IDS]
    tokenizer_json.write_text(json.dumps(t, ensure_ascii=False))


def tiny_gemma2_dir(gemma3) -> Path:
    folder = paths.model_cache() / f"tiny-gemma-2-v{VOCAB}b-seed0"
    if (folder / "config.json").is_file():
        return folder
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=128,
                       num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=512, sliding_window=64, bos_token_id=gemma3.tokenizer.bos_token_id,
                       eos_token_id=gemma3.tokenizer.eos_token_id, pad_token_id=gemma3.tokenizer.pad_token_id)
    model = Gemma2ForCausalLM(cfg).eval()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    model.save_pretrained(tmp)
    gemma3.tokenizer.save_pretrained(tmp)
    cut_vocabulary(tmp / "tokenizer.json", VOCAB)
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
