"""Every steering operation, several SAEs and layers in one steer, and vectors at hooks no SAE reads:
the same token ids as interp-engine (issue 28).

A configuration is an ordered list of interventions (``SweepConfig.features``): a feature of one of the
test SAEs at layers 3, 6 and 17 (``"sae"``), or a raw vector at a hook (``"hook"``), each with its
operation and parameters. The oracle builds interp-engine's own ``SteerSpec`` list from the same list
(decoder rows read from the SAE files with safetensors; hook names mapped to interp-engine's points
here, not by saejobs) and generates one request at a time, as in test_interp_engine.py. saejobs runs
each case as its sweep does: its STEERED and DEFAULT rows beside a longer DEFAULT row (padding) in one
batch; and every greedy case's STEERED row together in one batch of mixed operations, each row equal to
interp-engine's request for it alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import torch

from interp_engine.steer import SteerSpec, generate_stream, steer
from interp_engine.steer_specs import SteerMethod as IE

from saejobs.engine.request import Settings, SweepConfig
from saejobs.engine.sweep import SweepGenerator
from tests.fidelity.common import AXIS, DOG, MARKS, N_TOKENS, OCEAN, OTHER_PROMPT, ROWS, unsteered_steps
from tests.fidelity.test_interp_engine import oracle_prompt_ids

pytestmark = MARKS
L3, L6, L17 = "fidelity/3-res", "fidelity/6-res", "fidelity/17-res"
OPS = {"SIMPLE_ADDITIVE": IE.ADDITIVE, "ORTHOGONAL_DECOMP": IE.ORTHOGONAL, "PROJECTION_CAP": IE.PROJECTION_CAP,
       "NORM_SCALED_ADD": IE.NORM_SCALED_ADD, "ABLATE": IE.ABLATE, "SWAP": IE.SWAP}
POINTS = {"hook_resid_post": "resid_post", "hook_resid_pre": "resid_pre", "hook_mlp_out": "mlp_out_post",
          "attn.hook_z": "z"}  # TransformerLens' names -> interp-engine's points (its resolve_point, checked below)


def f(sae_or_hook: str, what, strength: float = 0.0, method: str = "SIMPLE_ADDITIVE", **params) -> dict:
    """One intervention as a configuration stores it: a feature of an SAE, or a vector at a hook."""
    where = {"sae": sae_or_hook, "index": what} if sae_or_hook.startswith("fidelity/") else {"vector": what,
                                                                                            "hook": sae_or_hook}
    return {**where, "strength": strength, "method": method, **params}


@dataclass(frozen=True)
class Case:
    name: str
    interventions: tuple
    prompt: str = "Once upon a time"
    normalize: bool = False
    multiplier: float = 1.0
    seed: int = 42
    sampling: dict = field(default_factory=dict)


INTERP = {"sampling_semantics": "interp-engine"}
CASES = [
    Case("projection cap, both bounds", (f(L6, AXIS, method="PROJECTION_CAP", min=40.0, max=60.0),)),
    Case("projection cap, Neuronpedia's strength as the max", (f(L6, AXIS + 1, -30.0, "PROJECTION_CAP"),)),
    Case("norm-scaled add, under its cap", (f(L6, DOG, 0.4, "NORM_SCALED_ADD"),)),
    Case("norm-scaled add, capped", (f(L3, OCEAN, 2.5, "NORM_SCALED_ADD", max_fraction=0.5),)),
    Case("ablate", (f(L3, AXIS, method="ABLATE"),), prompt="The weather today is"),
    Case("swap onto another feature", (f(L6, AXIS, method="SWAP", target={"sae": L6, "index": AXIS + 2}),)),
    Case("two SAEs at two layers", (f(L3, DOG, 120.0), f(L17, AXIS + 1, 5.0, "ORTHOGONAL_DECOMP"))),
    Case("three operations at one hook, in order", (f(L6, DOG, 90.0), f(L6, AXIS, method="PROJECTION_CAP", max=0.0),
                                                    f(L6, OCEAN, 0.3, "NORM_SCALED_ADD"))),
    Case("a vector at resid_pre", (f("blocks.10.hook_resid_pre", "ocean", 60.0),)),
    Case("a vector at mlp_out", (f("blocks.8.hook_mlp_out", "mlp", 40.0),)),
    Case("a vector at attn.hook_z", (f("blocks.5.attn.hook_z", "z", 25.0),)),
    Case("two SAEs, normalized, multiplier 3", (f(L6, OCEAN, 30.0), f(L17, DOG, 40.0)), normalize=True,
         multiplier=3.0),
    Case("two SAEs and a swap, sampled", (f(L3, DOG, 100.0), f(L17, AXIS, method="SWAP",
                                                                  target={"sae": L17, "index": OCEAN})),
         seed=7, sampling={**INTERP, "temperature": 0.8}),
]


@pytest.fixture(scope="module")
def vectors(lm):
    """Raw vectors for the hook cases: the " ocean" embedding row, and seeded random directions."""
    emb = lm.model.get_input_embeddings().weight.detach().float()
    ocean = emb[lm.tokenizer(" ocean", add_special_tokens=False).input_ids[0]]
    g = torch.Generator().manual_seed(3)
    cfg = lm.config
    return {"ocean": ocean.cpu(), "mlp": torch.randn(cfg.hidden_size, generator=g),
            "z": torch.randn(cfg.num_attention_heads * cfg.head_dim, generator=g)}


def runner(lm, saes, vectors, settings) -> SweepGenerator:
    others = {f"fidelity/{layer}-res": (saes[layer], f"blocks.{layer}.hook_resid_post") for layer in (3, 6, 17)}
    return SweepGenerator(lm, saes[6], "blocks.6.hook_resid_post", settings, vectors, saes=others)


def settings_of(case: Case) -> Settings:
    return Settings(normalize=case.normalize, strength_multiplier=case.multiplier, n_tokens=N_TOKENS, **case.sampling)


def oracle_specs(case: Case, device: str, vectors: dict) -> list[SteerSpec]:
    """interp-engine's SteerSpecs for the case, built from the files' rows and the case's own dicts."""
    specs = []
    for it in case.interventions:
        if "sae" in it:
            layer, point = int(it["sae"].split("/")[1].split("-")[0]), "resid_post"
            vec = ROWS[(device, layer)][it["index"]].clone()
        else:
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)", it["hook"])
            layer, point = int(m[1]), POINTS[m[2]]
            vec = vectors[it["vector"]].to(device)
        coeff = case.multiplier * it["strength"]
        extra = {k: it[k] for k in ("min", "max", "max_fraction") if k in it}
        if it["method"] == "PROJECTION_CAP" and not ({"min", "max"} & set(it)):
            extra["max"] = coeff  # Neuronpedia's inference server: ProjectionCapSpec(v, min=None, max=coeff)
        if "target" in it:
            t = it["target"]
            extra["target"] = ROWS[(device, int(t["sae"].split("/")[1].split("-")[0]))][t["index"]].clone()
        specs.append(SteerSpec(vec, layer, coeff, OPS[it["method"]], point=point, normalize=case.normalize, **extra))
    return specs


ORACLE: dict = {}  # a steered request's tokens, by everything that decides them: each computed once per run


def oracle_tokens(oracle, case: Case, prompt_ids: list[int], vectors: dict, steered: bool) -> list[int]:
    if not steered:
        return [st.token_id for st in unsteered_steps(oracle, prompt_ids, settings_of(case), case.seed)]
    s = settings_of(case)
    key = (str(oracle.device), tuple(prompt_ids), s.temperature, case.seed, case.name)
    if key not in ORACLE:
        ids = torch.tensor([prompt_ids], device=oracle.device)
        with steer(oracle, oracle_specs(case, torch.device(oracle.device).type, vectors), prompt_token_ids=ids[0]):
            ORACLE[key] = [st.token_id for st in generate_stream(oracle, ids, max_tokens=N_TOKENS,
                                                                 temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                                                 presence_penalty=s.presence_penalty, seed=case.seed)]
    return ORACLE[key]


def test_interp_engine_points_are_the_modules_saejobs_hooks(lm, oracle):
    """The point names the oracle uses resolve, in interp-engine, to the modules saejobs' hook names hook."""
    from saejobs.engine.hooks import _module, parse_hook

    for suffix, point in POINTS.items():
        module, _side = oracle.resolve_point(point, 4)
        assert module is _module(lm, parse_hook(f"blocks.4.{suffix}"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_same_tokens_as_interp_engine(case, lm, saes, oracle, vectors):
    r = runner(lm, saes, vectors, settings_of(case))
    configs = [SweepConfig("STEERED", case.interventions, case.prompt, case.seed),
               SweepConfig("DEFAULT", (), case.prompt, case.seed),
               SweepConfig("DEFAULT", (), OTHER_PROMPT, case.seed)]  # a longer row: the steered one is left-padded
    ours = r.run(configs)
    for cfg, generated, _ in ours:
        ids = oracle_prompt_ids(oracle, cfg.prompt)
        theirs = oracle_tokens(oracle, case, ids, vectors, steered=cfg.type == "STEERED")
        assert generated.token_ids == theirs, (cfg.type, cfg.prompt, lm.tokenizer.decode(generated.token_ids),
                                               lm.tokenizer.decode(theirs))
    assert ours[0][1].token_ids != ours[1][1].token_ids, "the steering must change something, or the case tests nothing"


def test_a_batch_mixing_operations_equals_each_row_alone(lm, saes, oracle, vectors):
    """Every greedy case's STEERED row (different operations, SAEs and hooks per row) in one batch, each
    row equal to interp-engine's request for it alone."""
    cases = [c for c in CASES if not c.sampling and not c.normalize and c.multiplier == 1.0]
    r = runner(lm, saes, vectors, Settings(n_tokens=N_TOKENS))
    together = r.run([SweepConfig("STEERED", c.interventions, c.prompt, c.seed) for c in cases])
    for c, (cfg, generated, _) in zip(cases, together):
        assert generated.token_ids == oracle_tokens(oracle, c, oracle_prompt_ids(oracle, c.prompt), vectors, True), c.name
    assert len({tuple(g.token_ids) for _, g, _ in together}) > len(cases) // 2  # the rows do differ


CHAT_CASES = [
    Case("chat, two SAEs, a cap and a swap", (f(L3, DOG, 150.0), f(L6, AXIS, method="PROJECTION_CAP", min=-5.0, max=5.0),
                                              f(L17, AXIS + 1, method="SWAP", target={"sae": L17, "index": OCEAN}))),
    Case("chat, norm-scaled add and ablate at two layers, sampled", (f(L6, OCEAN, 0.5, "NORM_SCALED_ADD"),
                                                                     f(L17, AXIS, method="ABLATE")),
         seed=7, sampling={**INTERP, "temperature": 0.8}),
]


@pytest.mark.parametrize("case", CHAT_CASES, ids=[c.name for c in CHAT_CASES])
def test_chat_the_same_tokens_as_interp_engine(case, lm, saes, oracle, vectors):
    """A conversation rendered as Neuronpedia's steer-chat renders it (test_interp_engine.py's template and its
    longer chat: system, earlier turns); the oracle takes the rendered ids, as the endpoint hands them to
    interp-engine."""
    from saejobs.engine import chat
    from tests.fidelity.test_interp_engine import CHATS, TEMPLATE

    template = chat.read_template(TEMPLATE)
    r = runner(lm, saes, vectors, settings_of(case))
    r.chat_template = template
    configs = [SweepConfig(kind, case.interventions if kind == "STEERED" else (), "", case.seed,
                           chat=chat.conversation(c), chat_template=chat.template_id(template))
               for c in CHATS[1:] for kind in ("STEERED", "DEFAULT")]
    ours = r.run(configs)
    for cfg, generated, _ in ours:
        theirs = oracle_tokens(oracle, case, r.ids(cfg), vectors, steered=cfg.type == "STEERED")
        assert generated.token_ids == theirs, (cfg.type, lm.tokenizer.decode(generated.token_ids),
                                               lm.tokenizer.decode(theirs))
    assert ours[0][1].token_ids != ours[1][1].token_ids, "the steering must change something"
