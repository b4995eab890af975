"""Sweep job: load (or reuse) the model and SAE, run the grid in batched chunks, store each chunk.

Configurations already stored for this job (a redelivered or retried sweep) are skipped, and the
unique (sweep, config_key) constraint makes a duplicate write impossible anyway.
"""

from __future__ import annotations

from db import results, saes
from engine import failpoints, provenance, registry
from engine.errors import NotFoundError
from engine.registry.entry import PARAMS_FILES
from engine.request import SweepRequest
from engine.sweep import Runner, chunks, default_batch_size, load_vector
from engine.verify import check_pairing


def run(ctx) -> dict:
    import torch

    req = SweepRequest.from_params(ctx.params)
    settings = req.settings
    entry = registry.get(req.sae)
    req.check_features(entry.d_sae, entry.id)
    row = saes.get(entry.id)
    if row is None or not row.local_path:
        raise NotFoundError(f"SAE '{entry.id}' is not downloaded; run `saejobs download {entry.id}` first")
    for v in req.vectors:
        v.check()
    vectors = {v.label: load_vector(v.path) for v in req.vectors}
    sae_sha = _params_sha256(row.files)
    steering_id = f"{entry.id}@{sae_sha}" + "".join(f"+{n}" for n in sorted(vectors))
    configs = req.configs(steering_id)

    source = req.model or entry.model_hf
    ctx.progress(0.0, f"loading SAE {entry.id}", force=True)  # first: a broken SAE fails before a model load
    sae = ctx.worker.cache.sae(entry, row.local_path)
    ctx.progress(0.0, f"loading model {source}", force=True)
    lm = ctx.worker.cache.model(source, getattr(torch, req.dtype))
    check_pairing(entry, sae, lm)
    runner = Runner(lm, sae, entry.hook_name, settings, vectors)
    failpoints.hit("sweep.loaded")

    prov = {"sae_sha256": sae_sha, "sae_path": row.local_path, "model": lm.model_id, "model_source": source,
            "model_revision": lm.revision, "dtype": str(lm.dtype).removeprefix("torch."), "device": str(lm.device),
            "hook_name": entry.hook_name, "sampling_semantics": settings.sampling_semantics.description,
            "bos": "prepended unless the prompt starts with it", "versions": provenance.versions()}
    sweep_id = results.ensure_sweep(ctx.job.id, entry.id, lm.model_id,
                                    {**req.to_params(), "settings": settings.to_json()}, prov)
    stored = results.config_keys(sweep_id)
    todo = [c for c in configs if c.key not in stored]
    total, done = len(configs), len(configs) - len(todo)
    longest = max(len(runner.prompt_ids(pr)) for pr in req.prompts)
    size = req.batch_size or default_batch_size(lm, longest, settings.n_tokens)
    ctx.progress(done / total, f"{done}/{total} generations ({len(todo)} to run, batch {size})", force=True)
    for chunk in chunks(todo, size):
        def on_step(step: int, n: int, _chunk=len(chunk), _done=done) -> None:  # cancel/hand-back land mid-chunk too
            ctx.progress((_done + _chunk * step / n) / total, f"{_done}/{total} generations; "
                         f"{_chunk} rows at token {step}/{n}")
        outs = runner.run(chunk, on_step)
        failpoints.hit("sweep.chunk_generated")
        results.add_generations(sweep_id, [
            {"config_key": c.key, "type": c.type, "features": [dict(f) for f in c.features], "prompt": c.prompt,
             "prompt_token_ids": runner.prompt_ids(c.prompt), "seed": c.seed, "sampling": settings.to_json(),
             "output": text, "token_ids": g.token_ids, "logprobs": g.logprobs} for c, g, text in outs])
        failpoints.hit("sweep.chunk_stored")
        done += len(chunk)
        ctx.progress(done / total, f"{done}/{total} generations", force=True)
    return {"sweep_id": sweep_id, "sae": entry.id, "model": lm.model_id, "generations": total,
            "ran_now": len(todo), "batch_size": min(size, runner.max_rows)}


def _params_sha256(files: dict | None) -> str | None:
    for name in PARAMS_FILES:
        if files and name in files:
            return files[name]["sha256"]
    return None

