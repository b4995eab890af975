"""What the mutation check of ``engine/request.py`` found untested (issue 25 item 4): configuration keys
against hand-written canonical JSON, the slices ``configs`` plans from one bound, the user's messages word
for word, the boundaries of the checks (d_sae, prompt length, batch size), the default seed, chats kept
through the job row, and vectors named and re-checked by their bytes. Expected values are literals or
plain ``hashlib``/``json`` here, never the function under test run again. Torch-free and fast."""

from __future__ import annotations

import hashlib

import pytest

from saejobs.engine import request as request_mod
from saejobs.engine.chat import Message, Role
from saejobs.engine.errors import IntegrityError, UsageError
from saejobs.engine.request import Settings, SweepConfig, SweepRequest, Vector, config_key, plan_slice
from saejobs.engine.sampling import Sampling, SamplingSemantics
from saejobs.engine.steering import SteerMethod

HI = (Message(Role.USER, "hi"),)


def request(**kw) -> SweepRequest:
    return SweepRequest(**{"sae": "s", "features": (5,), "strengths": (10.0,), "prompts": ("p",), **kw})


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- configuration keys -------------------------------------------------------------------------------

# Non-default later settings (sampling_semantics, top_k) are kept, later ones at their default
# (presence_penalty, top_p, steer_special_tokens) are left out; a DEFAULT row drops the steering-only
# settings and the steering id. Keys sorted at every level, json.dumps' default separators.
KEYED = Settings(sampling_semantics="interp-engine", top_k=5, normalize=True, strength_multiplier=2.0, n_tokens=8)
STEERED_JSON = ('{"features": [{"index": 3, "strength": 1.5}], "prompt": "p", "seed": 7, "settings": '
                '{"freq_penalty": 0.0, "method": "SIMPLE_ADDITIVE", "n_logprobs": 0, "n_tokens": 8, '
                '"normalize": true, "sampling_semantics": "interp-engine", "strength_multiplier": 2.0, '
                '"temperature": 0.0, "top_k": 5}, "steering": "sae@abc", "type": "STEERED"}')
DEFAULT_JSON = ('{"features": [], "prompt": "p", "seed": 7, "settings": {"freq_penalty": 0.0, "n_logprobs": 0, '
                '"n_tokens": 8, "sampling_semantics": "interp-engine", "temperature": 0.0, "top_k": 5}, '
                '"steering": null, "type": "DEFAULT"}')


def test_a_steered_key_hashes_its_kept_settings_and_steering_in_sorted_json():
    cfg = SweepConfig("STEERED", ({"index": 3, "strength": 1.5},), "p", 7)
    key = config_key(cfg, KEYED, "sae@abc")
    assert key == sha(STEERED_JSON)[:32] and len(key) == 32


def test_a_default_key_leaves_out_the_steering_and_its_settings():
    cfg = SweepConfig("DEFAULT", (), "p", 7)
    assert config_key(cfg, KEYED, "sae@abc") == sha(DEFAULT_JSON)[:32]
    # the same DEFAULT generation whatever steers the sweep's other rows
    other = Settings(sampling_semantics="interp-engine", top_k=5, n_tokens=8, method="ORTHOGONAL_DECOMP",
                     steer_special_tokens=False)
    assert config_key(cfg, other, "another-sae@def") == sha(DEFAULT_JSON)[:32]


def test_a_configuration_serialises_its_fields_and_only_a_chat_adds_its_conversation():
    prompt = SweepConfig("STEERED", ({"index": 3, "strength": 1.5},), "p", 7)
    assert prompt.to_json() == {"type": "STEERED", "features": [{"index": 3, "strength": 1.5}], "prompt": "p",
                                "seed": 7}
    talk = SweepConfig("DEFAULT", (), "", 1, chat=HI, chat_template="model")
    assert talk.to_json() == {"type": "DEFAULT", "features": [], "prompt": "", "seed": 1,
                              "chat": [{"role": "user", "content": "hi"}], "chat_template": "model"}


def test_a_configurations_key_is_left_out_of_its_equality():
    a = SweepConfig("DEFAULT", (), "p", 1, key="one")
    assert a == SweepConfig("DEFAULT", (), "p", 1, key="two")
    assert a != SweepConfig("DEFAULT", (), "p", 2, key="one")
    with pytest.raises(AttributeError):
        a.seed = 3  # frozen


# --- slices planned from one bound ------------------------------------------------------------------

SMALL = SweepRequest(sae="x", features=(3,), strengths=(1.0, 2.0), prompts=("a",), seeds=(1, 2))
# The grid, worked out by hand: DEFAULT per seed, then feature 3 at each strength per seed.
SMALL_GRID = [("DEFAULT", (), 1), ("DEFAULT", (), 2),
              ("STEERED", ({"index": 3, "strength": 1.0},), 1), ("STEERED", ({"index": 3, "strength": 1.0},), 2),
              ("STEERED", ({"index": 3, "strength": 2.0},), 1), ("STEERED", ({"index": 3, "strength": 2.0},), 2)]


def rows(configs) -> list[tuple]:
    assert all(c.prompt == "a" for c in configs)
    return [(c.type, c.features, c.seed) for c in configs]


def test_configs_with_only_a_lower_bound_plan_to_the_end_of_the_grid():
    assert rows(SMALL.configs("s")) == SMALL_GRID
    assert rows(SMALL.configs("s", 2)) == SMALL_GRID[2:]
    assert rows(SMALL.configs("s", 5)) == SMALL_GRID[5:]


def test_configs_with_only_an_upper_bound_plan_from_the_start():
    assert rows(SMALL.configs("s", None, 3)) == SMALL_GRID[:3]
    assert rows(SMALL.configs("s", None, 0)) == []


def test_plan_slice_starts_at_the_first_configuration_by_default():
    got = plan_slice([3], [], [1.0, 2.0], ["a"], [1, 2], False, Settings(), "s", hi=3)
    assert rows(got) == SMALL_GRID[:3]


# --- refusals, word for word, and their boundaries (the request's own checks: test_request.py) ---------------

CHAT_LAST_TURN = "the last message must be the user's (the steered assistant turn answers it)"


def test_the_limits_themselves_are_accepted():
    assert request(prompts=("x" * 32_000,)).prompts == ("x" * 32_000,)
    assert request(batch_size=1).batch_size == 1


def test_a_non_finite_strength_multiplier_is_refused_with_its_value():
    with pytest.raises(UsageError) as e:
        Settings(strength_multiplier=float("nan"))
    assert str(e.value) == "strength_multiplier must be a finite number, not nan"


def test_feature_indices_run_from_zero_to_d_sae_minus_one():
    request(features=(0, 15)).check_features(16, "sae-x")
    with pytest.raises(UsageError) as e:
        request(features=(15, 16, 17)).check_features(16, "sae-x")
    assert str(e.value) == "feature 16 is out of range for sae-x (d_sae 16)"


def test_the_grid_limit_counts_configurations_and_says_how_to_shrink(monkeypatch):
    monkeypatch.setenv("SAEJOBS_MAX_CONFIGS", "6")
    SMALL.check_size()  # 6 configurations: at the limit
    monkeypatch.setenv("SAEJOBS_MAX_CONFIGS", "5")
    with pytest.raises(UsageError) as e:
        SMALL.check_size()
    assert str(e.value) == ("the grid has 6 configurations; the limit is 5 (SAEJOBS_MAX_CONFIGS): "
                            "fewer features, strengths, prompts or seeds, or split the sweep")


# --- chats ------------------------------------------------------------------------------------------

def test_chats_are_deduplicated_and_kept_as_tuples_with_their_template():
    r = request(prompts=(), chats=([Message(Role.USER, "hi")], [Message(Role.USER, "hi")]), chat_template="T")
    assert r.chats == (HI,) and r.chat_template == "T"


def test_a_conversation_built_elsewhere_is_checked_again_and_named_by_its_place():
    bad = (Message(Role.USER, "hi"), Message(Role.ASSISTANT, "hello"))
    with pytest.raises(UsageError) as e:
        request(prompts=(), chats=(HI, bad))
    assert str(e.value) == f"conversation 2: {CHAT_LAST_TURN}"


def test_a_stored_chat_job_reads_back_with_its_conversations_template_and_default_seed():
    p = {"sae": "s", "features": [1], "strengths": [2.0],
         "chats": [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]],
         "chat_template": "{{ messages }}"}
    r = SweepRequest.from_params(p)
    assert r.chats == ((Message(Role.SYSTEM, "be brief"), Message(Role.USER, "hi")),)
    assert r.chat_template == "{{ messages }}" and r.prompts == () and r.seeds == (42,)


def test_a_bad_stored_conversation_is_named_by_its_place():
    p = {"sae": "s", "features": [1], "strengths": [2.0],
         "chats": [[{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "x"}]]}
    with pytest.raises(UsageError) as e:
        SweepRequest.from_params(p)
    assert str(e.value) == f"conversation 2: {CHAT_LAST_TURN}"


# --- the job row ------------------------------------------------------------------------------------------

DEFAULT_SETTINGS_JSON = {"n_tokens": 32, "temperature": 0.0, "freq_penalty": 0.0, "n_logprobs": 0,
                         "sampling_semantics": "transformerlens", "presence_penalty": 0.0, "top_k": 0, "top_p": 1.0,
                         "method": "SIMPLE_ADDITIVE", "normalize": False, "strength_multiplier": 1.0,
                         "steer_special_tokens": True}


def test_params_of_a_prompt_sweep_have_no_chat_fields():
    assert request(features=(1,), strengths=(2.0,)).to_params() == {
        "sae": "s", "model": None, "features": [1], "vectors": [], "strengths": [2.0], "prompts": ["p"],
        "seeds": [42], "combine": False, "dtype": "float32", "batch_size": None, **DEFAULT_SETTINGS_JSON}


def test_params_of_a_chat_sweep_carry_its_conversations_and_template():
    r = request(features=(1,), strengths=(2.0,), prompts=(), chats=(HI,), chat_template="T")
    assert r.to_params() == {
        "sae": "s", "model": None, "features": [1], "vectors": [], "strengths": [2.0], "prompts": [],
        "seeds": [42], "combine": False, "dtype": "float32", "batch_size": None,
        "chats": [[{"role": "user", "content": "hi"}]], "chat_template": "T", **DEFAULT_SETTINGS_JSON}


def test_settings_serialise_to_plain_json_types():
    got = Settings(method="ORTHOGONAL_DECOMP", sampling_semantics="interp-engine").to_json()
    assert got == {**DEFAULT_SETTINGS_JSON, "method": "ORTHOGONAL_DECOMP", "sampling_semantics": "interp-engine"}
    assert {type(v) for v in got.values()} <= {str, int, float, bool}  # no enum members: plain JSON values


def test_a_method_given_as_text_becomes_the_enum_member():
    s = Settings(method="ORTHOGONAL_DECOMP")
    assert s.method is SteerMethod.ORTHOGONAL_DECOMP and s.method.reads_activation


def test_the_sampling_part_of_settings_is_a_plain_sampling():
    s = Settings(n_tokens=9, temperature=0.5, n_logprobs=2, sampling_semantics="interp-engine", presence_penalty=0.25,
                 top_k=5, top_p=0.9, method="ORTHOGONAL_DECOMP", normalize=True, strength_multiplier=3.0)
    got = s.sampling()
    assert type(got) is Sampling
    assert got == Sampling(n_tokens=9, temperature=0.5, freq_penalty=0.0, n_logprobs=2,
                           sampling_semantics=SamplingSemantics.INTERP_ENGINE, presence_penalty=0.25, top_k=5,
                           top_p=0.9)


def test_the_default_seed_is_42():
    assert request().seeds == (42,)
    assert request(seeds=()).seeds == (42,)
    assert SweepRequest.from_params({"sae": "s", "features": [1], "strengths": [2.0], "prompts": ["p"]}).seeds == (42,)


# --- vectors --------------------------------------------------------------------------------------------

def test_a_vector_given_twice_is_one_vector():
    v = Vector("/v/a.npy", "1" * 64)
    assert request(vectors=(v, Vector("/v/a.npy", "1" * 64))).vectors == (v,)


def test_a_safetensors_vector_is_named_by_its_file_name_and_bytes(tmp_path):
    path = tmp_path / "dir.safetensors"
    path.write_bytes(b"not parsed here, only hashed")
    v = Vector.of(path)
    digest = hashlib.sha256(b"not parsed here, only hashed").hexdigest()
    assert v == Vector(str(path.resolve()), digest) and v.label == f"dir.safetensors@{digest[:12]}"


def test_vector_files_that_cannot_be_one_are_refused_with_their_name(tmp_path):
    (tmp_path / "v.txt").write_text("1 2 3")
    with pytest.raises(UsageError) as e:
        Vector.of(tmp_path / "v.txt")
    assert str(e.value) == f"{tmp_path / 'v.txt'}: a steering vector must be .npy or .safetensors"
    with pytest.raises(UsageError) as e:
        Vector.of(tmp_path / "missing.npy")
    assert str(e.value) == f"steering vector '{tmp_path / 'missing.npy'}' is not a file"


def test_a_vector_gone_or_changed_where_the_job_runs_is_refused(tmp_path):
    path = tmp_path / "v.npy"
    before = hashlib.sha256(b"before").hexdigest()
    with pytest.raises(UsageError) as e:
        Vector(str(path), before).check()
    assert str(e.value) == f"steering vector '{path}' is gone (it is read where the job runs)"
    path.write_bytes(b"after")
    after = hashlib.sha256(b"after").hexdigest()
    with pytest.raises(IntegrityError) as e:
        Vector(str(path), before).check()
    assert str(e.value) == (f"steering vector '{path}' changed since the sweep was submitted "
                            f"(sha256 {after[:12]}, submitted {before[:12]})")
    path.write_bytes(b"before")
    Vector(str(path), before).check()  # the submitted bytes again


def test_an_old_job_with_a_vector_as_a_plain_path_is_hashed_when_read(tmp_path):
    path = tmp_path / "v.npy"
    path.write_bytes(b"vector bytes")
    r = SweepRequest.from_params({"sae": "s", "vectors": [str(path)], "strengths": [1.0], "prompts": ["p"]})
    assert r.vectors == (Vector(str(path.resolve()), hashlib.sha256(b"vector bytes").hexdigest()),)
    assert r.features == () and r.model is None and r.dtype == request_mod.DEFAULT_DTYPE == "float32"
