"""A shard plans only its slice of the grid (issue 26, item 12), equal to the same range of the full plan
on grids of every shape; a submission over ``SAEJOBS_MAX_CONFIGS`` is refused in one line; a shard's
progress report settles its sweep from one aggregate query, never its siblings' rows."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import text

from saejobs.db import jobs
from saejobs.db.session import get_engine
from saejobs.engine import chat, request as request_mod
from saejobs.engine.errors import UsageError
from saejobs.engine.request import Settings, SweepRequest, Vector
from saejobs.tasks.submit import shard_plan
from tests.dbfixtures import db_url, home  # noqa: F401
from tests.test_db_scale import Statements
from tests.test_queue import one_clean_line, saejobs

V1, V2 = Vector("/v/a.npy", "1" * 64), Vector("/v/b.npy", "2" * 64)
CHATS = tuple(chat.conversation([{"role": "user", "content": f"hello {i}"}]) for i in range(3))
GRIDS = {
    "features": SweepRequest(sae="x", features=(3, 1, 2), strengths=(0, 5, -2.5), prompts=("a", "b"), seeds=(1, 2, 3)),
    "combine": SweepRequest(sae="x", features=(3, 1), vectors=(V1,), strengths=(1, 2), prompts=("a",), seeds=(7, 8),
                            combine=True),
    "vectors": SweepRequest(sae="x", vectors=(V1, V2), strengths=(4,), prompts=("p", "q", "r")),
    "chats": SweepRequest(sae="x", features=(9,), strengths=(1, 3), chats=CHATS, chat_template="{{ messages }}",
                          seeds=(5, 6), settings=Settings(normalize=True)),
    "one": SweepRequest(sae="x", features=(0,), strengths=(1,), prompts=("a",)),
}


def keyed(configs):
    return [(c, c.key) for c in configs]  # a config's key is left out of its equality


def nested_loops(req: SweepRequest, steering_id: str) -> list:
    """The grid as the README states it, written as plain loops: DEFAULT rows first (inputs × seeds), then
    per feature/vector (or, with combine, all of them at once) per strength the same block."""
    terms = [{"index": i} for i in req.features] + [{"vector": v.label} for v in req.vectors]
    template = chat.template_id(req.chat_template)
    inputs = [(p, ()) for p in req.prompts] + [("", c) for c in req.chats]

    def row(kind, fs, p, c, seed):
        cfg = request_mod.SweepConfig(kind, fs, p, seed, chat=c, chat_template=template if c else "")
        return dataclasses.replace(cfg, key=request_mod.config_key(cfg, req.settings, steering_id))

    out = [row("DEFAULT", (), p, c, s) for p, c in inputs for s in req.seeds]
    for group in ([terms] if req.combine else [[t] for t in terms]):
        for strength in req.strengths:
            fs = tuple({**t, "strength": float(strength)} for t in group)
            out += [row("STEERED", fs, p, c, s) for p, c in inputs for s in req.seeds]
    return out


@pytest.mark.parametrize("name", list(GRIDS))
def test_a_slice_is_that_range_of_the_full_plan(name):
    req = GRIDS[name]
    full = keyed(nested_loops(req, "sae@abc"))
    assert keyed(req.configs("sae@abc")) == full
    assert req.size() == len(full)
    for lo in range(len(full) + 1):
        for hi in range(lo, len(full) + 2):
            assert keyed(req.configs("sae@abc", lo, hi)) == full[lo:hi], (lo, hi)


@pytest.mark.parametrize("name", list(GRIDS))
def test_plan_configs_is_the_whole_grid(name):
    """``plan_configs``, what the benches and tests call with plain lists, plans the same grid."""
    r = GRIDS[name]
    got = request_mod.plan_configs(list(r.features), [v.label for v in r.vectors], list(r.strengths), list(r.prompts),
                                   list(r.seeds), r.combine, r.settings, "sae@abc", list(r.chats), r.chat_template)
    assert keyed(got) == keyed(nested_loops(r, "sae@abc"))


def test_a_shard_never_plans_the_whole_grid(monkeypatch):
    made = []
    key = request_mod.config_key
    monkeypatch.setattr(request_mod, "config_key", lambda *a: made.append(1) or key(*a))  # one per planned config
    big = SweepRequest(sae="x", features=tuple(range(2_000)), strengths=tuple(range(50)), prompts=("a", "b"),
                       seeds=(1, 2, 3, 4, 5))  # 1,000,010 configurations
    assert big.size() == 10 * (1 + 2_000 * 50)
    shards = [p["shard"] for p in shard_plan(big, 256)]
    assert shards[0] == [0, 256] and shards[-1][1] == big.size() and len(shards) == -(-big.size() // 256)
    lo, hi = shards[len(shards) // 2]
    part = big.configs("s", lo, hi)
    i = lo - 10  # its first configuration's place in the steered block, counted by hand
    assert len(made) == len(part) == 256 and part[0].features == ({"index": i // (50 * 10), "strength": float(i // 10 % 50)},)
    assert (part[0].prompt, part[0].seed) == ("ab"[i % 10 // 5], i % 5 + 1)


def test_a_grid_over_the_limit_is_refused_at_submission(db_url, monkeypatch):
    from saejobs.tasks.submit import submit

    jobs.listing()  # the schema, so "no row" is a count of 0
    monkeypatch.setenv("SAEJOBS_MAX_CONFIGS", "14")
    req = SweepRequest(sae="x", features=(1, 2), strengths=(1, 2, 3), prompts=("a", "b"))  # 2 × (1 + 6) = 14
    req.check_size()
    wide = SweepRequest(sae="x", features=(1, 2, 3), strengths=(1, 2, 3), prompts=("a", "b"))  # 20
    with pytest.raises(UsageError, match="20 configurations; the limit is 14"):
        submit(wide, local=True)
    monkeypatch.setenv("SAEJOBS_MAX_CONFIGS", "")
    assert request_mod.DEFAULT_MAX_CONFIGS == 1_000_000
    with pytest.raises(UsageError, match="1,000,010 configurations; the limit is 1,000,000"):
        SweepRequest(sae="x", features=tuple(range(2_000)), strengths=tuple(range(50)), prompts=("a", "b"),
                     seeds=(1, 2, 3, 4, 5)).check_size()
    line = one_clean_line(saejobs("sweep", "--sae", "gemma-3-270m/5-gemmascope-2-res-16k", "--feature", "1,2,3",
                                  "--strength", "1,2,3", "--prompt", "a", "--prompt", "b",
                                  env={"SAEJOBS_MAX_CONFIGS": "14"}), 2)
    assert "20 configurations" in line and "SAEJOBS_MAX_CONFIGS" in line
    with get_engine().connect() as c:
        assert c.execute(text("SELECT count(*) FROM jobs")).scalar() == 0  # nothing written


def test_a_shard_report_settles_its_sweep_by_one_aggregate(db_url):
    sweep = jobs.create("sweep", {}, queue="saejobs", shards=[{"shard": [i, i + 1]} for i in range(40)])
    shards = jobs.shards(sweep.id)
    for i, sh in enumerate(shards[:10]):
        assert jobs.claim(sh.id, worker=f"w{i}", host="h", gpu=None)
    with Statements() as seen:
        jobs.report(shards[0].id, 0.5, "half", worker="w0")
    siblings = [q for q in seen if "WHERE jobs.parent_id" in q]  # what reads the sweep's shards: aggregates only
    assert siblings and all("sum(" in q.lower() for q in siblings), siblings
    with get_engine().connect() as c:  # the mean of its shards, by plain SQL
        mean = c.execute(text("SELECT avg(progress) FROM jobs WHERE parent_id = :p"), {"p": sweep.id}).scalar()
    got = jobs.get(sweep.id)
    assert got.progress == pytest.approx(mean) and got.state == "running" and got.message == "0/40 shards done"
    for i, sh in enumerate(shards):
        if i >= 10:
            assert jobs.claim(sh.id, worker=f"w{i}", host="h", gpu=None)
        assert jobs.finish(sh.id, "failed" if i == 3 else "succeeded", worker=f"w{i}", error="boom" if i == 3 else None,
                           result={"shard_size": 1})
    got = jobs.get(sweep.id)
    assert got.state == "failed" and got.error == "1 of 40 shards failed; first: boom"
