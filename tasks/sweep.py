"""Sweep job: load (or reuse) the model and SAE, run the grid in batched chunks, store each chunk.

Configurations already stored for this job (a redelivered or retried sweep) are skipped, and the
unique (sweep, config_key) constraint makes a duplicate write impossible anyway.
"""

from __future__ import annotations

from saejobs.db import jobs, results, saes
from saejobs.engine import failpoints, provenance
from saejobs.engine.chat import template_id as chat_template_id, to_json as chat_json
from saejobs.engine.request import SweepRequest
from saejobs.engine.score import score_outputs
from saejobs.engine.sweep import SweepGenerator, chunks, default_batch_size, load_vector
from saejobs.tasks.saefiles import local_copy, resolve_entry


def run(ctx) -> dict:
    shard = ctx.params.get("shard")  # [lo, hi): this job runs those configurations of its parent sweep
    sweep_job = ctx.job.parent_id or ctx.job.id
    req = SweepRequest.from_params(jobs.get(sweep_job).params if shard else ctx.params)
    settings = req.settings
    entry = resolve_entry(req.sae)
    req.check_features(entry.d_sae, entry.id)
    req.check_steers(resolve_entry)
    row, folder = local_copy(ctx, entry)
    others = {e.id: (e, *local_copy(ctx, e)) for e in map(resolve_entry, req.steer_saes())}  # id -> (entry, row, folder)
    for v in req.vectors + req.steer_vectors:
        v.check()
    vectors = {v.label: load_vector(v.path) for v in req.vectors + req.steer_vectors}
    sae_sha = saes.params_sha256(row.files)
    steering_id = f"{entry.id}@{sae_sha}" + "".join(f"+{n}" for n in sorted(vectors))
    steering_id += "".join(f"+{i}@{saes.params_sha256(r.files)}" for i, (_, r, _) in sorted(others.items()))
    configs = req.configs(steering_id, *shard) if shard else req.configs(steering_id)  # a shard plans its slice only

    source = req.model or entry.model_hf
    ctx.progress(0.0, f"loading SAE {entry.id}", force=True)  # first: a broken SAE fails before a model load
    sae = ctx.executor.cache.sae(entry, str(folder))
    loaded = {i: (e, ctx.executor.cache.sae(e, str(f))) for i, (e, _, f) in others.items()}
    lm = ctx.model_for(source, req.dtype, [(entry, sae), *loaded.values()])
    steer_saes = {entry.id: (sae, entry.hook_name), **{i: (s, e.hook_name) for i, (e, s) in loaded.items()}}
    runner = SweepGenerator(lm, sae, entry.hook_name, settings, vectors, req.chat_template, saes=steer_saes)
    failpoints.hit("sweep.loaded")

    prov = {"sae_sha256": sae_sha, "sae_path": str(folder), "model": lm.model_id, "model_source": source,
            "model_revision": lm.revision, "dtype": str(lm.dtype).removeprefix("torch."), "device": str(lm.device),
            "hook_name": entry.hook_name, **({"steer_saes": {i: {"hook_name": e.hook_name, "sae_sha256":
                saes.params_sha256(r.files), "sae_path": str(f)} for i, (e, r, f) in others.items()}} if others else {}),
            "sampling_semantics": settings.sampling_semantics.description,
            "bos": "prepended unless the prompt starts with it", "versions": provenance.versions(),
            **({"chat": f"rendered by the chat template ({chat_template_id(req.chat_template)}), "
                        "add_generation_prompt, tokenized without special tokens"} if req.chats else {})}
    sweep_id = results.ensure_sweep(sweep_job, entry.id, lm.model_id,
                                    {**req.to_params(), "settings": settings.to_json()}, prov,
                                    owner=(ctx.job.id, ctx.executor.name))
    concept = req.concept_features(entry.id)  # DEFAULT rows' baseline
    stored = results.config_keys(sweep_id)
    todo = [c for c in configs if c.key not in stored]
    total, done = len(configs), len(configs) - len(todo)
    longest = max((len(runner.ids(c)) for c in configs), default=1)  # a chat without a template fails here
    size = req.batch_size or default_batch_size(lm, longest, settings.n_tokens)
    ctx.progress(done / total, f"{done}/{total} generations ({len(todo)} to run, batch {size})", force=True)
    for chunk in chunks(todo, size):
        def on_step(step: int, n: int, _chunk=len(chunk), _done=done) -> None:  # cancel/hand-back land mid-chunk too
            ctx.progress((_done + _chunk * step / n) / total, f"{_done}/{total} generations; "
                         f"{_chunk} rows at token {step}/{n}")
        outs = runner.run(chunk, on_step, for_scoring=True)  # scored from the stream it records
        failpoints.hit("sweep.chunk_generated")
        ctx.progress(done / total, f"{done}/{total} generations; scoring {len(chunk)}", force=True)
        scores = score_outputs(runner, outs, concept, entry.id)  # stored with the chunk, in its transaction
        results.add_generations(sweep_id, owner=(ctx.job.id, ctx.executor.name), rows=[
            {"config_key": c.key, "type": c.type, "features": [dict(f) for f in c.features],
             "prompt": runner.prompt_text(c), "prompt_token_ids": runner.ids(c),
             "messages": chat_json(c.chat) if c.chat else None, "seed": c.seed, "sampling": {
                 **settings.to_json(), **({"steer": c.steer, "strength_multiplier": c.multiplier} if c.steer else {})},
             "output": text, "token_ids": g.token_ids, "logprobs": g.logprobs, "scores": sc}
            for (c, g, text), sc in zip(outs, scores)])
        failpoints.hit("sweep.chunk_stored")
        done += len(chunk)
        ctx.progress(done / total, f"{done}/{total} generations", force=True)
    return {"sweep_id": sweep_id, "sae": entry.id, "model": lm.model_id, "generations": total, "shard_size": total,
            "ran_now": len(todo), "batch_size": min(size, runner.max_rows)}
