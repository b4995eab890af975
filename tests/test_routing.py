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


def _worker(name: str):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, host="h", gpu=None, device="cpu", current_job=None,
                           cache=SimpleNamespace(describe=lambda: []))


def test_shards_are_never_empty_and_about_two_per_live_worker_that_takes_shards(home):
    from saejobs.db import workers
    from saejobs.tasks.app import DOWNLOAD_QUEUE

    params = SweepRequest.from_params(
        {"sae": "x", "features": list(range(10)), "strengths": [0, 1, 2, 4, 8], "prompts": ["a", "b"], "seeds": [1]})
    total = 2 + 10 * 5 * 2  # 102
    for size in (1, 5, 7, 101, 102, 103):
        shards = [p["shard"] for p in shard_plan(params, size)]
        assert all(lo < hi for lo, hi in shards), (size, shards)  # no empty shard, the last one included
        assert len(shards) == -(-total // size) and sum(hi - lo for lo, hi in shards) == total
    for i in range(3):
        workers.register(_worker(f"w{i}"), [SHARED_QUEUE], None)
    workers.register(_worker("downloads"), [DOWNLOAD_QUEUE], None)  # takes no shard: not counted
    gone = _worker("gone")
    workers.register(gone, [SHARED_QUEUE], None)
    workers.stopped(gone)  # stopped: not counted
    shards = [p["shard"] for p in shard_plan(params)]
    assert [hi - lo for lo, hi in shards] == [17] * 6, shards  # 3 live workers: ceil(102 / 6) = 17 each
    workers.stopped(_worker("w2"))
    assert [hi - lo for lo, hi in (p["shard"] for p in shard_plan(params))] == [26, 26, 26, 24]  # 2 live: ceil(102/4)


def test_the_shard_cap_is_read_from_saejobs_shard_configs(home):
    """SAEJOBS_SHARD_CONFIGS caps a shard even with no live worker (one shard would hold the whole grid)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json; from saejobs.tasks.submit import shard_plan; from saejobs.engine.request import SweepRequest; "
            "print(json.dumps([p['shard'] for p in shard_plan(SweepRequest.from_params({'sae': 'x', 'features': "
            "list(range(10)), 'strengths': [0, 1, 2, 4, 8], 'prompts': ['a', 'b'], 'seeds': [1]}))]))")
    for cap, want in (("40", [[0, 40], [40, 80], [80, 102]]), ("256", [[0, 102]]), ("1000", [[0, 102]])):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SAEJOBS_SHARD_CONFIGS": cap},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == want, (cap, out.stdout)
