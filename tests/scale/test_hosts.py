"""One sweep over several workers on several "hosts" (``tests/scale/hosts.py``), and what must not break
across hosts: kills, a clock 60 s ahead, PostgreSQL down longer than ``SAEJOBS_STALE_AFTER``, a job
that kills every worker, a worker that starts before its database, schemas that do not match."""

from __future__ import annotations

import time

import pytest

from saejobs.db import jobs, saes
from tests.dbfixtures import home  # noqa: F401
from tests.faults.servers import PostgresServer
from tests.faults.sweeps import Hold, stored
from tests.queue_harness import broker, start_worker, wait_for  # noqa: F401
from tests.scale.hosts import claims, clock_ahead, clock_offset, events, handed_on, host_env, pg_url  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import one_clean_line, saejobs, submitted
from tests.test_sweep_queue import generations

pytestmark = pytest.mark.model
FEATURES, STRENGTHS = "1,2,3,4,5,6,7,8,9", "0,1,2,4,8,12,16,24,32,48,64"
PROMPTS = ("Once upon a time", "The capital of France is")
N_CONFIGS = len(PROMPTS) + 9 * 11 * len(PROMPTS)  # 200


def sweep_args(home, model_dir, n_tokens: int = 6) -> list[str]:
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    args = ["sweep", "--sae", sae.id, "--feature", FEATURES, "--strength", STRENGTHS, "--n-tokens", str(n_tokens),
            "--model", str(model_dir), "--batch-size", "4", "--json"]
    for p in PROMPTS:
        args += ["--prompt", p]
    return args


def final(job_id: str, timeout: float = 300):
    return wait_for(lambda: (j := jobs.get(job_id)).state in ("succeeded", "failed", "cancelled") and j, timeout,
                    f"job {job_id[:8]} to end")


def test_a_sweep_shared_by_three_workers_on_two_hosts(home, pg_url, broker, start_worker, tiny_gemma2_dir, tmp_path,
                                                      monkeypatch):
    """200 configurations in 10 shards on hostA (two workers, one SIGKILLed mid-shard) and hostB (its clock
    60 s ahead); no shared SAE cache: each host fetches and checks its own copy. Every configuration is
    stored once, with the tokens of a --local run; only the killed worker's shard is handed on."""
    monkeypatch.setenv("SAEJOBS_HOST", "submitter")
    patient = {"SAEJOBS_STALE_AFTER": "10"}  # a loaded 2-core machine can starve a beat for seconds
    args = sweep_args(home, tiny_gemma2_dir)
    local = submitted(saejobs(*args, "--local"))
    assert local["state"] == "succeeded" and local["result"]["generations"] == N_CONFIGS
    hold = Hold(tmp_path, "sweep.chunk_stored:1")
    a1 = start_worker("--cpu", env=host_env(tmp_path, "hostA", **patient))
    assert clock_offset(a1) < 1  # our clock: its ready line is stamped before now
    victim = start_worker("--cpu", env=host_env(tmp_path, "hostA", **patient, **hold.env))
    b1 = start_worker("--cpu", env=host_env(tmp_path, "hostB", **patient, **clock_ahead(60)))
    skew = clock_offset(b1)
    assert skew >= 50, f"the clock preload did not take: hostB's worker is {skew:.1f} s ahead, not ~60"
    parent = submitted(saejobs(*args, "--shard-size", "20"))
    hold.wait()  # the victim has stored its shard's first chunk and is held there
    victim.kill()
    done = final(parent["id"])
    assert done.state == "succeeded", done.error
    assert done.result["generations"] == N_CONFIGS and done.result["shards"] == 10
    assert stored(parent["id"]) == N_CONFIGS  # each configuration once: nothing lost, nothing doubled
    assert generations(parent["id"]) == generations(local["id"])  # token for token
    by_shard = claims(parent["id"])
    ran = {w.split("@")[1]: set() for ws in by_shard.values() for w in ws}
    names = {w for ws in by_shard.values() for w in ws}
    assert {n.split("@")[0].split("-")[2] for n in names} == {str(p.proc.pid) for p in (a1, victim, b1)}, by_shard
    assert set(ran) == {"hostA", "hostB"}
    lost = handed_on(parent["id"])
    assert len(lost) == 1 and len(by_shard[lost[0]]) == 2, {s: events(s) for s in lost}  # the victim's shard, redone
    assert str(victim.proc.pid) in by_shard[lost[0]][0] and str(victim.proc.pid) not in by_shard[lost[0]][1]
    twice = {s: events(s) for s, ws in by_shard.items() if s != lost[0] and len(ws) != 1}
    assert not twice, twice  # the skewed clock took nothing
    copies = {c.host: c for c in saes.copies(done.sae_id)}
    assert set(copies) == {"submitter", "hostA", "hostB"} and len({c.sha256 for c in copies.values()}) == 1
    assert all(str(tmp_path / f"host-{h}") in copies[h].path for h in ("hostA", "hostB"))


def test_postgres_down_longer_than_stale_after(home, broker, start_worker, tiny_gemma2_dir, tmp_path, monkeypatch):
    """The database every worker shares goes down for twice SAEJOBS_STALE_AFTER mid-sweep: when it is back no
    reaper takes a healthy job (each waits to be in touch that long first) — not even the shard of a worker
    held at a failpoint — no row is doubled, and the sweep finishes. The reaper still works after the outage:
    the held worker, SIGKILLed once the database has been back for twice SAEJOBS_STALE_AFTER, has its shard
    (and only it) handed on to the other worker. Both workers may log "beat failed" while the database is
    down (the outage is the test's own doing); a Traceback is never tolerated."""
    server = PostgresServer().start()
    # patient, as the three-worker test: with the suite's 4 s a loaded 2-core machine starved a beat past the
    # limit once (CI, 2026-12-04: a healthy shard handed on after the outage); the property is the same at 10 s
    patient = {"SAEJOBS_STALE_AFTER": "10"}
    stale = float(patient["SAEJOBS_STALE_AFTER"])
    try:
        monkeypatch.setenv("SAEJOBS_DB", server.url)
        args = sweep_args(home, tiny_gemma2_dir, n_tokens=8)
        hold = Hold(tmp_path, "sweep.chunk_stored:6")
        survivor = start_worker("--cpu", env=host_env(tmp_path, "hostA", **patient), tolerate=("beat failed",))
        victim = start_worker("--cpu", env=host_env(tmp_path, "hostB", **patient, **hold.env), tolerate=("beat failed",))
        parent = submitted(saejobs(*args, "--shard-size", "50"))
        wait_for(lambda: stored(parent["id"]) >= 8, 180, "the first rows")
        server.crash()
        time.sleep(2 * stale + 1)
        server.start()
        hold.wait(600)  # the victim holds its shard (it got there before or after the outage)
        time.sleep(2 * stale + 1)  # every reaper has been in touch long enough to reap by now
        assert handed_on(parent["id"]) == [], claims(parent["id"])  # the outage handed nothing on
        (held,) = [j.id for j in jobs.shards(parent["id"]) if j.state == "running" and str(victim.proc.pid) in (j.worker or "")]
        victim.kill()
        done = final(parent["id"])
        assert done.state == "succeeded", done.error
        assert stored(parent["id"]) == N_CONFIGS
        by_shard = claims(parent["id"])
        assert handed_on(parent["id"]) == [held], {s: events(s) for s in by_shard}  # the killed worker's, after
        assert [w.split("@")[0].split("-")[2] for w in by_shard[held]] == [str(victim.proc.pid), str(survivor.proc.pid)]
        assert all(len(ws) == 1 for s, ws in by_shard.items() if s != held), by_shard
    finally:
        server.close()


def test_a_job_that_kills_its_worker_fails_after_max_attempts(home, pg_url, broker, start_worker, tiny_gemma2_dir,
                                                              tmp_path, monkeypatch):
    """Each worker that takes it dies (a failpoint SIGKILLs it as the model is loaded); a download worker
    reaps. After SAEJOBS_MAX_ATTEMPTS the job fails with the reason instead of circulating."""
    monkeypatch.setenv("SAEJOBS_MAX_ATTEMPTS", "2")
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    start_worker("--downloads")
    killer = {"SAEJOBS_KILL_AT": "sweep.loaded:1"}
    first = start_worker("--cpu", env=killer)
    job = submitted(saejobs("sweep", "--sae", sae.id, "--feature", "1", "--strength", "4", "--prompt", "Hi",
                            "--n-tokens", "2", "--model", str(tiny_gemma2_dir), "--json"))
    first.proc.wait(timeout=120)
    second = start_worker("--cpu", env=killer)
    second.proc.wait(timeout=120)
    done = final(job["id"], timeout=120)
    assert done.state == "failed"
    assert done.error == "1 of 1 shards failed; first: gave up after 2 attempts; last: worker lost (no heartbeat); handed on"
    shard = jobs.shards(job["id"])[0]
    assert shard.attempts == 2 and shard.state == "failed"


def test_a_worker_started_before_postgres_registers_once_it_is_up(home, broker, start_worker, tmp_path, monkeypatch):
    server = PostgresServer()
    try:
        monkeypatch.setenv("SAEJOBS_DB", server.url)
        w = start_worker("--cpu", env=host_env(tmp_path, "hostA"))  # Celery is up; the database is not
        assert "database not reachable yet" in w.text()
        server.start()
        rows = wait_for(lambda: (r := submitted(saejobs("workers", "--json"))) and r, 120, "the worker's row")
        assert [r["host"] for r in rows] == ["hostA"] and rows[0]["state"] in ("idle", "busy")
    finally:
        server.close()


def test_schemas_that_do_not_match_are_refused_not_migrated(home, pg_url, broker, start_worker, tmp_path):
    from sqlalchemy import text

    from saejobs.db import migrate
    from saejobs.db.session import dispose_all, get_engine

    submitted(saejobs("jobs", "list", "--json"))  # a new database: created
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    w = start_worker("--cpu", ready=False)
    assert w.proc.wait(timeout=120) == 4
    lines = [ln for ln in w.text().splitlines() if ln.startswith("saejobs: error:")]
    assert len(lines) == 1 and "newer than this saejobs" in lines[0] and "Traceback" not in w.text()
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    line = one_clean_line(saejobs("jobs", "list"), 4)
    assert "older than this saejobs" in line and "saejobs db upgrade" in line
    dispose_all()
    assert migrate.stamped(get_engine()) == "0001"  # the CLI did not migrate it under its workers


def test_a_hung_job_ends_its_worker_and_is_handed_on(home, pg_url, broker, start_worker, tiny_gemma2_dir, tmp_path):
    """The watchdog: a job held at a failpoint makes no progress calls (as a hung transfer or kernel would);
    after SAEJOBS_STALL_AFTER its worker hands it on and exits 75 (its heartbeat alone would have kept it
    forever); another worker finishes the sweep."""
    sae = make(home, d_model=64, d_sae=256, layer=1)
    submitted(saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    hold = Hold(tmp_path, "sweep.loaded:1")
    hung = start_worker("--cpu", env={**hold.env, "SAEJOBS_STALL_AFTER": "3"})
    job = submitted(saejobs("sweep", "--sae", sae.id, "--feature", "1", "--strength", "4", "--prompt", "Hi",
                            "--n-tokens", "2", "--model", str(tiny_gemma2_dir), "--json"))
    assert hung.proc.wait(timeout=120) == 75  # held at the failpoint (or still loading): no progress for 3 s
    shard = jobs.shards(job["id"])[0]
    assert shard.state == "queued" and shard.error.startswith("stalled: no progress for")
    start_worker("--cpu")
    done = final(job["id"], timeout=180)
    assert done.state == "succeeded" and jobs.shards(job["id"])[0].attempts == 2
