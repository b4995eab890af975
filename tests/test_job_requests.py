"""One typed request per job kind (engine/job_requests.py; the sweep's is engine/request.py): validated at
construction with one clear line, every default written once, a lossless round trip through the job
row, rows written by the previous code still read (and written again as they were), one mapping from
kind to request type, tasks that read their params only through it, and one attempts limit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from saejobs.db.states import JobKind, JobState
from saejobs.engine.errors import UsageError
from saejobs.engine import chat
from saejobs.engine.job_requests import DownloadRequest, FeaturesRequest, ScoreRequest, SearchRequest, VerifyRequest
from saejobs.engine.request import Settings, SweepRequest
from tests.dbfixtures import db_url, home  # noqa: F401
from tests.queue_harness import broker  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SAE = "gemma-2-2b/20-gemmascope-res-16k"
JOB = "0d4c7a38-5f0e-4c51-9a57-2e8f3b6f1c90"


def search(**kw) -> SearchRequest:
    return SearchRequest(**{"sae": SAE, "features": (7650,), "prompts": ("Once upon a time",), **kw})


# --- validated once, at construction, with one line -------------------------------------------------------

@pytest.mark.parametrize("build, says", [
    (lambda: DownloadRequest(""), "sae must be a non-empty string"),
    (lambda: DownloadRequest(SAE, source="mirror"), "source must be an absolute path"),
    (lambda: VerifyRequest(SAE, max_tokens=64), "max_tokens must be an integer from 128 to 65536, not 64"),
    (lambda: VerifyRequest(SAE, max_tokens=100_000), "max_tokens must be an integer from 128"),
    (lambda: VerifyRequest(SAE, max_tokens="2048"), "max_tokens must be an integer"),
    (lambda: VerifyRequest(SAE, dtype="float8"), "unknown dtype 'float8'; expected one of float32"),
    (lambda: VerifyRequest(SAE, path="relative/folder"), "path must be an absolute path"),
    (lambda: VerifyRequest(SAE, structural_only="yes"), "structural_only must be true or false"),
    (lambda: VerifyRequest(SAE, model=""), "model must be a non-empty string"),
    (lambda: ScoreRequest(""), "job must be a non-empty string"),
    (lambda: search(features=()), "no feature to search"),
    (lambda: search(features=(-1,)), "feature -1 is out of range"),
    (lambda: search(prompts=()), "no prompt"),
    (lambda: search(prompts=("  ",)), "a prompt is empty"),
    (lambda: search(lo=400.0, hi=0.0), "search range 400:0 is not LO:HI with LO < HI"),
    (lambda: search(hi=float("inf")), "range HI must be a finite number, not inf"),
    (lambda: search(max_nll_increase=float("nan")), "max_nll_increase must be a finite number, not nan"),
    (lambda: search(max_nll_increase=-1.0), "max_nll_increase must be from 0 to 100"),
    (lambda: search(points=1), "points must be an integer from 2 to 64, not 1"),
    (lambda: search(refine_rounds=7), "refine_rounds must be an integer from 0 to 6"),
    (lambda: search(settings=Settings(n_tokens=0)), "n_tokens must be between 1 and 4096"),
    (lambda: search(chats=(chat.conversation([{"role": "user", "content": "hi"}]),), prompts=(),
                    holdout_prompts=("p",)), "a search over --chat conversations has no held-out"),
    (lambda: search(dtype="int8"), "unknown dtype 'int8'"),
    (lambda: VerifyRequest.from_params({"dtype": "float32"}), "a verify job's params lack sae"),
    (lambda: SearchRequest.from_params({"sae": SAE, "features": [1]}), "no prompt: give --prompt TEXT"),
    (lambda: ScoreRequest.from_params({}), "a score job's params lack job"),
    (lambda: FeaturesRequest(SAE), "no text: give --prompt TEXT"),
    (lambda: FeaturesRequest(SAE, prompts=(" ",)), "a prompt is empty"),
    (lambda: FeaturesRequest(SAE, prompts=("p",), k=0), "k must be an integer from 1 to 100, not 0"),
    (lambda: FeaturesRequest(SAE, prompts=("p",), k=True), "k must be an integer"),
    (lambda: FeaturesRequest(SAE, prompts=("p",), chat_template="x"), "--chat-template renders --chat"),
    (lambda: FeaturesRequest(SAE, prompts=("p",) * 2 + tuple(map(str, range(1000)))), "one job takes at most 1000"),
    (lambda: FeaturesRequest(SAE, prompts=("p",), ignore_bos="no"), "ignore_bos must be true or false"),
    (lambda: FeaturesRequest.from_params({"prompts": ["p"]}), "a features job's params lack sae"),
    (lambda: FeaturesRequest(SAE, prompts=("p",), density_threshold=1.5), "density_threshold must be from 0 to 1"),
])
def test_a_bad_value_is_refused_at_construction_with_one_line(build, says):
    with pytest.raises(UsageError) as e:
        build()
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_search_is_as_its_sweeps_are_duplicates_once_and_the_default_seed():
    r = search(features=[5, 5, 7], prompts=["a", "a", "b"], seeds=[])
    assert (r.features, r.prompts, r.seeds) == ((5, 7), ("a", "b"), SweepRequest.seeds)
    sweep = r.round([0.0, 100.0, 100.0])
    assert (sweep.features, sweep.prompts, sweep.seeds, sweep.strengths) == ((5, 7), ("a", "b"), (42,), (0.0, 100.0))
    assert sweep.settings == r.settings and sweep.dtype == r.dtype and sweep.model == r.model
    held = r.round([5.0], prompts=["held"])  # other prompts: the search's chats are not carried
    assert held.prompts == ("held",) and held.chats == ()
    with pytest.raises(UsageError, match="feature 16384 is out of range for x"):
        search(features=(16384,)).check_features(16384, "x")


# --- every default written once -----------------------------------------------------------------------------

def _defaults(command) -> dict:
    return {p.name: p.default for p in command.params}


def test_the_cli_defaults_are_the_requests():
    from saejobs.cli import score_cmd, submit_cmd

    verify = _defaults(submit_cmd.verify)
    assert (verify["max_tokens"], verify["dtype"]) == (VerifyRequest.max_tokens, VerifyRequest.dtype)
    s = _defaults(score_cmd.search)
    lo, hi = score_cmd._range(None, None, s["range_"])
    cli = search(lo=lo, hi=hi, max_nll_increase=s["max_nll_increase"], points=s["points"], refine_rounds=s["rounds"],
                 settings=Settings(n_tokens=s["n_tokens"], temperature=s["temperature"], method=s["method"],
                                   sampling_semantics=s["sampling_semantics"], top_p=s["top_p"]), dtype=s["dtype"])
    assert cli == search()  # an option left alone is the request's default, not a second copy of it


def test_tasks_read_their_params_only_through_the_typed_request():
    """No ``params.get("x", default)`` (a second default) nor ``params["x"]`` in the tasks: each reads
    ``XRequest.from_params(ctx.params)`` and nothing else of the row."""
    for name, request in (("download", DownloadRequest), ("verify", VerifyRequest), ("score", ScoreRequest),
                          ("search", SearchRequest)):
        text = (ROOT / "tasks" / f"{name}.py").read_text()
        assert re.findall(r"\w*\.?\w*\(?ctx\.params\b", text) == [f"{request.__name__}.from_params(ctx.params"], name
        assert not re.search(r"\bp(arams)?\.get\(|\bp(arams)?\[", text), name


# --- the job row: a lossless round trip, and rows written before -------------------------------------------

@pytest.mark.parametrize("request_", [
    DownloadRequest(SAE), DownloadRequest(SAE, source="/srv/mirror"),
    VerifyRequest(SAE), VerifyRequest(SAE, path="/data/sae", structural_only=True, model="gemma-3-270m-gguf",
                                      dtype="bfloat16", max_tokens=1024),
    ScoreRequest(JOB),
    FeaturesRequest(SAE, prompts=("a dog", "the sea"), k=5, ignore_bos=False),
    FeaturesRequest(SAE, prompts=("p",), density_threshold=None), FeaturesRequest(SAE, prompts=("p",), density_threshold=0.2),
    FeaturesRequest(SAE, chats=(chat.conversation([{"role": "user", "content": "hi"}]),), chat_template="{{ x }}",
                    model="m", dtype="bfloat16"),
    search(), search(features=(1, 2), prompts=("a", "b"), seeds=(3, 4), lo=-5.0, hi=50.0, max_nll_increase=0.5,
                     points=9, refine_rounds=0, settings=Settings(n_tokens=8), model="m", dtype="float16"),
    search(prompts=(), chats=(chat.conversation([{"role": "user", "content": "hi"}]),), chat_template="{{ x }}",
           settings=Settings(n_tokens=8, temperature=0.7, sampling_semantics="interp-engine", top_p=0.9,
                             method="ORTHOGONAL_DECOMP", normalize=True), batch_size=16),
], ids=lambda r: type(r).__name__)
def test_round_trip_through_the_job_row(request_):
    params = json.loads(json.dumps(request_.to_params()))  # what the job row stores
    assert type(request_).from_params(params) == request_
    assert JobKind.of(request_).request_type.from_params(params) == request_


# Params exactly as the code before the typed requests wrote them (cli/submit_cmd.py, cli/score_cmd.py,
# cli/demo_cmd.py; ``timeout_s`` added by --timeout), and older rows that lack keys added later. The last
# column: the row is as today's CLI writes it, so the request writes it again key for key.
OLD_ROWS = [
    (JobKind.DOWNLOAD, {"sae": SAE}, DownloadRequest(SAE), True),
    (JobKind.DOWNLOAD, {"sae": SAE, "source": "/home/u/mirror", "timeout_s": 30.0},
     DownloadRequest(SAE, source="/home/u/mirror"), True),
    (JobKind.VERIFY, {"sae": SAE, "structural_only": False, "dtype": "float32", "max_tokens": 2048},
     VerifyRequest(SAE), True),
    (JobKind.VERIFY, {"sae": SAE, "structural_only": True, "dtype": "bfloat16", "max_tokens": 512, "model": "m",
                      "path": "/data/sae", "timeout_s": 5.0},
     VerifyRequest(SAE, path="/data/sae", structural_only=True, model="m", dtype="bfloat16", max_tokens=512), True),
    (JobKind.VERIFY, {"sae": SAE, "model": "gemma-3-270m-gguf", "max_tokens": 1024},  # the demo's
     VerifyRequest(SAE, model="gemma-3-270m-gguf", max_tokens=1024), False),
    (JobKind.SCORE, {"job": JOB}, ScoreRequest(JOB), True),
    (JobKind.SEARCH, {"sae": SAE, "features": [7650], "prompts": ["Once upon a time"], "seeds": [42], "lo": 0.0,
                      "hi": 400.0, "max_nll_increase": 1.0, "points": 5, "refine_rounds": 1, "n_tokens": 32,
                      "model": None, "dtype": "float32", "timeout_s": 600.0}, search(), True),
    (JobKind.SEARCH, {"sae": SAE, "features": [7650], "prompts": ["Once upon a time"], "lo": 0, "hi": 400,
                      "max_nll_increase": 1}, search(), False),  # an early row: later keys absent, integers
    (JobKind.SWEEP, {"sae": SAE, "model": None, "features": [1], "vectors": [], "strengths": [5.0], "prompts": ["p"],
                     "seeds": [42], "n_tokens": 8, "temperature": 0.0, "freq_penalty": 0.0,
                     "strength_multiplier": 1.0, "method": "SIMPLE_ADDITIVE", "normalize": False, "combine": False,
                     "n_logprobs": 0, "dtype": "float32", "batch_size": None, "timeout_s": 60.0},
     SweepRequest(sae=SAE, features=(1,), strengths=(5.0,), prompts=("p",), settings=Settings(n_tokens=8)), False),
]


@pytest.mark.parametrize("kind, old, expected, as_cli_wrote", OLD_ROWS,
                         ids=[f"{k}-{i}" for i, (k, *_) in enumerate(OLD_ROWS)])
def test_a_row_written_by_the_previous_code_still_reads(kind, old, expected, as_cli_wrote):
    req = kind.request_type.from_params(json.loads(json.dumps(old)))
    assert req == expected and JobKind.of(req) == kind
    if as_cli_wrote:
        assert req.to_params() == {k: v for k, v in old.items() if k != "timeout_s"}


# --- one mapping from kind to request type -----------------------------------------------------------------

def test_every_kind_has_one_request_type_and_back():
    types = {k: k.request_type for k in JobKind}
    assert len(set(types.values())) == len(JobKind), "two kinds share a request type"
    examples = {JobKind.DOWNLOAD: DownloadRequest(SAE), JobKind.VERIFY: VerifyRequest(SAE),
                JobKind.SWEEP: SweepRequest(sae=SAE, features=(1,), strengths=(1.0,), prompts=("p",)),
                JobKind.SCORE: ScoreRequest(JOB), JobKind.SEARCH: search(),
                JobKind.FEATURES: FeaturesRequest(SAE, prompts=("p",))}
    assert set(examples) == set(JobKind), "a new kind needs an example here"
    for kind, req in examples.items():
        assert type(req) is kind.request_type and JobKind.of(req) == kind
        with pytest.raises(AttributeError):  # frozen: what was validated stays so
            req.sae = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="dict is not a job request"):
        JobKind.of({"sae": SAE})


def test_building_any_request_needs_no_torch():
    code = ("import sys; from saejobs.db.states import JobKind;"
            "from saejobs.engine.job_requests import DownloadRequest, VerifyRequest, ScoreRequest, SearchRequest;"
            "rs = [DownloadRequest('s'), VerifyRequest('s'), ScoreRequest('j'), "
            "SearchRequest(sae='s', features=(1,), prompts=('p',))];"
            "[JobKind.of(r).request_type.from_params(r.to_params()) for r in rs];"
            "heavy = [m for m in ('torch', 'transformers', 'numpy', 'sqlalchemy') if m in sys.modules];"
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --- submitting: the request's row, the same strings in the database and the JSON ---------------------------

def test_a_submitted_request_is_its_row_and_prints_as_before(db_url):  # noqa: F811
    from saejobs.db import jobs
    from saejobs.tasks.submit import submit

    req = VerifyRequest(SAE, structural_only=True)
    job = submit(req, sae_id=SAE, local=True, timeout_s=5.0)
    shown = json.loads(json.dumps(jobs.as_dict(job), default=str))
    assert (shown["kind"], shown["state"], shown["message"]) == ("verify", "queued", "queued")
    assert shown["params"] == {**req.to_params(), "timeout_s": 5.0}
    assert VerifyRequest.from_params(jobs.get(job.id).params) == req
    assert [j.id for j in jobs.listing(state=JobState.QUEUED, kind=JobKind.VERIFY)] == [job.id]
    # a kind and a row's params (the bench scripts, a child job) go through the same typed request
    again = submit(JobKind.VERIFY, {"sae": SAE, "structural_only": True, "timeout_s": 5.0}, sae_id=SAE, local=True)
    assert jobs.get(again.id).params == jobs.get(job.id).params
    with pytest.raises(UsageError, match="max_tokens must be an integer"):
        submit("verify", {"sae": SAE, "max_tokens": 1}, local=True)
    assert len(jobs.listing()) == 2  # refused before any row


def test_every_shard_of_a_queued_sweep_carries_its_deadline(home, broker):  # noqa: F811
    """--timeout bounds each attempt, and a sweep's attempts are its shards' (they are what workers claim)."""
    from saejobs.db import jobs
    from saejobs.tasks.submit import submit

    req = SweepRequest(sae=SAE, features=(1, 2), strengths=(1.0, 2.0), prompts=("p",))
    job = submit(req, sae_id=SAE, shard_size=2, timeout_s=7.0)
    shards = jobs.shards(job.id)
    assert len(shards) == 3 and all(s.params["timeout_s"] == 7.0 for s in shards)
    assert SweepRequest.from_params(jobs.get(job.id).params) == req


# --- one attempts limit ---------------------------------------------------------------------------------

def test_the_rows_attempts_are_the_only_limit_on_re_sending_a_job(monkeypatch):
    """Celery's retry counter would stop re-sending a transient job after 3 retries whatever
    SAEJOBS_MAX_ATTEMPTS allows (and restarts at 0 after a hand-back or a reap): it is switched off."""
    from saejobs.db import jobs
    from saejobs.tasks.celery_tasks import run_job

    assert run_job.max_retries is None
    monkeypatch.delenv("SAEJOBS_MAX_ATTEMPTS", raising=False)
    assert jobs.max_attempts() == jobs.DEFAULT_MAX_ATTEMPTS
    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "7")
    assert jobs.max_attempts() == 7
