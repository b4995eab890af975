"""Synthetic SAEs written in the exact Gemma Scope layouts.

For tests, benchmarks and the offline demo: the bytes on disk are laid out as Google publishes them,
so the same loader, verifier and download code run on them as on the real SAEs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from saejobs.engine.formats import gemma_scope, gemma_scope_2
from saejobs.engine.registry.entry import SaeEntry, SaeFormat, SaeSite


def random_params(d_model: int, d_sae: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Gemma-Scope-shaped float32 weights with decoder rows of unit norm and positive thresholds."""
    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((d_sae, d_model), dtype=np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    return {
        "W_enc": np.ascontiguousarray(w_dec.T * 0.5),
        "W_dec": w_dec,
        "b_enc": rng.standard_normal(d_sae, dtype=np.float32) * 0.1,
        "b_dec": rng.standard_normal(d_model, dtype=np.float32) * 0.1,
        "threshold": np.abs(rng.standard_normal(d_sae, dtype=np.float32)) * 0.2,
    }


def write_sae(folder: Path, fmt: str, params: dict[str, np.ndarray], config: dict | None = None) -> Path:
    """Write ``params`` (keys W_enc, W_dec, b_enc, b_dec, threshold) as format ``fmt`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == SaeFormat.GEMMA_SCOPE:
        np.savez(folder / gemma_scope.PARAMS_FILE, **{k: np.asarray(v) for k, v in params.items()})
    elif fmt == SaeFormat.GEMMA_SCOPE_2:
        names = {v: k for k, v in gemma_scope_2.KEYS.items()}
        tensors = {names[k]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
        save_file(tensors, str(folder / gemma_scope_2.PARAMS_FILE))
        (folder / gemma_scope_2.CONFIG_FILE).write_text(json.dumps(config or {}, indent=2))
    else:
        raise ValueError(f"unknown format {fmt}")
    return folder


def gemma_scope_2_config(entry: SaeEntry) -> dict:
    """config.json as Gemma Scope 2 writes it (SAELens ``_infer_gemma_3_raw_cfg_dict`` field names)."""
    hf_point = SaeSite(entry.site).hf_point(entry.layer)
    return {"architecture": "jump_relu", "model_name": entry.model_hf.removeprefix("google/"), "hf_hook_point_in": hf_point}


def from_activations(acts: torch.Tensor, l0: float, directions: int) -> dict[str, np.ndarray]:
    """A JumpReLU dictionary built from a model's own activations (N, d_model), known by construction.

    Features are ± the top ``directions`` principal axes of ``acts`` (so d_sae = 2 * directions),
    ``b_enc`` centres on the mean and ``b_dec`` adds it back, and one threshold is set so that on
    ``acts`` a token fires ``l0`` features on average (at most one of each ± pair fires). It
    reconstructs activations from the same distribution well and others poorly: what verify needs.
    """
    x = acts.detach().double().cpu()
    mu = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mu, full_matrices=False)
    v = vh[:directions]
    proj = ((x - mu) @ v.T).abs().flatten()
    threshold = float(torch.quantile(proj, 1 - l0 / directions)) if l0 < directions else 0.0
    w_dec = torch.cat([v, -v])
    as32 = lambda t: np.ascontiguousarray(t.float().numpy())  # noqa: E731
    return {"W_enc": as32(w_dec.T), "W_dec": as32(w_dec), "b_enc": as32(-(mu @ w_dec.T)), "b_dec": as32(mu),
            "threshold": np.full(2 * directions, threshold, dtype=np.float32)}


def with_steering_rows(params: dict[str, np.ndarray], directions: np.ndarray,
                       norms: np.ndarray | None = None, readers: dict[str, np.ndarray] | None = None
                       ) -> dict[str, np.ndarray]:
    """``params`` with features prepended whose decoder rows point along ``directions``: rows to steer along.

    Row i has norm ``norms[i]`` (default ``1 + 0.5 i``: 1, 1.5, 2, ...), not all 1 as trained decoder
    rows seldom are, so that steering with and without ``normalize`` differs and tests can tell.
    Without ``readers`` the features never fire (zero encoder column, bias -1 under a non-negative
    threshold); with ``readers`` (``W_enc`` (d, n), ``b_enc`` and ``threshold`` (n,), e.g. from
    ``word_readers``) they fire where their concept is in the activation, as a trained SAE's do.
    """
    n, d = directions.shape
    norms = np.asarray(norms if norms is not None else 1.0 + 0.5 * np.arange(n), dtype=np.float32)
    rows = (directions / np.linalg.norm(directions, axis=1, keepdims=True) * norms[:, None]).astype(np.float32)
    if readers is None:
        readers = {"W_enc": np.zeros((d, n), np.float32), "b_enc": np.full(n, -1.0, np.float32),
                   "threshold": np.full(n, max(float(params["threshold"].min()), 0.0), np.float32)}
    return {"W_enc": np.concatenate([readers["W_enc"].astype(np.float32), params["W_enc"]], axis=1),
            "W_dec": np.concatenate([rows, params["W_dec"]]),
            "b_enc": np.concatenate([readers["b_enc"].astype(np.float32), params["b_enc"]]),
            "b_dec": params["b_dec"],
            "threshold": np.concatenate([readers["threshold"].astype(np.float32), params["threshold"]])}


def word_readers(acts: torch.Tensor, examples: list[torch.Tensor], ridge: float = 0.1,
                 fire_at: float = 0.5) -> dict[str, np.ndarray]:
    """Encoder columns that detect concepts in activations, one per ``examples[i]`` (k_i, d_model): the
    activations at the concept's tokens, against the background ``acts`` (N, d_model).

    A column is the whitened mean difference (Fisher's discriminant, ``(Σ + λI)⁻¹ (m_i - μ)``, λ =
    ``ridge`` × mean variance), unit norm; ``b_enc`` centres on μ; the threshold is ``fire_at`` × the
    smallest projection among the examples. A plain projection on the steering direction does not
    work at a mid-depth residual (Gemma 3 270M layer 6: a " dog" token projects *below* the mean on
    the " dog" embedding's direction), while this reads the word and its near neighbours (" dogs",
    " puppy") and stays silent on ordinary text.
    """
    x = acts.detach().double().cpu()
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / len(x)
    inv = torch.linalg.inv(cov + ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=torch.float64))
    cols, thresholds = [], []
    for ex in examples:
        w = inv @ (ex.detach().double().cpu().mean(0) - mu)
        w = w / torch.linalg.vector_norm(w)
        cols.append(w)
        thresholds.append(fire_at * float(((ex.detach().double().cpu() - mu) @ w).min()))
    w_enc = torch.stack(cols, dim=1)
    return {"W_enc": w_enc.float().numpy(), "b_enc": (-(mu @ w_enc)).float().numpy(),
            "threshold": np.asarray(thresholds, dtype=np.float32)}
