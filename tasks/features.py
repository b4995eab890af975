"""Feature discovery: the ``features`` job (top features of texts, on a worker's cached model and SAE)
and ``similar`` (decoder cosine within an SAE and across the model's other downloaded SAEs at its hook;
run where it is asked: it reads decoders only)."""

from __future__ import annotations

from saejobs.db import saes
from saejobs.engine import chat, evaluate, features, provenance
from saejobs.engine.errors import UsageError
from saejobs.engine.generate import prompt_ids
from saejobs.engine.job_requests import FeaturesRequest
from saejobs.tasks.saefiles import copy_on_host, local_copy, resolve_entry


def run(ctx) -> dict:
    req = FeaturesRequest.from_params(ctx.params)
    entry = resolve_entry(req.sae)
    row, folder = local_copy(ctx, entry)
    source = req.model or entry.model_hf
    ctx.progress(0.0, f"loading SAE {entry.id}", force=True)
    sae = ctx.executor.cache.sae(entry, str(folder))
    lm = ctx.model_for(source, req.dtype, [(entry, sae)])
    texts = [(p, prompt_ids(lm.tokenizer, p), None) for p in req.prompts]
    for conv in req.chats:
        rendered = chat.render(lm.tokenizer, conv, req.chat_template, lm.model_id)
        texts.append((rendered, chat.text_ids(lm.tokenizer, rendered), chat.to_json(conv)))
    density = None
    if req.density_threshold is not None:  # measured once per process, model and SAE (the engine cache's keys)
        ctx.progress(0.0, f"feature densities of {entry.id} on the evaluation text", force=True)
        density = ctx.executor.cache.get(("density", entry.id, saes.params_sha256(row.files), lm.model_id,
                                          str(lm.dtype)), lambda: features.densities(lm, sae, entry.hook_name))
    out = []
    for n, (text, ids, messages) in enumerate(texts):
        ctx.progress(n / len(texts), f"text {n + 1}/{len(texts)} ({len(ids)} tokens)")
        got = features.top_by_token(lm, sae, entry.hook_name, ids, req.k, ignore_bos=req.ignore_bos,
                                    density=density, density_threshold=req.density_threshold)
        out.append({"text": text, **({"messages": messages} if messages else {}), **got})
    ctx.progress(1.0, f"{len(texts)} text(s), {sum(t['n_tokens'] for t in out)} tokens", force=True)
    return {"sae": entry.id, "hook_name": entry.hook_name, "d_sae": sae.d_sae, "k": req.k,
            "ignore_bos": req.ignore_bos, "density_threshold": req.density_threshold,
            "density_source": None if density is None else
            f"{evaluate.EVAL_SOURCE}: the first {features.DENSITY_TOKENS} tokens", "texts": out,
            "provenance": {"sae_sha256": saes.params_sha256(row.files), "model": lm.model_id, "model_source": source,
                           "model_revision": lm.revision, "dtype": str(lm.dtype).removeprefix("torch."),
                           "device": str(lm.device), "versions": provenance.versions()}}


def similar(sae_id: str, index: int, host: str, k: int = 10, across: bool = True) -> dict:
    """Features nearest ``index``'s decoder row: in its SAE, and (``across``) in every other downloaded SAE
    of the same model read at the same hook (the vector queried there, as Neuronpedia's endpoint takes one);
    the decoders read from ``host``'s copies."""
    from saejobs.engine.sae import load_sae

    entry = resolve_entry(sae_id)
    if not 0 <= index < entry.d_sae:
        raise UsageError(f"feature {index} is out of range for {entry.id} (d_sae {entry.d_sae})")

    def decoder(e):
        _, folder = copy_on_host(e, host, lambda *a, **kw: None)
        return load_sae(e, folder).W_dec

    query = decoder(entry)[index].clone()
    groups = [{"sae": entry.id, "features": _rows(features.similar(decoder(entry), query, k))}]
    if across:
        for other in saes.downloaded():
            if other == entry.id:
                continue
            e = resolve_entry(other)
            if e.model_hf == entry.model_hf and e.hook_name == entry.hook_name and e.d_model == entry.d_model:
                groups.append({"sae": e.id, "features": _rows(features.similar(decoder(e), query, k))})
    return {"sae": entry.id, "index": index, "hook_name": entry.hook_name, "k": k, "groups": groups}


def _rows(pairs) -> list[dict]:
    return [{"index": i, "cosine": c} for i, c in pairs]
