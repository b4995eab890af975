"""Bad input, table-driven, through the real CLI: one line on stderr naming the problem, a non-zero
exit, no traceback, no partial result rows, and no job left waiting (what is refused up front never
gets a row; a job that could not be sent or failed under --local is recorded as failed, with why)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from saejobs.db.models import Generation, Job
from saejobs.db.session import session
from saejobs.engine.synthetic import gemma_scope_2_config, random_params, write_sae
from tests.dbfixtures import home  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import one_clean_line, saejobs

SAE = "gemma-2-2b/20-gemmascope-res-16k"
SWEEP = ["sweep", "--sae", SAE, "--feature", "1", "--prompt", "Once upon a time"]
DEAD_BROKER = {"SAEJOBS_BROKER": "redis://:s3cret@127.0.0.1:1/0"}


def _tiny(home, fmt="gemma-scope"):
    sae = make(home, fmt=fmt, d_model=64, d_sae=256)
    assert saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "-q").returncode == 0
    return sae


def _deep(home):
    """An SAE of Gemma 3 270M's width registered at layer 30 (it has 18)."""
    sae = make(home, d_model=640, d_sae=256, layer=30)
    assert saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "-q").returncode == 0
    return sae


def _pickled(home):
    sae = make(home, d_model=64, d_sae=256)
    obj = np.empty(1, dtype=object)
    obj[0] = {"x": 1}
    np.savez(sae.mirror_folder / "params.npz", **random_params(64, 256), extra=obj)
    return ["verify", sae.id, "--path", str(sae.mirror_folder), "--local", "-q", "--structural-only"]


def _config_types(home):
    sae = make(home, fmt="gemma-scope-2", d_model=64, d_sae=256)
    config = {**gemma_scope_2_config(sae.entry), "hf_hook_point_in": 5}
    write_sae(sae.mirror_folder, "gemma-scope-2", random_params(64, 256), config)
    return ["verify", sae.id, "--path", str(sae.mirror_folder), "--local", "-q", "--structural-only"]


def _escaping_entry(home):
    sae = make(home, d_model=64, d_sae=256)
    (home / "registry.d" / "evil.yaml").write_text(yaml.safe_dump([{**sae.entry.to_json(), "id": "evil/sae",
                                                                     "folder": "../../../outside"}]))
    return ["download", "evil/sae", "--source", str(sae.mirror), "--local", "-q"]


def _neuronpedia(home):
    f = home / "answer.json"
    f.write_text(json.dumps({"request": {"modelId": "gemma-2-2b", "features": "7650"}, "response": {}}))
    return ["neuronpedia", "import", str(f)]


CASES = [  # id, args (or a function of home returning them), env, exit code, what stderr must say
    ("unknown SAE id", ["download", "nobody/nothing"], {}, 2, "unknown SAE 'nobody/nothing'"),
    ("layer out of range", ["saes", "show", "gemma-2-2b/99-gemmascope-res-16k"], {}, 2, "unknown SAE"),
    ("width that does not exist", ["saes", "show", "gemma-2-2b/20-gemmascope-res-2m"], {}, 2, "did you mean"),
    ("feature >= d_sae", [*SWEEP[:4], "16384", *SWEEP[5:], "--strength", "1"], {}, 2, "feature 16384 is out of range"),
    ("negative feature", [*SWEEP[:3], "--feature=-1", *SWEEP[5:], "--strength", "1"], {}, 2, "feature -1 is out of range"),
    ("strength NaN", [*SWEEP, "--strength", "nan"], {}, 2, "strength nan is not a finite number"),
    ("strength inf", [*SWEEP, "--strength", "0,inf"], {}, 2, "strength inf is not a finite number"),
    ("n_tokens 0", [*SWEEP, "--strength", "1", "--n-tokens", "0"], {}, 2, "'--n-tokens': 0 is not in the range"),
    ("n_tokens above the limit", [*SWEEP, "--strength", "1", "--n-tokens", "5000"], {}, 2, "--n-tokens"),
    ("empty prompt", [*SWEEP[:5], "--prompt", "  ", "--strength", "1"], {}, 2, "a prompt is empty"),
    ("over-long prompt", [*SWEEP[:5], "--prompt", "x" * 40_000, "--strength", "1"], {}, 2, "the limit is 32000"),
    ("malformed grid", [*SWEEP, "--strength", "1,,x"], {}, 2, "'x' is not a number"),
    ("strength range with step 0", [*SWEEP, "--strength", "0:400:0"], {}, 2, "is not a range LO:HI:STEP"),
    ("seed not an integer", [*SWEEP, "--strength", "1", "--seed", "4.5"], {}, 2, "'--seed'"),
    ("negative temperature", [*SWEEP, "--strength", "1", "--temperature", "-1"], {}, 2, "'--temperature'"),
    ("two sampling semantics mixed", [*SWEEP, "--strength", "1", "--presence-penalty", "1"], {}, 2,
     "add --sampling interp-engine"),
    ("strength multiplier NaN", [*SWEEP, "--strength", "1", "--strength-multiplier", "nan"], {}, 2,
     "strength_multiplier must be a finite number"),
    ("unknown steering method", [*SWEEP, "--strength", "1", "--method", "PROJECT"], {}, 2, "'--method'"),
    ("no prompt at all", [*SWEEP[:5], "--strength", "1"], {}, 2, "no prompt"),
    ("unknown model", lambda h: ["sweep", "--sae", _tiny(h).id, "--feature", "1", "--strength", "1", "--prompt", "x",
                                 "--model", str(h / "no-such-model"), "--local", "-q"], {}, 2, "is not a directory"),
    ("d_model mismatch", lambda h: ["sweep", "--sae", _tiny(h).id, "--feature", "1", "--strength", "1", "--prompt",
                                    "x", "--model", "gemma-3-270m-gguf", "--local", "-q"], {}, 2,
     "has d_in 64 but google/gemma-3-270m has width 640"),
    ("SAE at a layer the model lacks", lambda h: ["sweep", "--sae", _deep(h).id, "--feature", "1", "--strength", "1",
                                                  "--prompt", "x", "--model", "gemma-3-270m-gguf", "--local", "-q"], {}, 2,
     "reads layer 30 but google/gemma-3-270m has layers 0..17"),
    ("bad database URL", ["jobs", "list"], {"SAEJOBS_DB": "nosuchdb://x"}, 2, "bad database URL 'nosuchdb://x'"),
    ("database unreachable, password redacted", ["jobs", "list"],
     {"SAEJOBS_DB": "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"}, 4, "unavailable"),
    ("malformed broker URL", ["download", SAE], {"SAEJOBS_BROKER": "http://u:s3cret@x/0"}, 2, "bad broker URL 'http://u:***@x/0'"),
    ("dead broker, password in its URL", ["download", SAE], DEAD_BROKER, 6, "broker unreachable at redis://:***@127.0.0.1:1/0"),
    ("path escape in an SAE id", ["download", "google/gemma-scope-2b-pt-res/../../etc"], {}, 2, "'..'"),
    ("pickle in an npz", _pickled, {}, 3, "pickled object arrays; refused"),
    ("custom entry whose folder escapes the cache", _escaping_entry, {}, 3, "must be a relative path without '..'"),
    ("config.json with wrong types", _config_types, {}, 3, "hf_hook_point_in"),
    ("Neuronpedia JSON off the schema", _neuronpedia, {}, 2, "$.request.features: expected a list, got str"),
    ("search range reversed", ["search", "--sae", SAE, "--feature", "1", "--prompt", "x", "--range", "400:0"], {}, 2,
     "finite LO < HI"),
    ("search range not numbers", ["search", "--sae", SAE, "--feature", "1", "--prompt", "x", "--range", "a:b"], {}, 2,
     "is not LO:HI"),
    ("search feature >= d_sae", ["search", "--sae", SAE, "--feature", "16384", "--prompt", "x"], {}, 2,
     "feature 16384 is out of range"),
    ("search NLL bound NaN", ["search", "--sae", SAE, "--feature", "1", "--prompt", "x", "--max-nll-increase", "nan"],
     {}, 2, "--max-nll-increase"),
    ("score an unknown job", ["score", "0123456789"], {}, 2, "no job '0123456789'"),
    ("report of an unknown job", ["report", "0123456789", "--html", "r.html"], {}, 2, "no job '0123456789'"),
]


@pytest.mark.parametrize("name, args, env, code, says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(home, name, args, env, code, says, ledger):
    args = args(home) if callable(args) else args
    res = saejobs(*args, env=env, timeout=300)
    err = res.stderr.strip()
    line = one_clean_line(res, code)  # exactly one stderr line (--local cases run with -q: no progress bar)
    assert line.startswith("saejobs: error: ") and says in line, err
    assert "s3cret" not in res.stderr + res.stdout
    with session() as s:
        assert s.scalar(select(func.count()).select_from(Generation)) == 0
        # nothing left waiting: refused up front, or (broker down, --local failure) recorded as failed with the reason
        assert s.scalars(select(Job.state).where(Job.state.in_(("queued", "running")))).all() == []
    assert not (home.parent / "outside").exists()
    ledger.add("bad_inputs")
