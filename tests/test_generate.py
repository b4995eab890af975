"""The generation loop stays on the device, sizes its batches by memory and splits a batch that does not fit.

A tiny random Gemma 2 (byte-level tokenizer) keeps these fast; the exactness against interp-engine
on the real model is tests/fidelity's, and against the real architectures bench/gpu.py's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saejobs.engine import generate as gen
from saejobs.engine.errors import OutOfMemory
from saejobs.engine.sae import load_sae
from saejobs.engine.request import Settings, plan_configs
from saejobs.engine.sweep import CPU_MAX_ROWS, SweepGenerator, default_batch_size, row_bytes
from saejobs.engine.synthetic import random_params, write_sae
from tests.saes import entry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_sae(tiny_gemma2, tmp_path_factory):
    e = entry(fmt="gemma-scope", d_model=tiny_gemma2.d_model, d_sae=32, layer=1)
    folder = write_sae(tmp_path_factory.mktemp("sae"), e.format, random_params(e.d_model, e.d_sae))
    return e, load_sae(e, folder)


def configs(settings, n_features=4, seeds=(1, 2)):
    return plan_configs(list(range(n_features)), [], [2.0, 8.0], ["hello there", "a much longer prompt than that"],
                list(seeds), False, settings, "t")


def test_no_host_copy_per_step(tiny_gemma2, tiny_sae, monkeypatch):
    """Host copies made by the loop itself (``.cpu``, ``.tolist``, ``.item``, ``.numpy``) do not grow with
    the number of steps: logits stay on the device, ids come back once."""
    e, sae = tiny_sae
    counted = {"n": 0}
    here = gen.__file__
    for name in ("cpu", "tolist", "item", "numpy"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, **k):
            if sys._getframe(1).f_code.co_filename == here:
                counted["n"] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)

    def copies(n_tokens: int, **sampling) -> int:
        counted["n"] = 0
        s = Settings(n_tokens=n_tokens, n_logprobs=2, **sampling)
        SweepGenerator(tiny_gemma2, sae, e.hook_name, s).run(configs(s))
        return counted["n"]

    for sampling in ({}, {"temperature": 0.9, "freq_penalty": 0.5},
                     {"temperature": 0.9, "sampling_semantics": "interp-engine", "top_k": 20, "top_p": 0.8,
                      "presence_penalty": 0.5}):
        few, many = copies(3, **sampling), copies(12, **sampling)
        assert few == many and few <= 8, (sampling, few, many)  # ids and 3 logprob tensors: .cpu() + .tolist()


def test_sampled_bf16_is_drawn_from_bf16_logits(tiny_sae, monkeypatch):
    """interp-engine samples from the logits as the model returns them: the probabilities a bf16 model's
    draw sees are bf16, not an upcast copy."""
    from saejobs.engine.models import tiny_gemma2 as make

    e, sae = tiny_sae
    lm = make(seed=0, dtype=torch.bfloat16)
    seen = []
    real = gen.draw

    def spy(probs, gens, *, as_2d):
        seen.append((probs.dtype, as_2d))
        return real(probs, gens, as_2d=as_2d)
    monkeypatch.setattr(gen, "draw", spy)
    for semantics, dtype in (("interp-engine", torch.bfloat16), ("transformerlens", torch.float32)):
        seen.clear()
        s = Settings(n_tokens=3, temperature=0.8, sampling_semantics=semantics)
        SweepGenerator(lm, sae, e.hook_name, s).run(configs(s)[:4])
        assert seen and all(d == dtype for d, _ in seen), (semantics, seen)


def test_batch_that_runs_out_of_memory_is_split_and_gives_the_same_tokens(tiny_gemma2, tiny_sae, monkeypatch):
    e, sae = tiny_sae
    s = Settings(n_tokens=5, temperature=0.7)
    cs = configs(s)
    whole = SweepGenerator(tiny_gemma2, sae, e.hook_name, s).run(cs)
    model = tiny_gemma2.model
    forward = model.forward
    batches = []

    def tight(*a, **k):  # a device that holds at most 3 rows
        rows = (k.get("input_ids") if k.get("input_ids") is not None else a[0]).shape[0]
        batches.append(rows)
        if rows > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*a, **k)
    monkeypatch.setattr(model, "forward", tight)
    runner = SweepGenerator(tiny_gemma2, sae, e.hook_name, s)
    split = runner.run(cs)
    assert [g.token_ids for _, g, _ in split] == [g.token_ids for _, g, _ in whole]
    assert len(cs) == 36 and max(batches) == 36 and runner.max_rows == 2  # 36 -> 18 -> 9 -> 4 -> 2 rows: fits
    monkeypatch.setattr(model, "forward", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("OOM")))
    with pytest.raises(OutOfMemory, match="out of memory generating one row"):
        SweepGenerator(tiny_gemma2, sae, e.hook_name, s).run(cs[:1])


def test_batch_size_from_memory(tiny_gemma2, gemma3, monkeypatch):
    """Rows per chunk follow free memory and the per-row footprint (KV cache, prompt pass, logits)."""
    import psutil

    small = row_bytes(gemma3, 16, 32)
    assert row_bytes(gemma3, 16, 512) > small and row_bytes(gemma3, 512, 32) > small
    assert small > gemma3.config.vocab_size * 4  # the logits and sampling buffers alone are this much
    free = type("VM", (), {"available": 40 * small})()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: free)
    assert default_batch_size(gemma3, 16, 32) == 20  # half of the free memory
    free.available = 10**15
    assert default_batch_size(gemma3, 16, 32) == CPU_MAX_ROWS


def test_progress_callback_every_step_and_stop_mid_chunk(tiny_gemma2, tiny_sae):
    e, sae = tiny_sae
    s = Settings(n_tokens=6)
    steps = []
    SweepGenerator(tiny_gemma2, sae, e.hook_name, s).run(configs(s), on_step=lambda i, n: steps.append((i, n)))
    assert steps[-1] == (6, 6) and [i for i, _ in steps] == list(range(1, 7))

    class Stop(Exception):
        pass

    def stop(i, n):
        if i == 2:
            raise Stop
    with pytest.raises(Stop):
        SweepGenerator(tiny_gemma2, sae, e.hook_name, s).run(configs(s), on_step=stop)


def test_bench_gpu_small_on_cpu_checks_identity(gemma3, tmp_path):
    """``bench/gpu.py --device cpu --small`` runs every exactness check against interp-engine and every
    throughput part to its end (each sampling mode, the long prompt, the profile, scoring, the sizes past
    the wide one) and exits 0. Its figures time a CPU on small models, which says nothing; the device run
    owns them."""
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--small", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json

    figures = json.loads(out.read_text())
    assert figures["failures"] == []
    assert figures["exact.gemma3-270m.float32.T0.7.identical_to_interp_engine"] == "16/16"
    assert figures["exact.gemma3-270m.float32.T1.0.identical_to_interp_engine"] == "16/16"
    for key in ("greedy.16x4.tokens_per_s", "greedy.8x4.scoring_share_of_generation", "greedy.8x4.profile",
                "interp-engine_T0.7_top-p_0.9.8x4.one_at_a_time_identical_to_interp_engine",
                "transformerlens_T0.7.8x4.vs_greedy"):
        assert f"throughput.{key}" in figures, key
    assert figures["throughput.interp-engine_T0.7_top-p_0.9.8x4.one_at_a_time_identical_to_interp_engine"] == "4/4"
    assert any(k.startswith("throughput.greedy_") and k.endswith("_token_prompt.8x4.tokens_per_s") for k in figures)
    share = re.search(r"TFLOP \(([0-9]+)%; matrix products", figures["throughput.greedy.8x4.scoring_arithmetic"])
    assert share and 0 < int(share.group(1)) < 100, figures["throughput.greedy.8x4.scoring_arithmetic"]


def test_gpu_probe_scans_runs_on_a_cpu(tmp_path):
    """``bench/gpu_probe.py --parts scans`` (run by bench/gpu_host.sh on a lent GPU, where device time is short)
    runs to its end here: on a CPU its cumsum questions are answered (one row's cumsum the same run to run, the
    batched form rounds as the row loop does) and the several-streams part says it is CUDA's."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_probe.py"), "--device", "cpu", "--small",
                        "--config-dir", str(tmp_path), "--parts", "scans", "--out", str(tmp_path / "probe")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json

    got = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert not any(k.endswith(".error") for k in got), got
    assert got["scans.cumsum.one_row_run_to_run_equal"] == "50/50" and got["scans.cumsum.row_loop_twice_equal"] is True
    assert got["scans.cumsum.batched_vs_rows"].endswith("top-p 0.9 nucleus differs 0") and got["scans.streams"] == "cuda only"


def transformerlens_reference(model, prompt_ids: list[int], seed: int, n_tokens: int, temperature: float,
                              freq_penalty: float, eos: int) -> list[int]:
    """One request as Neuronpedia's TransformerLens-era server generates it, written out step by step on a
    plain transformers model (batch of one, no padding, KV cache): ``torch.manual_seed(seed)``, then per
    step TransformerLens 4.3 ``utilities/logits_utils.py:sample_logits``: ``logits / temperature``; row by
    row ``- freq_penalty * torch.bincount(tokens so far, minlength=vocab)`` where the tokens so far are
    ``generate``'s ``current_tokens`` (the prompt, BOS included, and what was generated); ``float32``;
    ``Categorical(logits=...).sample()``; stop after EOS."""
    import inspect

    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    torch.manual_seed(seed)
    tokens = torch.tensor([prompt_ids])
    out = model(input_ids=tokens, use_cache=True)
    generated = []
    for _ in range(n_tokens):
        final_logits = out.logits[:, -1, :] / temperature
        for b in range(final_logits.shape[0]):
            final_logits[b] = final_logits[b] - freq_penalty * torch.bincount(tokens[b], minlength=final_logits.shape[-1])
        nxt = torch.distributions.categorical.Categorical(logits=final_logits.to(torch.float32)).sample()
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        generated.append(int(nxt[0]))
        if generated[-1] == eos:
            break
        out = model(input_ids=nxt[:, None], use_cache=True, **{cache: getattr(out, cache)})
    return generated


@pytest.mark.model
@torch.no_grad()
def test_frequency_penalty_counts_the_prompt_as_transformerlens_does(gemma3):
    """``--sampling transformerlens`` with a frequency penalty: every row of one batched, left-padded
    generation (``engine.generate``, as a sweep's chunk runs; prompts of different lengths whose words
    repeat, a seed each) has the tokens ``transformerlens_reference`` gives that prompt and seed alone.
    Temperature 0.5 so that the penalty's place (after the division) matters by a factor of 2."""
    tok = gemma3.tokenizer
    prompts = ["the cat and the dog and the cat and the dog and the", "Once upon a time, once upon a time,",
               "red red red red red red red red"]
    ids = [tok(p)["input_ids"] for p in prompts]  # the tokenizer adds BOS itself
    assert all(i[0] == tok.bos_token_id and i == gen.prompt_ids(tok, p) for i, p in zip(ids, prompts))
    rows = [gen.Row(i, seed) for i, seed in zip(ids, (3, 42, 7))]
    ours = gen.generate(gemma3, rows, Settings(n_tokens=16, temperature=0.5, freq_penalty=1.0).sampling())
    want = [transformerlens_reference(gemma3.model, r.prompt_ids, r.seed, 16, 0.5, 1.0, tok.eos_token_id) for r in rows]
    assert [g.token_ids for g in ours] == want, [(tok.decode(g.token_ids), tok.decode(w)) for g, w in zip(ours, want)]
    plain = gen.generate(gemma3, rows, Settings(n_tokens=16, temperature=0.5).sampling())
    assert [g.token_ids for g in plain] != want, "the penalty must change something, or this tests nothing"


def test_each_distinct_vector_of_a_chunk_is_prepared_once(tiny_gemma2, tiny_sae, monkeypatch):
    """A grid of 4 features × 2 strengths × 2 prompts × 2 seeds prepares (and checks) 4 decoder rows, not 32: the
    chunk's set-up launched two small kernels per row before (1,024 rows: ~170 ms of host time under the
    profiler on an H200's host)."""
    from saejobs.engine import sweep as sweep_mod

    e, sae = tiny_sae
    calls = []
    real = sweep_mod.prepare_vector
    monkeypatch.setattr(sweep_mod, "prepare_vector", lambda v, *a: calls.append(v) or real(v, *a))
    s = Settings(n_tokens=2)
    cs = configs(s)
    assert len([c for c in cs if c.type == "STEERED"]) == 32
    SweepGenerator(tiny_gemma2, sae, e.hook_name, s).run(cs)
    assert len(calls) == 4 and all(torch.equal(v, sae.W_dec[i]) for i, v in enumerate(calls))
