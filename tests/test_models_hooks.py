"""Hook points on the real Gemma 3 270M and on a tiny Gemma 2."""

from __future__ import annotations

import time

import pytest
import torch

from engine.errors import SaejobsError, UsageError
from engine.hooks import capture, hook, parse_hook
from engine.models import load_model

pytestmark = pytest.mark.model


def ids(lm, text="The capital of France is"):
    return lm.tokenizer(text, return_tensors="pt").input_ids


def test_resid_post_is_the_decoder_layer_output(gemma3):
    x = ids(gemma3)
    with torch.no_grad():
        hidden = gemma3.model(input_ids=x, output_hidden_states=True).hidden_states
    for layer in (0, 6, 12):
        assert torch.equal(capture(gemma3, f"blocks.{layer}.hook_resid_post", x), hidden[layer + 1])


def test_resid_post_hook_modifies_the_residual_stream(gemma3):
    x = ids(gemma3)
    with torch.no_grad():
        base = gemma3.model(input_ids=x).logits
        with hook(gemma3, "blocks.6.hook_resid_post", lambda a: a + 0.0):
            same = gemma3.model(input_ids=x).logits
        v = torch.randn(gemma3.d_model) * 20
        with hook(gemma3, "blocks.6.hook_resid_post", lambda a: a + v):
            steered = gemma3.model(input_ids=x).logits
        with hook(gemma3, "blocks.6.hook_resid_post", lambda a: a + v):
            seen = capture(gemma3, "blocks.7.hook_resid_post", x)
    assert torch.equal(base, same)
    assert (steered - base).abs().max() > 1.0
    assert not torch.equal(seen, capture(gemma3, "blocks.7.hook_resid_post", x))  # and hook removed afterwards


def test_mlp_out_and_attn_z_widths(gemma3):
    x = ids(gemma3)
    cfg = gemma3.config
    assert capture(gemma3, "blocks.3.hook_mlp_out", x).shape == (1, x.shape[1], cfg.hidden_size)
    assert capture(gemma3, "blocks.3.attn.hook_z", x).shape == (1, x.shape[1], cfg.num_attention_heads * cfg.head_dim)


def test_mlp_out_is_what_the_layer_adds_after_attention(gemma3):
    """resid_post(L) = resid_mid(L) + mlp_out(L); resid_mid(L) = resid_post(L-1) + attention output."""
    x = ids(gemma3)
    layer = gemma3.layers[5]
    mid = []
    h = layer.pre_feedforward_layernorm.register_forward_hook(lambda m, i, o: mid.append(i[0]))
    try:
        mlp = capture(gemma3, "blocks.5.hook_mlp_out", x)
    finally:
        h.remove()
    post = capture(gemma3, "blocks.5.hook_resid_post", x)
    torch.testing.assert_close(mid[0] + mlp, post)


def test_a_hook_that_never_fires_is_an_error(gemma3):
    with pytest.raises(SaejobsError, match="never fired"):
        with hook(gemma3, "blocks.2.hook_resid_post", lambda a: a):
            pass


@pytest.mark.parametrize("name", ["blocks.2.hook_resid_pre", "layers.2.output", "blocks.x.hook_mlp_out"])
def test_bad_hook_names(name):
    with pytest.raises(UsageError, match="unknown hook"):
        parse_hook(name)


def test_layer_out_of_range(gemma3):
    with pytest.raises(UsageError, match="out of range"):
        capture(gemma3, "blocks.18.hook_resid_post", ids(gemma3))


def test_converted_copy_is_reused(gemma3):
    t0 = time.monotonic()
    again = load_model("gemma-3-270m-gguf")
    assert time.monotonic() - t0 < 30
    assert again.revision == gemma3.revision == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert again.model_id == "google/gemma-3-270m"


def test_greedy_text_is_coherent(gemma3):
    from engine.generate import Row, Sampling, generate, output_text, prompt_ids

    p = prompt_ids(gemma3.tokenizer, "The capital of France is")
    out = generate(gemma3, [Row(p, 0)], Sampling(n_tokens=12))[0]
    assert "France" in output_text(gemma3.tokenizer, p, out.token_ids)[len("The capital of France is"):]


def test_tiny_gemma2_hooks(tiny_gemma2):
    assert type(tiny_gemma2.model).__name__ == "Gemma2ForCausalLM"
    x = ids(tiny_gemma2)
    with torch.no_grad():
        hidden = tiny_gemma2.model(input_ids=x, output_hidden_states=True).hidden_states
    assert torch.equal(capture(tiny_gemma2, "blocks.1.hook_resid_post", x), hidden[2])
    assert capture(tiny_gemma2, "blocks.1.attn.hook_z", x).shape[-1] == 4 * 16
    assert tiny_gemma2.revision.startswith("dir:")
