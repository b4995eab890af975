"""The job state machine and result storage, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import func, select

from saejobs.db import jobs, results
from saejobs.db.jobs import JobCancelled
from saejobs.db.models import Generation, Job, JobEvent
from saejobs.db.session import session
from saejobs.engine.errors import NotFoundError, UsageError
from tests.dbfixtures import db_url, home  # noqa: F401


def claim(job_id, worker="w1"):
    return jobs.claim(job_id, worker=worker, host="h", gpu=None)


def test_lifecycle_records_progress_events_and_result(db_url):
    job = jobs.create("verify", {"sae": "x"}, sae_id="x", queue="saejobs")
    assert jobs.get(job.id).state == "queued"
    assert claim(job.id)
    jobs.report(job.id, 0.5, "half", worker="w1")
    assert jobs.finish(job.id, "succeeded", worker="w1", result={"verdict": "PASS"})
    got = jobs.get(job.id[:8])  # a prefix finds it
    assert (got.state, got.progress, got.attempts, got.result) == ("succeeded", 1.0, 1, {"verdict": "PASS"})
    assert got.started_at <= got.finished_at
    assert [e.state for e in jobs.events(got.id)] == ["queued", "running", "running", "succeeded"]
    assert jobs.events(got.id)[2].message == "half"


def test_a_redelivered_job_is_claimed_once(db_url):
    job = jobs.create("verify", {})
    assert claim(job.id, "w1")
    assert not claim(job.id, "w2")  # second delivery while w1 is alive
    jobs.finish(job.id, "succeeded", worker="w1")
    assert not claim(job.id, "w2")  # and after it finished


def test_a_dead_workers_job_is_handed_on_and_the_old_worker_stops(db_url):
    job = jobs.create("sweep", {})
    assert claim(job.id, "w1")
    assert job.id not in jobs.stale_running(60)
    _age_heartbeat(job.id, 120)
    assert job.id in jobs.stale_running(60)
    assert job.id not in jobs.stale_running(60, running=job.id)  # the asking worker runs it: it is alive
    lost = jobs.create("sweep", {})  # w1's earlier job, given up (e.g. after a database outage): w1 reaps it
    assert claim(lost.id, "w1")
    _age_heartbeat(lost.id, 120)
    assert lost.id in jobs.stale_running(60, running=job.id)
    assert jobs.requeue(lost.id, "worker lost", stale_after=60)
    assert not claim(job.id, "w2")  # a duplicate message does not take it: only a reaper hands it on
    assert jobs.requeue(job.id, "worker lost", stale_after=60)
    assert not jobs.requeue(job.id, "second reaper", stale_after=60)
    assert claim(job.id, "w2")
    with pytest.raises(JobCancelled):
        jobs.report(job.id, 0.9, worker="w1")  # w1 comes back from a pause: it no longer owns the job
    assert not jobs.finish(job.id, "succeeded", worker="w1")
    assert jobs.finish(job.id, "succeeded", worker="w2")
    assert jobs.get(job.id).attempts == 2


def _age_heartbeat(job_id, seconds):
    from datetime import timedelta

    from saejobs.db.models import utcnow

    with session() as s:
        s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=seconds)


def test_cancel_stops_a_running_job_at_its_next_report(db_url):
    job = jobs.create("sweep", {})
    claim(job.id)
    assert jobs.cancel(job.id[:6]).state == "cancelled"
    with pytest.raises(JobCancelled):
        jobs.report(job.id, 0.3, worker="w1")
    assert not jobs.finish(job.id, "succeeded", worker="w1")
    assert jobs.get(job.id).state == "cancelled"
    with pytest.raises(UsageError, match="only queued or running"):
        jobs.cancel(job.id)


def test_retry_only_failed_or_cancelled(db_url):
    job = jobs.create("download", {})
    claim(job.id)
    jobs.finish(job.id, "failed", worker="w1", error="boom")
    assert jobs.reset_for_retry(job.id) == [job.id]
    again = jobs.get(job.id)
    assert (again.state, again.error, again.attempts) == ("queued", None, 0)  # a fresh budget of attempts
    assert claim(again.id, "w2")
    jobs.finish(job.id, "succeeded", worker="w2")
    with pytest.raises(UsageError, match="only failed or cancelled"):
        jobs.reset_for_retry(job.id)


def test_unknown_job_is_a_clear_error(db_url):
    with pytest.raises(NotFoundError, match="no job 'nope'"):
        jobs.get("nope")


def test_abandon_fails_a_job_that_never_reached_the_broker(db_url):
    job = jobs.create("verify", {})
    jobs.abandon(job.id, "broker unreachable at redis://127.0.0.1:1/0")
    got = jobs.get(job.id)
    assert got.state == "failed" and "broker unreachable" in got.error


def test_generations_are_keyed_so_a_rerun_never_duplicates(db_url):
    job = jobs.create("sweep", {})
    sid = results.ensure_sweep(job.id, "sae", "model", {"a": 1}, {"p": 1})
    assert results.ensure_sweep(job.id, "sae", "model", {"a": 1}, {"p": 2}) == sid
    row = {"type": "STEERED", "features": [{"index": 1, "strength": 2.0}], "prompt": "p", "prompt_token_ids": [2, 3],
           "seed": 42, "sampling": {}, "output": "p x", "token_ids": [4], "logprobs": None}
    assert results.add_generations(sid, [{**row, "config_key": "k1"}, {**row, "config_key": "k2"}]) == 2
    assert results.add_generations(sid, [{**row, "config_key": "k2"}, {**row, "config_key": "k3"}]) == 1
    assert results.config_keys(sid) == {"k1", "k2", "k3"}
    with session() as s:
        assert s.scalar(select(func.count()).select_from(Generation)) == 3


def _hammer(url: str, n: int, out) -> None:
    """Another process: create, claim, report and finish ``n`` jobs as fast as it can."""
    import os

    os.environ["SAEJOBS_DB"] = url
    from saejobs.db import jobs as j

    try:
        for i in range(n):
            job = j.create("verify", {"i": i})
            assert j.claim(job.id, worker=f"p{os.getpid()}", host="h", gpu=None)
            for k in range(3):
                j.report(job.id, k / 3, f"step {k}", worker=f"p{os.getpid()}")
            assert j.finish(job.id, "succeeded", worker=f"p{os.getpid()}")
        out.put("ok")
    except Exception as e:  # reported to the parent, which fails the test with it
        out.put(f"{type(e).__name__}: {e}")


def test_several_processes_write_at_once_without_lock_errors(db_url):
    jobs.listing()  # create the schema before the writers start
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(db_url, 25, out)) for _ in range(4)]
    for p in procs:
        p.start()
    answers = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert answers == ["ok"] * 4, answers
    with session() as s:
        assert s.scalar(select(func.count()).where(Job.state == "succeeded")) == 100
        # queued, running, two of the three reports (the one at 0% is coalesced into the claim's), succeeded
        assert s.scalar(select(func.count()).select_from(JobEvent)) == 100 * 5


def test_models_and_migrations_agree(db_url):
    """Autogenerate against the migrated database finds nothing: the migration is the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from saejobs.db.models import Base, fts_object
    from saejobs.db.session import check_schema, get_engine

    check_schema()  # a new database: created on first use
    with get_engine().connect() as conn:  # the full-text objects are the migration's alone (as env.py says)
        ctx = MigrationContext.configure(conn, opts={"include_name": lambda name, *_: not fts_object(name)})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_the_schema_revision_a_process_checks_is_alembics_head(db_url):
    """The fast path's constant cannot drift from the migrations: a new migration must update it."""
    from saejobs.db import migrate
    from saejobs.db.session import check_schema, get_engine

    check_schema()
    assert migrate.SCHEMA_REVISION == migrate.head()
    assert migrate.is_current(get_engine()) and migrate.current(get_engine()) == migrate.SCHEMA_REVISION


def test_an_older_or_newer_schema_is_refused_and_upgrade_is_a_step(db_url):
    """No process migrates a database in use: an older one is refused naming `saejobs db upgrade`, which
    then migrates it; a newer one (migrated by a newer saejobs) is refused naming the code to upgrade."""
    from sqlalchemy import text

    from saejobs.db import migrate, upgrade
    from saejobs.db.session import SchemaMismatch, dispose_all, get_engine

    eng = get_engine()
    migrate.upgrade(eng, "0001")
    dispose_all()
    with pytest.raises(SchemaMismatch, match=r"schema 0001, older than .* run `saejobs db upgrade`"):
        jobs.listing()
    assert migrate.stamped(get_engine()) == "0001"  # refused, not migrated
    done = upgrade.run(get_engine())
    assert (done.before, done.after) == ("0001", migrate.SCHEMA_REVISION)
    dispose_all()
    assert jobs.listing() == []
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    dispose_all()
    with pytest.raises(SchemaMismatch, match=r"schema 0099, newer than this saejobs .* upgrade saejobs on this host"):
        jobs.listing()
    with pytest.raises(SchemaMismatch, match="newer than this saejobs"):
        upgrade.run(get_engine())


def test_attempts_are_bounded_and_the_last_error_kept(db_url, monkeypatch):
    """A job that keeps losing its worker fails after SAEJOBS_MAX_ATTEMPTS with the last reason, whichever
    path meets the limit: the reaper's requeue, or a late delivery's claim."""
    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "2")
    job = jobs.create("sweep", {})
    assert claim(job.id, "w1") and jobs.requeue(job.id, "worker lost (no heartbeat)", worker="w1")
    assert jobs.get(job.id).error == "worker lost (no heartbeat)"  # kept while it waits
    assert claim(job.id, "w2")
    assert not jobs.requeue(job.id, "worker lost again", worker="w2")  # out of attempts: not sent again
    got = jobs.get(job.id)
    assert (got.state, got.error) == ("failed", "gave up after 2 attempts; last: worker lost again")
    other = jobs.create("sweep", {})
    with session() as s:
        s.get(Job, other.id).attempts = 2
    assert not claim(other.id, "w3")  # a message still on the queue cannot run it a third time
    assert jobs.get(other.id).state == "failed" and jobs.get(other.id).error.startswith("gave up after 2 attempts")


def test_a_stale_owner_writes_no_results(db_url):
    """w1 is cut off, its job handed on to w2: w1's chunk is refused whole, w2's is stored."""
    job = jobs.create("sweep", {})
    sid = results.ensure_sweep(job.id, "sae", "model", {}, {})
    row = {"type": "DEFAULT", "features": [], "prompt": "p", "prompt_token_ids": [2], "seed": 42, "sampling": {},
           "output": "p x", "token_ids": [4], "logprobs": None}
    assert claim(job.id, "w1")
    assert results.add_generations(sid, [{**row, "config_key": "a"}], owner=(job.id, "w1")) == 1
    _age_heartbeat(job.id, 120)
    assert jobs.requeue(job.id, "worker lost", stale_after=60) and claim(job.id, "w2")
    with pytest.raises(JobCancelled):
        results.add_generations(sid, [{**row, "config_key": "b"}], owner=(job.id, "w1"))
    assert not jobs.requeue(job.id, "w1 hands back", worker="w1")  # nor can it hand back w2's job
    assert results.add_generations(sid, [{**row, "config_key": "b"}], owner=(job.id, "w2")) == 1
    assert results.config_keys(sid) == {"a", "b"} and jobs.get(job.id).worker == "w2"


def test_a_sweeps_shards_make_one_job(db_url):
    """Progress is the shards' mean; the last shard to end ends the sweep; cancel and retry act on all."""
    parent = jobs.create("sweep", {"sae": "x"}, queue="saejobs", shards=[{"shard": [0, 5]}, {"shard": [5, 8]}])
    a, b = jobs.shards(parent.id)
    assert (jobs.get(parent.id).queue, a.queue, a.params, b.params) == (None, "saejobs", {"shard": [0, 5]}, {"shard": [5, 8]})
    assert not claim(parent.id)  # the parent is never run itself
    assert [j.id for j in jobs.listing()] == [parent.id]  # shards only on request
    assert claim(a.id, "w1") and jobs.get(parent.id).state == "running"
    jobs.report(a.id, 0.5, worker="w1")
    assert jobs.get(parent.id).progress == pytest.approx(0.25)
    assert jobs.finish(a.id, "succeeded", worker="w1", result={"sweep_id": 7, "shard_size": 5, "ran_now": 5})
    assert jobs.get(parent.id).state == "running" and jobs.get(parent.id).message == "1/2 shards done"
    assert claim(b.id, "w2")
    assert jobs.finish(b.id, "failed", worker="w2", error="boom")
    got = jobs.get(parent.id)
    assert (got.state, got.error) == ("failed", "1 of 2 shards failed; first: boom")
    assert jobs.reset_for_retry(parent.id) == [b.id]  # only what did not succeed runs again
    assert jobs.get(parent.id).state == "queued" and jobs.get(a.id).state == "succeeded"
    assert claim(b.id, "w3")
    jobs.cancel(parent.id)
    assert {jobs.get(i).state for i in (parent.id, b.id)} == {"cancelled"}
    with pytest.raises(JobCancelled):
        jobs.report(b.id, 0.9, worker="w3")
    jobs.reset_for_retry(parent.id)
    assert claim(b.id, "w3") and jobs.finish(b.id, "succeeded", worker="w3", result={"sweep_id": 7, "shard_size": 3})
    got = jobs.get(parent.id)
    assert (got.state, got.progress, got.result["generations"], got.result["sweep_id"]) == ("succeeded", 1.0, 8, 7)


def test_a_job_past_its_deadline_stops_at_its_next_report(db_url):
    job = jobs.create("sweep", {"timeout_s": 5})
    assert claim(job.id, "w1")
    jobs.report(job.id, 0.1, worker="w1")
    with session() as s:  # the attempt started long enough ago
        row = s.get(Job, job.id)
        row.deadline_at = row.deadline_at - __import__("datetime").timedelta(seconds=10)
    with pytest.raises(jobs.DeadlineExceeded, match="deadline passed"):
        jobs.report(job.id, 0.2, worker="w1")
    assert jobs.get(job.id).progress == pytest.approx(0.1)  # nothing written past the deadline


def test_a_shard_past_its_sweeps_deadline_says_so_in_its_error(db_url):
    """A shard's params carry no timeout_s (its sweep's do): the deadline's message reads the sweep's, and
    the sweep fails naming it, with the deadline's exit code."""
    from datetime import timedelta

    parent = jobs.create("sweep", {"timeout_s": 5}, queue="saejobs", shards=[{"shard": [0, 1]}])
    (a,) = jobs.shards(parent.id)
    assert claim(a.id, "w1")
    with session() as s:
        row = s.get(Job, a.id)
        row.deadline_at = row.deadline_at - timedelta(seconds=10)
    with pytest.raises(jobs.DeadlineExceeded, match=r"^deadline passed \(5 s after the attempt started at "
                                                    r"\d\d:\d\d:\d\d\); stopped at 0%$") as e:
        jobs.report(a.id, 0.2, worker="w1")
    assert e.value.exit_code == 5


def test_retrying_one_shard_reopens_its_sweep_and_abandon_fails_it_once(db_url):
    parent = jobs.create("sweep", {}, queue="saejobs", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    a, b = jobs.shards(parent.id)
    assert claim(a.id, "w1") and jobs.finish(a.id, "succeeded", worker="w1", result={"shard_size": 1})
    assert claim(b.id, "w1") and jobs.finish(b.id, "failed", worker="w1", error="boom")
    assert jobs.get(parent.id).state == "failed"
    assert jobs.reset_for_retry(b.id) == [b.id]
    assert jobs.get(parent.id).state in ("queued", "running")
    assert claim(b.id, "w2") and jobs.finish(b.id, "succeeded", worker="w2", result={"shard_size": 1})
    assert jobs.get(parent.id).state == "succeeded"
    other = jobs.create("sweep", {}, queue="saejobs", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    jobs.abandon(other.id, "broker unreachable at redis://x")
    got = jobs.get(other.id)
    assert got.state == "failed" and "broker unreachable" in got.error
    assert [e.state for e in jobs.events(got.id)].count("failed") == 1


def test_a_sweep_is_never_reaped_and_its_state_always_follows_its_shards(db_url, monkeypatch):
    """After ``jobs retry`` the sweep's own row keeps the heartbeat of its last end: it must not look like
    a dead worker's job (handed on as "worker lost", or failed for its shards' attempts while they run)."""
    from datetime import timedelta

    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "2")
    parent = jobs.create("sweep", {}, queue="saejobs", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    a, b = jobs.shards(parent.id)
    assert claim(a.id, "w1") and jobs.finish(a.id, "failed", worker="w1", error="boom")
    assert claim(b.id, "w1") and jobs.finish(b.id, "succeeded", worker="w1", result={"shard_size": 1})
    assert jobs.get(parent.id).state == "failed"
    assert jobs.reset_for_retry(parent.id) == [a.id]
    assert claim(a.id, "w2") and jobs.get(parent.id).state == "running"
    with session() as s:  # the sweep's heartbeat is as old as its last end; shard a is on its 2nd (last) attempt
        row = s.get(Job, parent.id)
        row.heartbeat_at = row.heartbeat_at - timedelta(hours=1)
        s.get(Job, a.id).attempts = 2
    assert parent.id not in jobs.stale_running(30)
    assert not jobs.requeue(parent.id, "worker lost (no heartbeat); handed on", stale_after=30)
    assert jobs.get(parent.id).state == "running"
    assert jobs.finish(a.id, "succeeded", worker="w2", result={"shard_size": 1})
    assert jobs.get(parent.id).state == "succeeded"


def test_retrying_a_sweep_whose_shards_all_succeeded_settles_it(db_url):
    """A sweep row left failed while every shard succeeded (as the reaper used to leave it) is not put back
    in the queue with nothing to run: retry derives it from its shards."""
    parent = jobs.create("sweep", {}, queue="saejobs", shards=[{"shard": [0, 1]}])
    (a,) = jobs.shards(parent.id)
    assert claim(a.id) and jobs.finish(a.id, "succeeded", worker="w1", result={"shard_size": 1})
    with session() as s:
        s.get(Job, parent.id).state = "failed"
    assert jobs.reset_for_retry(parent.id) == []
    assert jobs.get(parent.id).state == "succeeded"


def test_a_queued_sweeps_shards_carry_its_deadline(db_url):
    parent = jobs.create("sweep", {"timeout_s": 5}, queue="saejobs", shards=[{"shard": [0, 1]}])
    (a,) = jobs.shards(parent.id)
    assert claim(a.id)
    got = jobs.get(a.id)
    assert got.deadline_at is not None and (got.deadline_at - got.started_at).total_seconds() == pytest.approx(5)


def test_a_worker_that_lost_its_job_writes_nothing(db_url):
    """Every write a running job makes checks its owner in the same transaction: the worker it was taken
    from (declared dead, job handed on) cannot overwrite the new owner's verdict, checksums, scores or
    provenance."""
    from saejobs.db import saes, scores
    from saejobs.db.models import Sae, Sweep, Verification
    from tests.saes import entry

    e = entry()
    job = jobs.create("verify", {"sae": e.id})
    assert claim(job.id, "w1")
    _age_heartbeat(job.id, 120)
    assert jobs.requeue(job.id, "worker lost", stale_after=60) and claim(job.id, "w2")
    results.record_verification(job.id, e.id, "PASS", [], {}, {}, owner=(job.id, "w2"))
    sweep_id = results.ensure_sweep(job.id, e.id, "m", {}, {"by": "w2"}, owner=(job.id, "w2"))
    saes.record_download(e, __import__("pathlib").Path("/x"), {"params.npz": {"sha256": "a" * 64, "size": 1}},
                         owner=(job.id, "w2"))
    results.add_generations(sweep_id, [{"config_key": "k", "type": "DEFAULT", "features": [], "prompt": "p",
                                        "seed": 1, "output": "o", "token_ids": [1], "prompt_token_ids": [2], "sampling": {}}],
                          owner=(job.id, "w2"))
    gen_id = results.generation_rows(job.id)[0]["id"]
    stale = (job.id, "w1")
    with pytest.raises(JobCancelled):
        results.record_verification(job.id, e.id, "FAIL", ["stale"], {}, {}, owner=stale)
    with pytest.raises(JobCancelled):
        results.ensure_sweep(job.id, e.id, "m", {}, {"by": "w1"}, owner=stale)
    with pytest.raises(JobCancelled):
        saes.record_download(e, __import__("pathlib").Path("/y"), {"params.npz": {"sha256": "b" * 64, "size": 1}},
                             owner=stale)
    with pytest.raises(JobCancelled):
        scores.set_scores({gen_id: {"nll": 1.0}}, owner=stale)
    with session() as s:
        assert s.scalar(select(Verification.verdict).where(Verification.job_id == job.id)) == "PASS"
        assert s.get(Sweep, sweep_id).provenance == {"by": "w2"}
        assert s.get(Sae, e.id).files["params.npz"]["sha256"] == "a" * 64
        assert s.get(Generation, gen_id).scores is None


def test_neuronpedia_runs_and_comparisons_are_found_by_a_shards_id(home):
    """``compare SHARD_ID``: the runs matched to the shard's sweep, and their comparisons recorded on it (both
    looked the sweep up by its own job id only: none found, then an AttributeError)."""
    from saejobs.db import neuronpedia as np_store
    from saejobs.db.models import Comparison, Generation, NeuronpediaRun, Sweep

    parent = jobs.create("sweep", {}, queue="saejobs", shards=[{"shard": [0, 1]}, {"shard": [1, 2]}])
    a, b = jobs.shards(parent.id)
    with session() as s:
        sweep = Sweep(job_id=parent.id, sae_id="x", model="m", settings={}, provenance={})
        s.add(sweep)
        s.flush()
        g = Generation(sweep_id=sweep.id, config_key="k1", type="STEERED", features=[{"index": 1, "strength": 2.0}],
                       prompt="p", prompt_token_ids=[2, 3], seed=1, sampling={}, output="p x", token_ids=[4],
                       logprobs=None, scores=None, messages=None)
        s.add(g)
        s.flush()
        s.add(NeuronpediaRun(api="inference", request={}, outputs={"STEERED": "p x"}, generation_id=g.id))
        sweep_id = sweep.id
    by_sweep = np_store.runs_for_sweep(parent.id)
    assert len(by_sweep) == 1
    for shard in (a.id, b.id):
        assert np_store.runs_for_sweep(shard) == by_sweep
    np_store.record_comparisons(b.id, [(by_sweep[0]["run"], {"exact": True})])
    with session() as s:
        assert [(c.sweep_id, c.metrics) for c in s.query(Comparison).all()] == [(sweep_id, {"exact": True})]
    assert np_store.runs_for_sweep("no-such-job") == []
    from saejobs.db import scores

    for shard in (a.id, b.id):  # `score SHARD_ID` and the export of a shard's steered rows find the sweep too
        assert [g["id"] for g in scores.unscored(shard)[1]] == [g["id"] for g in scores.unscored(parent.id)[1]] != []
        assert [g["id"] for g in np_store.steered(shard)] == [g["id"] for g in np_store.steered(parent.id)] != []
