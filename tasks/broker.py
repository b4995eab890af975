"""What the broker still holds: the job ids of the messages in Redis' queue lists and unacked set.

Redis here may run without persistence; if it restarts, queued messages are gone while their jobs
stay ``queued`` in the database. Workers compare the two and send again what the broker lost (a
duplicate message is harmless: the claim is atomic).

Where the messages lie is read from kombu's own Redis channel (``redis_messages``, the one place that
touches kombu's internals), not hard-coded. Each message is parsed once — Celery's message protocol 2:
a JSON envelope whose ``headers.id``/``argsrepr`` and base64 body ``[args, kwargs, embed]`` carry the
job id — so the check is linear in the number of messages.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

from saejobs.tasks.app import app, broker_url


def pending_job_ids(job_ids: list[str], queues: set[str], url: str | None = None) -> set[str]:
    """Which of ``job_ids`` still have a message waiting or being run, according to the broker."""
    return _job_ids(queues, url, unacked=True) & set(job_ids)


def untaken_job_ids(queues: set[str], url: str | None = None) -> set[str]:
    """The job ids whose message waits in ``queues`` with no worker holding it (not in the unacked set)."""
    return _job_ids(queues, url, unacked=False)


def _job_ids(queues: set[str], url: str | None, unacked: bool) -> set[str]:
    found: set[str] = set()
    with app.connection_for_read(url or broker_url()) as conn:
        for raw in redis_messages(conn, queues, unacked=unacked):
            found.update(message_job_ids(raw))
    return found


def redis_messages(conn, queues: set[str], unacked: bool = True) -> Iterator[bytes | str]:
    """Every message kombu's Redis transport holds for ``queues``: waiting, and delivered but not acked.

    kombu internals, written against kombu 5.7 (the same in 5.3.4, our floor), checked by
    tests/test_private_apis.py: the channel's ``client`` (a redis-py client), a queue is one list per
    step of ``priority_steps``, named ``queue`` for step 0 and ``queue + sep + step`` for the others,
    and unacked messages are the values of the hash ``unacked_key``, each JSON ``[message, exchange,
    routing_key]``.
    """
    channel = conn.default_channel
    client = channel.client
    for key in {q if not p else f"{q}{channel.sep}{p}" for q in queues for p in channel.priority_steps}:
        yield from client.lrange(key, 0, -1)
    for raw in client.hvals(channel.unacked_key) if unacked else ():
        try:
            yield json.dumps(json.loads(raw)[0])
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            continue


def message_job_ids(raw: bytes | str) -> set[str]:
    """The job id a ``saejobs.run_job`` message carries; nothing for anything else (never a crash)."""
    try:
        msg = json.loads(raw)
        if msg.get("headers", {}).get("task") != "saejobs.run_job":
            return set()
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return {a for a in args if isinstance(a, str)}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):  # not a message of ours
        return set()
