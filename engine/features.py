"""Finding features to steer, as Neuronpedia's inference server finds them.

- ``top_by_token``: per token, the SAE's ``k`` most active features (Neuronpedia
  ``endpoints/activation/topk_by_token.py``: BOS prepended unless the text starts with it, one forward
  pass, the SAE's ``encode`` at its hook, ``torch.topk`` over the features of each token, ``k`` clamped
  to the SAE's width); with ``ignore_bos`` the BOS position and every special token are left out, as the
  webapp's ``/api/search-topk-by-token`` leaves them out (its default). Features that do not fire
  (activation 0) are left out too: Neuronpedia pads a token's list with arbitrary zero features.
  Over the text, the union of the tokens' lists as the webapp's search page builds it: ``frequency`` is
  the number of tokens in whose list a feature is, sorted by it (ties: first appearance); also each
  feature's largest activation, its position, and its mean over the kept tokens.
- density: like Neuronpedia's search (its ``densityThreshold``, 0.01 by default), features that fire on
  more than that share of tokens are dropped from each token's list after the top-k — the always-on
  directions that would otherwise head every token. Neuronpedia reads a feature's density from its
  database; here it is measured (``densities``) on the bundled evaluation text (``engine.evaluate``,
  Alice chapter I, the first ``DENSITY_TOKENS`` tokens in 128-token windows, BOS left out). Unlike the
  webapp, a feature that never fired there (density 0) is kept: its filter also drops those.
- ``similar``: the features whose decoder rows are nearest a vector by cosine (Neuronpedia
  ``endpoints/util/sae_topk_by_decoder_cossim.py``: fp32 norms, ``clamp_min(1e-8)``, NaN rows last,
  the query feature itself included, at most ``MAX_SIMILAR`` results).

The forward pass stops at the hook (nothing above it changes the activation read there), so a text
costs the layers up to the hook plus one encode, in chunks of tokens so a wide SAE's activations are
never all in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saejobs.engine.hooks import capture

MAX_SIMILAR = 128  # Neuronpedia's MAX_NUM_RESULTS
DENSITY_TOKENS = 2048
DEFAULT_DENSITY_THRESHOLD = 0.01  # Neuronpedia's search default
ENCODE_CHUNK_ELEMENTS = 1 << 24  # tokens × features encoded at once (64 MiB of float32)


def activations_at(lm, hook_name: str, ids: list[int]) -> torch.Tensor:
    """The activation at ``hook_name`` for one unpadded sequence, (T, width); the layers above the hook are not run."""
    return capture(lm, hook_name, torch.tensor([ids], device=lm.device))[0]


@dataclass(frozen=True)
class TokenFeatures:
    position: int  # index into the text's tokens (BOS is position 0)
    token: str
    special: bool
    features: list[tuple[int, float]]  # (index, activation), most active first

    def to_json(self) -> dict:
        return {"position": self.position, "token": self.token, "special": self.special,
                "features": [{"index": i, "activation": a} for i, a in self.features]}


@torch.no_grad()
def densities(lm, sae, hook_name: str, tokens: int = DENSITY_TOKENS) -> torch.Tensor:
    """Per feature, the share of the evaluation text's tokens where it fires (float32, on the SAE's device)."""
    from saejobs.engine import evaluate

    windows = evaluate.windows(lm.tokenizer)[: max(1, tokens // 128)]
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.W_enc.device)
    n = 0
    for window in windows:
        x = activations_at(lm, hook_name, window.tolist())[1:].to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        fired += (sae.encode(x) > 0).sum(0, dtype=torch.float64)
        n += x.shape[0]
    return (fired / max(n, 1)).float()


@torch.no_grad()
def top_by_token(lm, sae, hook_name: str, ids: list[int], k: int, *, ignore_bos: bool = True,
                 density: torch.Tensor | None = None, density_threshold: float | None = None) -> dict:
    """The text's per-token top features and their union over the text (``to_json``-ready dicts); with
    ``density`` and ``density_threshold``, features denser than it dropped from each token's top k."""
    tok = lm.tokenizer
    acts_in = activations_at(lm, hook_name, ids).to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
    special_ids = set(tok.all_special_ids)
    keep = [p for p, t in enumerate(ids) if not (ignore_bos and (p == 0 or t in special_ids))]
    kk = max(1, min(k, sae.d_sae))
    step = max(1, ENCODE_CHUNK_ELEMENTS // sae.d_sae)
    values, indices = [], []
    total = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.W_enc.device)
    for lo in range(0, len(ids), step):
        acts = sae.encode(acts_in[lo:lo + step])
        v, i = torch.topk(acts, k=kk, dim=-1)
        values.append(v.float().cpu())
        indices.append(i.cpu())
        rows = [p - lo for p in keep if lo <= p < lo + step]
        if rows:
            total += acts[rows].sum(0, dtype=torch.float64)
    vals, idx = torch.cat(values).tolist(), torch.cat(indices).tolist()
    dense = set()
    if density is not None and density_threshold is not None:
        listed = sorted({i for p in keep for i in idx[p]})
        dense = {i for i, d in zip(listed, density[listed].tolist()) if d > density_threshold}
    tokens = [tok.decode([t]) for t in ids]
    per_token = [TokenFeatures(p, tokens[p], ids[p] in special_ids,
                               [(i, a) for i, a in zip(idx[p], vals[p]) if a > 0 and i not in dense]) for p in keep]
    union: dict[int, dict] = {}
    for t in per_token:
        for i, a in t.features:
            u = union.setdefault(i, {"index": i, "frequency": 0, "max_activation": a, "max_position": t.position})
            u["frequency"] += 1
            if a > u["max_activation"]:
                u["max_activation"], u["max_position"] = a, t.position
    means = total[list(union)].div(max(len(keep), 1)).tolist() if union else []
    for u, m in zip(union.values(), means):
        u["mean_activation"] = m
        if density is not None:
            u["density"] = float(density[u["index"]])
    over = sorted(union.values(), key=lambda u: -u["frequency"])  # stable: first appearance breaks ties
    return {"tokens": tokens, "n_tokens": len(ids), "kept_tokens": len(keep), "k": kk,
            "per_token": [t.to_json() for t in per_token], "features": over, "dense_dropped": sorted(dense)}


@torch.no_grad()
def similar(W_dec: torch.Tensor, query: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """(index, cosine) of the ``k`` decoder rows nearest ``query``, most similar first."""
    q = query.to(device=W_dec.device, dtype=W_dec.dtype)
    dots = torch.mv(W_dec, q).float()
    norms = torch.linalg.vector_norm(W_dec, dim=1, dtype=torch.float32)
    cos = dots / (norms * torch.linalg.vector_norm(q, dtype=torch.float32)).clamp_min(1e-8)
    cos = torch.nan_to_num(cos, nan=float("-inf"))
    v, i = torch.topk(cos, k=max(1, min(k, MAX_SIMILAR, W_dec.shape[0])))
    return [(int(a), float(b) if torch.isfinite(b) else 0.0) for a, b in zip(i.tolist(), v)]
