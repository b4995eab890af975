"""Hook points named as TransformerLens and the SAEs name them, on transformers' Gemma 2 and Gemma 3.

- ``blocks.L.hook_resid_post``: the output of decoder layer L (in transformers 5.x a plain tensor
  (batch, seq, d_model); Gemma Scope 2's config says ``model.layers.L.output``).
- ``blocks.L.hook_mlp_out``: the output of layer L's ``post_feedforward_layernorm``, which is what
  Gemma adds to the residual stream (``model.layers.L.post_feedforward_layernorm.output``).
- ``blocks.L.hook_resid_pre``: the input of decoder layer L (a steering point only; interp-engine's
  ``resid_pre``).
- ``blocks.L.attn.hook_z``: the per-head attention outputs before the output projection, i.e. the
  input of ``self_attn.o_proj``, (batch, seq, n_heads * head_dim) — TransformerLens' z flattened
  over heads, as the attention SAEs read it (``model.layers.L.self_attn.o_proj.input``).

Sources: TransformerLens 4.3 maps ``hook_mlp_out`` to ``ln2_post`` (post_feedforward_layernorm)
output and ``attn.hook_z`` to the input of ``o``; SAELens 6.54 gives Gemma Scope 2 the HF points above.

A hook that never fires is an error: steering that silently does not happen is the commonest way
steering results go wrong.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from saejobs.engine.errors import SaejobsError, UsageError
from saejobs.engine.hook_names import RESID_PRE, HookPoint, parse_hook, site_width  # noqa: F401 (re-exported)
from saejobs.engine.registry.entry import SaeSite

Edit = Callable[[torch.Tensor], torch.Tensor | None]


def _module(lm, point: HookPoint) -> torch.nn.Module:
    if not 0 <= point.layer < lm.n_layers:
        raise UsageError(f"hook {point.name}: layer {point.layer} is out of range; "
                         f"{lm.model_id} has layers 0..{lm.n_layers - 1}")
    layer = lm.layers[point.layer]
    if point.site == RESID_PRE:
        return layer
    match point.site:
        case SaeSite.RES:
            return layer
        case SaeSite.MLP:
            return layer.post_feedforward_layernorm
        case SaeSite.ATT:
            return layer.self_attn.o_proj
    raise AssertionError(point.site)


@contextmanager
def hook(lm, name: str, fn: Edit, strict: bool = True) -> Iterator[None]:
    """Run ``fn`` on the activation at ``name`` in every forward pass inside the block.

    ``fn`` returns a replacement tensor (same shape; cast to the activation's dtype, so a float32
    steering vector cannot silently turn a bfloat16 model float32) or None to leave it. With
    ``strict`` the block must have run the model through the hook at least once.
    """
    point = parse_hook(name)
    module = _module(lm, point)
    fired: list[bool] = []  # set once, then constant: a per-call counter would change a compiled graph's guards

    def edit(act: torch.Tensor) -> torch.Tensor | None:
        if not fired:
            fired.append(True)
        new = fn(act)
        if new is None:
            return None
        if new.shape != act.shape:
            raise SaejobsError(f"hook {name}: replacement has shape {tuple(new.shape)}, activation {tuple(act.shape)}")
        return new.to(act.dtype)

    if point.site in (SaeSite.ATT, RESID_PRE):  # the module's input: o_proj's (z), the layer's (resid_pre)
        arg = "input" if point.site == SaeSite.ATT else "hidden_states"

        def pre(_mod, args, kwargs):
            if args:
                new = edit(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = edit(kwargs[arg])
            return None if new is None else (args, {**kwargs, arg: new})
        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(_mod, _args, output):  # transformers 5.x decoder layers return a tensor; 4.x a tuple
            new = edit(output[0] if isinstance(output, tuple) else output)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new
        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()
    if strict and not fired:
        raise SaejobsError(f"hook {name} never fired: the model did not pass through "
                           f"{type(module).__name__} of layer {point.layer}; nothing was steered")


def hook_width(lm, name: str) -> int:
    """The activation width at a hook: d_model, or heads × head_dim at ``attn.hook_z``."""
    point = parse_hook(name)
    _module(lm, point)  # the layer must exist
    return site_width(lm.config, point.site)


class PassEnded(Exception):
    """Raised by a hook's function to end the forward pass there: the layers above it (and the output layer) never
    run. The caller that wanted only what lies below catches it (``capture``; generation's last, partial step)."""


@torch.no_grad()
def capture(lm, name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The activation at ``name`` for these tokens, on the model's device. The pass ends at the hook: the layers
    above it and the output layer (Gemma's 262,144 words: most of a small model's arithmetic) never run, and
    nothing writes into the activation afterwards."""
    seen: list[torch.Tensor] = []

    def grab(a: torch.Tensor) -> None:
        seen.append(a.detach())
        raise PassEnded

    try:
        with hook(lm, name, grab):
            lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except PassEnded:
        pass
    return seen[0]
