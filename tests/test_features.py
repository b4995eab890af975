"""Finding features (issue 29): ``features top`` against a plain reference (a forward hook on the
transformers layer and JumpReLU from the SAE file's own tensors), ``features similar`` against NumPy,
Neuronpedia URLs for ``--feature``/``--sae``, the path from discovery to a sweep, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saejobs.engine import demo, features
from tests.dbfixtures import home  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import one_clean_line, saejobs

DEMO_TEXT = "I walked my dog by the ocean while listening to music about space"


def plain_acts(model, layer: int, ids: list[int], params: dict) -> np.ndarray:
    """JumpReLU activations (T, d_sae) without saejobs: a forward hook on transformers' decoder layer
    ``layer`` (its output: the residual stream after it) over the whole unpadded sequence, then
    ``pre = x @ W_enc + b_enc; relu(pre) * (pre > threshold)`` in float64 from the file's tensors."""
    seen = []
    handle = model.model.layers[layer].register_forward_hook(
        lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    x = seen[0][0].double().numpy()
    w = {k.lower(): v for k, v in params.items()}
    pre = x @ w["w_enc"].astype(np.float64) + w["b_enc"].astype(np.float64)
    return np.maximum(pre, 0) * (pre > w["threshold"].astype(np.float64))


def check_against_reference(got: dict, acts: np.ndarray, ids: list[int], k: int, specials: set[int]) -> None:
    """Per kept token, the features saejobs lists are the reference's k largest positive activations, in
    order, with the reference's values; over the text, frequency and the largest activation match."""
    kept = [p for p, t in enumerate(ids) if p != 0 and t not in specials]
    assert [t["position"] for t in got["per_token"]] == kept
    freq: dict[int, int] = {}
    for t in got["per_token"]:
        row = acts[t["position"]]
        order = np.argsort(-row, kind="stable")[:k]
        want = [(int(i), float(row[i])) for i in order if row[i] > 0]
        assert [f["index"] for f in t["features"]] == [i for i, _ in want], t["position"]
        for f, (_, v) in zip(t["features"], want):
            assert f["activation"] == pytest.approx(v, rel=1e-4, abs=1e-4)
        for i, _ in want:
            freq[i] = freq.get(i, 0) + 1
    assert {f["index"]: f["frequency"] for f in got["features"]} == freq
    for f in got["features"]:
        col = acts[kept, f["index"]]
        assert f["mean_activation"] == pytest.approx(col.mean(), rel=1e-4, abs=1e-4)
        tops = [t for t in got["per_token"] if any(g["index"] == f["index"] for g in t["features"])]
        best = max(acts[t["position"], f["index"]] for t in tops)
        assert f["max_activation"] == pytest.approx(best, rel=1e-4)
    counts = [f["frequency"] for f in got["features"]]
    assert counts == sorted(counts, reverse=True)


@pytest.fixture(scope="module")
def demo_file(demo_mirror) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(demo_mirror / demo.ENTRY.repo_id / demo.ENTRY.folder / "params.safetensors"))


@pytest.mark.model
def test_top_features_of_the_demo_equal_a_plain_reference_and_its_words_come_out_on_top(gemma3, demo_mirror,
                                                                                          demo_file):
    from saejobs.engine.generate import prompt_ids
    from saejobs.engine.sae import load_sae

    sae = load_sae(demo.ENTRY, demo_mirror / demo.ENTRY.repo_id / demo.ENTRY.folder)
    ids = prompt_ids(gemma3.tokenizer, DEMO_TEXT)
    got = features.top_by_token(gemma3, sae, demo.ENTRY.hook_name, ids, 10)
    acts = plain_acts(gemma3.model, demo.LAYER, ids, demo_file)
    check_against_reference(got, acts, ids, 10, set(gemma3.tokenizer.all_special_ids))
    # each word's feature is among the ten most active at its word, and the only word feature firing there
    for f, word in enumerate(demo.WORDS):
        at = next(t for t in got["per_token"] if t["token"] == word)
        listed = [g["index"] for g in at["features"]]
        assert f in listed and not set(listed) & (set(range(len(demo.WORDS))) - {f}), (word, listed)
        assert next(u for u in got["features"] if u["index"] == f)["max_position"] == at["position"]
    # densities on the evaluation text equal the plain reference's firing shares; with Neuronpedia's default
    # filter (0.01) the always-on directions go and each word's feature comes out on top at its word
    from saejobs.engine import evaluate

    density = features.densities(gemma3, sae, demo.ENTRY.hook_name)
    windows = evaluate.windows(gemma3.tokenizer)[:features.DENSITY_TOKENS // 128]
    fired = sum((plain_acts(gemma3.model, demo.LAYER, w.tolist(), demo_file)[1:] > 0).sum(0) for w in windows)
    n = len(windows) * 128  # float32 against float64: a token at its threshold may flip, one token at most
    assert np.abs(density.numpy() - fired / n).max() <= 1.01 / n and (np.abs(density.numpy() - fired / n) > 0).sum() <= 3
    dense = {i for i in range(sae.d_sae) if density[i] > 0.01}
    assert dense and not dense & set(range(len(demo.WORDS)))
    filtered = features.top_by_token(gemma3, sae, demo.ENTRY.hook_name, ids, 10, density=density,
                                     density_threshold=0.01)
    for t, f in zip(filtered["per_token"], got["per_token"]):
        assert t["features"] == [g for g in f["features"] if g["index"] not in dense]
    for f, word in enumerate(demo.WORDS):
        at = next(t for t in filtered["per_token"] if t["token"] == word)
        assert at["features"][0]["index"] == f, (word, at["features"])


def test_top_features_of_a_gemma_scope_2_sae_equal_a_plain_reference(tmp_path, tiny_gemma2):
    from safetensors.numpy import load_file

    from saejobs.engine.generate import prompt_ids
    from saejobs.engine.sae import load_sae

    s = make(tmp_path, fmt="gemma-scope-2", d_model=64, d_sae=512, layer=2)
    sae = load_sae(s.entry, s.mirror_folder)
    ids = prompt_ids(tiny_gemma2.tokenizer, "a text of some forty bytes, say, or more")
    params = load_file(str(s.mirror_folder / "params.safetensors"))
    acts = plain_acts(tiny_gemma2.model, 2, ids, params)
    features.ENCODE_CHUNK_ELEMENTS, old = 512 * 7, features.ENCODE_CHUNK_ELEMENTS  # chunks of 7 tokens: seams tested
    try:
        got = features.top_by_token(tiny_gemma2, sae, s.entry.hook_name, ids, 6)
    finally:
        features.ENCODE_CHUNK_ELEMENTS = old
    check_against_reference(got, acts, ids, 6, set(tiny_gemma2.tokenizer.all_special_ids))
    assert got["kept_tokens"] == len(ids) - 1 and len(got["features"]) > 6
    with_bos = features.top_by_token(tiny_gemma2, sae, s.entry.hook_name, ids, 6, ignore_bos=False)
    assert with_bos["per_token"][0]["position"] == 0 and with_bos["per_token"][0]["special"]


def test_similar_features_equal_numpy_cosine_and_nan_rows_go_last():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(300, 24)).astype(np.float32)
    w[17] = w[5] * 2 + rng.normal(size=24).astype(np.float32) * 0.01  # a near twin of 5
    w[40] = np.nan
    w64 = np.nan_to_num(w.astype(np.float64), nan=1.0)
    cos = w64 @ w64[5] / (np.linalg.norm(w64, axis=1) * np.linalg.norm(w64[5]))
    cos[40] = -np.inf  # NaN in the decoder: below every real similarity
    want = np.argsort(-cos, kind="stable")[:12]
    got = features.similar(torch.from_numpy(w), torch.from_numpy(w[5]), 12)
    assert [i for i, _ in got] == [int(i) for i in want] and got[0][0] == 5 and got[1][0] == 17
    assert [c for _, c in got] == pytest.approx([float(cos[i]) for i in want], abs=1e-5)
    assert len(features.similar(torch.from_numpy(w), torch.from_numpy(w[5]), 10_000)) == features.MAX_SIMILAR
    assert features.similar(torch.from_numpy(w[:100]), torch.from_numpy(w[5]), 100)[-1] == (40, 0.0)  # NaN row: last


def test_similar_across_the_models_downloaded_saes_at_the_same_hook(home):  # noqa: F811
    a = make(home, d_model=64, d_sae=256, layer=1)
    b = make(home, d_model=64, d_sae=512, layer=1, seed=1)
    other_hook = make(home, d_model=64, d_sae=256, layer=3, seed=2)
    for s in (a, b, other_hook):
        assert saejobs("download", s.id, "--source", str(s.mirror), "--local", "--quiet").returncode == 0
    res = saejobs("features", "similar", "--sae", a.id, "--feature", "7", "--k", "5", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert [g["sae"] for g in got["groups"]] == [a.id, b.id]  # not layer 3's
    query = np.load(a.mirror_folder / "params.npz")["W_dec"][7].astype(np.float64)
    for g, s in zip(got["groups"], (a, b)):
        w = np.load(s.mirror_folder / "params.npz")["W_dec"].astype(np.float64)
        cos = w @ query / (np.linalg.norm(w, axis=1) * np.linalg.norm(query))
        want = np.argsort(-cos)[:5]
        assert [f["index"] for f in g["features"]] == [int(i) for i in want]
        assert [f["cosine"] for f in g["features"]] == pytest.approx([float(cos[i]) for i in want], abs=1e-5)
        assert all(f["label"] is None for f in g["features"])
    assert got["groups"][0]["features"][0] == {"index": 7, "cosine": pytest.approx(1.0), "label": None}
    only = json.loads(saejobs("features", "similar", "--sae", a.id, "--feature", "7", "--this-sae-only",
                              "--json").stdout)
    assert [g["sae"] for g in only["groups"]] == [a.id]


def test_from_a_texts_top_features_to_a_sweep_through_the_cli(home, tiny_gemma2_dir, tmp_path):  # noqa: F811
    from saejobs.db import jobs, results

    s = make(home, fmt="gemma-scope-2", d_model=64, d_sae=256, layer=1)
    assert saejobs("download", s.id, "--source", str(s.mirror), "--local", "--quiet").returncode == 0
    # a random SAE is dense: Neuronpedia's default filter drops what fires on over 1% of the evaluation text
    res = saejobs("features", "top", "--sae", s.id, "--prompt", "The sea is wide", "--k", "4", "--model",
                  str(tiny_gemma2_dir), "--local", "--json")
    assert res.returncode == 0, res.stderr
    filtered = json.loads(res.stdout)
    assert filtered["density_threshold"] == 0.01 and "Alice" in filtered["density_source"]
    (text,) = filtered["texts"]
    assert text["dense_dropped"] and all(f["density"] <= 0.01 for f in text["features"])
    assert not {f["index"] for t in text["per_token"] for f in t["features"]} & set(text["dense_dropped"])
    res = saejobs("features", "top", "--sae", s.id, "--prompt", "Hello there", "--prompt", "The sea is wide",
                  "--k", "4", "--model", str(tiny_gemma2_dir), "--keep-dense", "--local", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["density_threshold"] is None and got["texts"][0]["dense_dropped"] == []
    assert jobs.get(got["job"]).kind == "features" and [t["text"] for t in got["texts"]] == ["Hello there",
                                                                                               "The sea is wide"]
    assert all(len(t["features"]) <= 4 for t in got["texts"][0]["per_token"])
    assert all(f["label"] is None for t in got["texts"] for f in t["features"])
    (tmp_path / "chat.json").write_text(json.dumps([[{"role": "user", "content": "Hello there"}]]))
    line = one_clean_line(saejobs("features", "top", "--sae", s.id, "--chat", str(tmp_path / "chat.json"),
                                  "--model", str(tiny_gemma2_dir)), 2)  # refused before anything is queued
    assert "has no chat template" in line and len(jobs.listing(kind="features")) == 2  # the two above
    template = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    (tmp_path / "t.jinja").write_text(template)
    res = saejobs("features", "top", "--sae", s.id, "--chat", str(tmp_path / "chat.json"), "--system", "Be brief.",
                  "--chat-template", str(tmp_path / "t.jinja"), "--model", str(tiny_gemma2_dir), "--local", "--json")
    assert res.returncode == 0, res.stderr
    text = json.loads(res.stdout)["texts"][0]
    assert text["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gemma2_dir)  # the template rendered as transformers renders it
    rendered = tok.apply_chat_template(text["messages"], chat_template=template, tokenize=False,
                                       add_generation_prompt=True)
    assert rendered.startswith("<bos><start_of_turn>system\nBe brief.<end_of_turn>")
    assert text["text"] == rendered and text["n_tokens"] == len(tok(rendered, add_special_tokens=False)["input_ids"])
    # explanations of two of its features imported (Neuronpedia's export format), then shown as labels
    from tests.explanation_exports import row, write_batches

    a, b = got["texts"][0]["features"][0]["index"], got["texts"][1]["features"][0]["index"]
    write_batches(tmp_path / "export", [row(a, "cmaaaaaaaaaaaaaaaaaaaaaaa", "greetings and salutations", None, None,
                                            model="tiny-gemma-2", layer="1-synthetic"),
                                        row(b, "cmbbbbbbbbbbbbbbbbbbbbbbb", "the open sea", None, None,
                                            model="tiny-gemma-2", layer="1-synthetic")])
    assert saejobs("features", "import", str(tmp_path / "export"), "--sae", s.id).returncode == 0
    table = saejobs("features", "top", "--sae", s.id, "--prompt", "Hello there", "--keep-dense", "--model", str(tiny_gemma2_dir),
                    "--local", "--quiet", "--per-token", env={"COLUMNS": "200"})
    assert table.returncode == 0 and "top features of 'Hello there'" in table.stdout, table.stderr
    assert "greetings and salutations" in table.stdout
    res = saejobs("sweep", "--sae", s.id, "--feature", "label:open sea", "--strength", "5", "--prompt", "Hi",
                  "--n-tokens", "2", "--model", str(tiny_gemma2_dir), "--local", "--json")
    assert res.returncode == 0, res.stderr
    assert f"'label:open sea' is feature {b} of {s.id}: the open sea" in res.stderr
    steered = [r for r in results.generation_rows(json.loads(res.stdout)["id"]) if r["type"] == "STEERED"]
    assert [r["features"][0]["index"] for r in steered] == [b]

    res = saejobs("features", "top", "--sae", s.id, "--prompt", "Hello there", "--k", "4", "--model",
                  str(tiny_gemma2_dir), "--keep-dense", "--then-sweep", "--top", "3", "--strength", "0,20", "--local",
                  "--json")
    assert res.returncode == 0, res.stderr
    sweep = json.loads(res.stdout)
    first = json.loads(saejobs("features", "top", "--sae", s.id, "--prompt", "Hello there", "--k", "4", "--model",
                               str(tiny_gemma2_dir), "--keep-dense", "--local", "--json").stdout)["texts"][0]["features"][:3]
    assert sweep["kind"] == "sweep" and sweep["state"] == "succeeded"
    rows = results.generation_rows(sweep["id"])
    assert sorted({r["features"][0]["index"] for r in rows if r["type"] == "STEERED"}) == sorted(
        f["index"] for f in first)
    assert len(rows) == 1 + 3 * 2 and {r["prompt"] for r in rows} == {"Hello there"}


@pytest.mark.parametrize("args, code, says", [
    (["top", "--sae", "SAE", "--prompt", "  "], 2, "a prompt is empty"),
    (["top", "--sae", "SAE"], 2, "no text: give --prompt"),
    (["top", "--sae", "nope/nothing", "--prompt", "hi"], 2, "unknown SAE 'nope/nothing'"),
    (["top", "--sae", "https://www.neuronpedia.org/gpt2-small/6-res-jb", "--prompt", "hi"], 2,
     "an SAE of model 'gpt2-small', which saejobs does not know"),
    (["top", "--sae", "SAE", "--prompt", "hi", "--then-sweep"], 2, "--then-sweep needs --strength"),
    (["top", "--sae", "SAE", "--prompt", "hi", "--k", "0"], 2, "--k"),
    (["similar", "--sae", "SAE", "--feature", "256"], 2, "feature 256 is out of range"),
    (["similar", "--sae", "SAE"], 2, "which feature?"),
    (["similar", "--sae", "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/99999"], 2,
     "feature 99999 is out of range for gemma-2-2b/20-gemmascope-res-16k"),
    (["similar", "--sae", "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7650"], 2,
     "SAE 'gemma-2-2b/20-gemmascope-res-16k' is not downloaded"),
])
def test_bad_input_is_one_line_with_its_exit_code(home, args, code, says):  # noqa: F811
    s = make(home, d_model=64, d_sae=256, layer=1)
    res = saejobs("features", *[s.id if a == "SAE" else a for a in args])
    line = one_clean_line(res, code)
    assert says in line, line
    from saejobs.db import jobs

    assert jobs.listing() == []  # nothing queued


def test_search_takes_a_feature_url_or_label_and_steers_only_apart(home):  # noqa: F811
    s = make(home, d_model=64, d_sae=256, layer=1)
    line = one_clean_line(saejobs("search", "--sae", s.id, "--feature", "3", "--feature", f"{s.id}:3@4",
                                  "--prompt", "p"), 2)
    assert "a search takes features of --sae or named steers, not both" in line
    line = one_clean_line(saejobs("search", "--feature", "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7",
                                  "--sae", s.id, "--prompt", "p"), 2)
    assert f"names feature 7 of gemma-2-2b/20-gemmascope-res-16k, not of --sae {s.id}" in line
    line = one_clean_line(saejobs("search", "--sae", s.id, "--feature", "label:dogs", "--prompt", "p"), 2)
    assert "no explanations of" in line and "features import" in line


def test_neuronpedia_urls_name_the_sae_and_the_feature():
    from saejobs.cli.submit_cmd import FeatureArgs, _features, resolve_features
    from saejobs.engine.errors import UsageError

    url = "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7650"
    args = _features(None, None, (url, "3,5"))
    assert args == FeatureArgs([3, 5], [], [("gemma-2-2b/20-gemmascope-res-16k", 7650)], [])
    assert resolve_features(None, args) == ("gemma-2-2b/20-gemmascope-res-16k", [3, 5, 7650])
    assert resolve_features("https://neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k", args)[1] == [3, 5, 7650]
    with pytest.raises(UsageError, match="not of --sae gemma-2-2b/12-gemmascope-res-16k"):
        resolve_features("gemma-2-2b/12-gemmascope-res-16k", args)
    term = _features(None, None, (url + "@40",)).terms[0]
    assert (term.direction.sae, term.direction.index, term.strength) == ("gemma-2-2b/20-gemmascope-res-16k", 7650, 40.0)
    import click

    for bad, says in ((url.rsplit("/", 1)[0], "is an SAE's page"), ("https://example.org/a/b/1", "not a Neuronpedia URL"),
                      ("label:", "label: needs text")):
        with pytest.raises(click.BadParameter, match=says):
            _features(None, None, (bad,))
