"""One typed sweep request: validated once, duplicates removed, vectors named by content, a lossless
round trip through the job row, and no torch needed to build one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from saejobs.engine.chat import Message, Role
from saejobs.engine.errors import IntegrityError, UsageError
from saejobs.engine.request import Settings, SweepRequest, Vector

ROOT = Path(__file__).resolve().parents[1]


def request(**kw) -> SweepRequest:
    return SweepRequest(**{"sae": "s", "features": (5,), "strengths": (10.0,), "prompts": ("p",), **kw})


def test_duplicates_are_one_configuration_each():
    r = request(features=(5, 5, 7), strengths=(10, 10.0, 20), prompts=("a", "a", "b"), seeds=(1, 1))
    assert (r.features, r.strengths, r.prompts, r.seeds) == ((5, 7), (10.0, 20.0), ("a", "b"), (1,))
    keys = [c.key for c in r.configs("x")]
    assert len(keys) == len(set(keys)) == 2 + 2 * 2 * 2  # DEFAULT per prompt, then features × strengths × prompts


def test_two_vector_files_with_one_name_are_two_vectors(tmp_path):
    for d, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "v.npy", np.full(4, value, np.float32))
    a, b = Vector.of(tmp_path / "a" / "v.npy"), Vector.of(tmp_path / "b" / "v.npy")
    assert a.label != b.label and a.label.startswith("v.npy@")
    r = request(features=(), vectors=(a, b))
    assert len({c.key for c in r.configs("x")}) == 1 + 2
    np.save(tmp_path / "a" / "v.npy", np.full(4, 3.0, np.float32))  # changed after submission
    with pytest.raises(IntegrityError, match="changed since the sweep was submitted"):
        a.check()


def test_round_trip_through_the_job_row_keeps_every_field_and_key(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(4, np.float32))
    r = request(vectors=(Vector.of(tmp_path / "v.npy"),), seeds=(3, 4), combine=True, model="m", dtype="bfloat16",
                batch_size=7, settings=Settings(method="ORTHOGONAL_DECOMP", temperature=0.5, n_tokens=9,
                                                sampling_semantics="interp-engine", top_k=5, top_p=0.9))
    params = json.loads(json.dumps(r.to_params()))  # what the job row stores
    again = SweepRequest.from_params(params)
    assert again == r
    assert [c.key for c in again.configs("x")] == [c.key for c in r.configs("x")]


def test_a_job_stored_before_the_typed_request_still_reads():
    """Older rows: vectors as plain paths are resolved then, later settings are absent (their defaults)."""
    old = {"sae": "s", "model": None, "features": [1], "vectors": [], "strengths": [5.0], "prompts": ["p"],
           "seeds": [42], "n_tokens": 8, "temperature": 0.0, "freq_penalty": 0.0, "strength_multiplier": 1.0,
           "method": "SIMPLE_ADDITIVE", "normalize": False, "combine": False, "n_logprobs": 0, "dtype": "float32",
           "batch_size": None}
    r = SweepRequest.from_params(old)
    assert r.settings == Settings(n_tokens=8) and r.features == (1,)


@pytest.mark.parametrize("bad, says", [
    ({"features": (), "vectors": ()}, "nothing to steer with: give --feature INDEX, --vector FILE, "
                                      "--feature SAE_ID:INDEX@STRENGTH or --steers FILE"),
    ({"features": (4, -2, -3)}, "feature -3 is out of range (feature indices start at 0)"),
    ({"strengths": (1.0, float("nan"))}, "strength nan is not a finite number"),
    ({"strengths": ()}, "no strength: give --strength, e.g. 0,10,50"),
    ({"prompts": ()}, "no prompt: give --prompt TEXT, --prompts-file FILE or --chat FILE"),
    ({"chats": ((Message(Role.USER, "hi"),),)}, "give prompts or chat conversations (--chat), not both"),
    ({"chat_template": "{{ messages }}"}, "--chat-template renders --chat conversations; there are none"),
    ({"prompts": ("a", " \n")}, "a prompt is empty"),
    ({"prompts": ("x" * 32_001,)}, "a prompt has 32001 characters; the limit is 32000"),
    ({"dtype": "float8"}, "unknown dtype 'float8'; expected one of float32, bfloat16, float16"),
    ({"batch_size": 0}, "batch size must be at least 1, not 0"),
])
def test_bad_requests_are_refused_with_what_is_wrong(bad, says):
    with pytest.raises(UsageError) as e:
        request(**bad)
    assert str(e.value) == says  # word for word: the CLI prints it as the one line the user reads


@pytest.mark.parametrize("bad, says", [
    ({"method": "PROJECTION"}, "unknown steering method 'PROJECTION'; expected one of SIMPLE_ADDITIVE"),
    ({"sampling_semantics": "vllm"}, "unknown sampling semantics"),
    ({"n_tokens": 0}, "n_tokens must be between 1"),
    ({"top_p": 0.0, "sampling_semantics": "interp-engine"}, "top_p must be in"),
    ({"top_k": 5}, "--sampling interp-engine"),
])
def test_bad_settings_are_refused(bad, says):
    with pytest.raises(UsageError, match=says):
        Settings(**bad)


def test_building_a_request_needs_no_torch(tmp_path):
    code = ("import sys, numpy as np; np.save(sys.argv[1], np.ones(3, np.float32));"
            "from saejobs.engine.request import SweepRequest, Settings, Vector;"
            "r = SweepRequest(sae='s', features=(1,), vectors=(Vector.of(sys.argv[1]),), strengths=(1,), prompts=('p',));"
            "r.configs('x'); r.to_params();"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v.npy")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
