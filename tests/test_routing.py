"""Where a job's message goes: ``--gpu INDEX`` / ``--gpu HOST:INDEX``, downloads on their own queue, and
how a sweep is cut into shards (no broker needed: these are the pure parts)."""

from __future__ import annotations

import pytest

from saejobs.db.states import JobKind
from saejobs.engine.errors import UsageError
from saejobs.engine.request import SweepRequest
from saejobs.tasks.app import DOWNLOAD_QUEUE, SHARED_QUEUE, Target
from saejobs.tasks.broker import message_job_ids
from saejobs.tasks.submit import queue_for, shard_plan
from tests.dbfixtures import home  # noqa: F401


def test_gpu_targets_name_a_gpu_of_any_host_or_of_one():
    assert Target.parse("1") == Target(1) and Target.parse("1").queue == "saejobs.gpu1"
    assert Target.parse("node2:0").queue == "saejobs.gpu0@node2"
    assert Target.parse("a:b:3") == Target(3, "a:b")  # the index is after the last colon
    for bad in ("", "x", "node2:", ":1", "-1", "node2:x"):
        with pytest.raises(UsageError, match="--gpu takes INDEX or HOST:INDEX"):
            Target.parse(bad)


def test_downloads_never_wait_in_a_gpu_workers_queue_unless_sent_there():
    assert queue_for(JobKind.DOWNLOAD, None) == DOWNLOAD_QUEUE
    assert queue_for(JobKind.SWEEP, None) == queue_for(JobKind.VERIFY, None) == SHARED_QUEUE
    assert queue_for(JobKind.DOWNLOAD, Target(0, "h")) == "saejobs.gpu0@h"


def test_shards_cover_the_grid_once_in_order(home):
    req = SweepRequest(sae="x", features=(1, 2, 3), strengths=(0, 1, 2, 4), prompts=("a", "b"), seeds=(1, 2))
    total = 2 * 2 + 3 * 4 * 2 * 2  # DEFAULT per prompt × seed, then the grid
    for size in (1, 7, 52, 500):
        shards = [p["shard"] for p in shard_plan(req, size)]
        assert shards[0][0] == 0 and shards[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(shards, shards[1:])) and all(hi - lo <= size for lo, hi in shards)
    assert [p["shard"] for p in shard_plan(req)] == [[0, total]]  # no live worker: one shard


def test_a_broker_message_names_its_job_and_nothing_else_crashes_the_check():
    import base64
    import json

    body = base64.b64encode(json.dumps([["job-1"], {}, {}]).encode()).decode()
    msg = {"body": body, "headers": {"task": "saejobs.run_job", "id": "t"}, "properties": {"body_encoding": "base64"}}
    assert message_job_ids(json.dumps(msg)) == {"job-1"}
    assert message_job_ids(json.dumps({**msg, "headers": {"task": "other"}})) == set()
    assert message_job_ids(b"not json") == message_job_ids(b"[]") == set()
