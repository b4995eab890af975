"""The beat's judgement that a worker's Celery consumer stopped taking messages (worker.main.Beat): only
once Celery said the worker is ready, only while no job runs, and only for a job that waited past
SAEJOBS_ORPHAN_AFTER in one of the worker's own queues with its message untaken. The whole path (a job
ending while Redis is down, the worker exiting 75, ``saejobs up`` starting a fresh one) is in
tests/faults/test_broker.py."""

from __future__ import annotations

from types import SimpleNamespace

from saejobs.tasks import broker
from saejobs.worker.main import Beat


def beat(monkeypatch, waiting, untaken, current_job=None, queues=("saejobs", "saejobs.downloads")):
    monkeypatch.setattr(broker, "untaken_job_ids", lambda qs: untaken & {j for j, q in waiting if q in qs})
    b = Beat(SimpleNamespace(current_job=current_job), list(queues))
    b.waiting = waiting
    return b


def test_a_waiting_untaken_job_means_stalled_only_once_celery_is_ready(monkeypatch):
    b = beat(monkeypatch, waiting=[("j1", "saejobs")], untaken={"j1"})
    assert not b.consumer_stalled(b.waiting)  # still starting: nothing is consumed yet
    b.consuming.set()
    assert b.consumer_stalled(b.waiting)


def test_a_busy_worker_or_a_taken_message_or_another_queue_is_not_stalled(monkeypatch):
    busy = beat(monkeypatch, waiting=[("j1", "saejobs")], untaken={"j1"}, current_job="j0")
    busy.consuming.set()
    assert not busy.consumer_stalled(busy.waiting)
    taken = beat(monkeypatch, waiting=[("j1", "saejobs")], untaken=set())  # held by some worker (unacked)
    taken.consuming.set()
    assert not taken.consumer_stalled(taken.waiting)
    elsewhere = beat(monkeypatch, waiting=[("j1", "saejobs.gpu1")], untaken={"j1"})  # not this worker's queue
    elsewhere.consuming.set()
    assert not elsewhere.consumer_stalled(elsewhere.waiting)
    nothing = beat(monkeypatch, waiting=[], untaken=set())
    nothing.consuming.set()
    assert not nothing.consumer_stalled(nothing.waiting)
