"""What the broker still holds: the job ids in Redis' queue lists and its unacknowledged set.

Redis here may run without persistence; if it restarts, queued messages are gone while their jobs
stay ``queued`` in the database. Workers compare the two and send again what the broker lost (a
duplicate message is harmless: the claim is atomic). Kombu's Redis transport keeps a queue as a list
named after it (priority lists share its prefix) and delivered-but-unacked messages in the hash
``unacked``; each message's headers carry ``argsrepr``, where the job id appears verbatim.
"""

from __future__ import annotations

import redis

from tasks.app import broker_url


def pending_job_ids(job_ids: list[str], queues: set[str], url: str | None = None) -> set[str]:
    """Which of ``job_ids`` still have a message waiting or being run, according to the broker."""
    client = redis.Redis.from_url(url or broker_url(), socket_connect_timeout=3, socket_timeout=10)
    blobs: list[bytes] = []
    for q in queues:
        for key in client.scan_iter(match=f"{q}*", count=100):
            if client.type(key) == b"list" and (key == q.encode() or key.startswith(q.encode() + b"\x06\x16")):
                blobs.extend(client.lrange(key, 0, -1))
    blobs.extend(client.hvals("unacked"))
    text = b"\n".join(blobs)
    return {j for j in job_ids if j.encode() in text}
