"""``saejobs compare A B``: two stored sweeps side by side, matched by configuration (the same request:
features, strengths, prompt, seed), whatever differs between them — the SAE's version, the model or its
dtype, the sampling, the code that ran them. Read here from the database; nothing is run."""

from __future__ import annotations

from saejobs.db import results
from saejobs.engine import compare
from saejobs.engine.errors import UsageError


def sweeps(job_a: str, job_b: str) -> dict:
    """Per configuration both sweeps ran: token agreement and score deltas (B − A); what only one ran."""
    (ja, sa), (jb, sb) = (results.named_sweep(ref, "compare takes two sweeps") for ref in (job_a, job_b))
    if ja.id == jb.id:
        raise UsageError(f"both sides are sweep {ja.id[:8]}; compare takes two different sweeps")
    rows_a, rows_b = results.generation_rows(ja.id), results.generation_rows(jb.id)
    ids_a = ids_b = None
    source = lambda sw: (sw.provenance or {}).get("model_source") or sw.model  # noqa: E731
    if sa.model != sb.model:  # token ids of two tokenizers do not compare: both texts in A's tokens
        from saejobs.engine.models import load_tokenizer

        tok = load_tokenizer(source(sa))
        ids_a = ids_b = lambda r: tok(r["output"], add_special_tokens=False)["input_ids"]  # noqa: E731
    out = compare.sweeps(rows_a, rows_b, ids_a, ids_b)
    out["a"] = {"job": ja.id, "sae": sa.sae_id, "model": sa.model, "model_source": source(sa),
                "dtype": (sa.provenance or {}).get("dtype"), "sae_sha256": (sa.provenance or {}).get("sae_sha256")}
    out["b"] = {"job": jb.id, "sae": sb.sae_id, "model": sb.model, "model_source": source(sb),
                "dtype": (sb.provenance or {}).get("dtype"), "sae_sha256": (sb.provenance or {}).get("sae_sha256")}
    out["summary"]["tokens_compared_as"] = "token ids" if ids_a is None else f"{source(sa)}'s tokens of both texts"
    if not out["rows"]:
        raise UsageError(f"sweeps {ja.id[:8]} and {jb.id[:8]} share no configuration (same features, strengths, "
                         "prompts and seeds); nothing to compare")
    return out
