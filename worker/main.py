"""A long-running worker: pinned to one GPU (or the CPU), one job at a time, engine cache kept warm.

``CUDA_VISIBLE_DEVICES`` is set before torch is imported, so the process sees exactly its GPU as
``cuda:0``. Several GPUs get one pinned process each. Alongside Celery a heartbeat thread keeps the
worker's row (and its job's) fresh and hands on the jobs of workers that stopped beating.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("saejobs.worker")
ORPHAN_AFTER_S = float(os.environ.get("SAEJOBS_ORPHAN_AFTER", 120))


def run_many(gpus: list[int], loglevel: str) -> int:
    """One pinned child per GPU, restarted when its job hung (exit 75); SIGTERM/SIGINT are passed on so
    each hands back its job. Another exit of a child stops the others."""
    from saejobs.worker.supervise import Supervisor

    sup = Supervisor(say=lambda line: print(line, file=sys.stderr, flush=True))
    for g in gpus:
        sup.start(f"gpu{g}", [sys.executable, "-m", "saejobs.worker.main", "--gpu", str(g), "--loglevel", loglevel])
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))
    reason = None
    while not stopping and reason is None:
        reason = sup.step()
        time.sleep(0.2)
    if reason:
        print(f"saejobs: {reason}; stopping the other workers", file=sys.stderr, flush=True)
    sup.signal_all(stopping[0] if stopping else signal.SIGTERM)
    codes = sup.wait_all()
    return max(codes.values(), default=0) or (1 if reason else 0)


def run(gpu: int | None, loglevel: str = "info", downloads_only: bool = False) -> None:
    if gpu is not None:
        # In a container the one reserved GPU is device 0 whatever its host index (docker-compose.yml).
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("SAEJOBS_CUDA_VISIBLE_DEVICES", str(gpu))
        os.environ.setdefault("SAEJOBS_DEVICE", "cuda:0")
    else:
        os.environ.setdefault("SAEJOBS_DEVICE", "cpu")
    from celery.signals import worker_ready, worker_shutting_down

    from saejobs.db.session import SchemaMismatch, check_schema, set_role
    from saejobs.engine.cache import EngineCache
    from saejobs.engine.errors import UsageError
    from saejobs.tasks import runner
    from saejobs.tasks.app import DOWNLOAD_QUEUE, SHARED_QUEUE, app, gpu_queue, remote_control

    try:
        app.conf.worker_enable_remote_control = remote_control(strict=True)
    except UsageError as e:
        print(f"saejobs: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    set_role("worker")
    try:  # a wrong schema stops the worker now, with one line; an unreachable database is waited for
        check_schema()
    except SchemaMismatch as e:
        print(f"saejobs: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:
        log.warning("database not reachable yet (%s); the worker starts and registers once it is", e)
    host = runner.host_name()
    name = worker_name("downloads" if downloads_only else f"gpu{gpu}" if gpu is not None else "cpu", host)
    device = os.environ["SAEJOBS_DEVICE"]
    w = runner.Executor(name=name, host=host, gpu=None if gpu is None else str(gpu),
                      cache=EngineCache(device=device))
    runner.set_executor(w)
    if downloads_only:  # transfers only: a GPU worker's one slot never waits on the network
        queues = [DOWNLOAD_QUEUE]
    elif gpu is not None:  # this GPU on any host, this GPU on this host, then any job
        queues = [gpu_queue(gpu), gpu_queue(gpu, host), SHARED_QUEUE]
    else:
        queues = [SHARED_QUEUE, DOWNLOAD_QUEUE]
    beat = Beat(w, queues)
    beat.start()
    worker_shutting_down.connect(lambda **_: runner.shutting_down.set(), weak=False)
    worker_ready.connect(lambda **_: beat.consuming.set(), weak=False)
    try:
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", "-Q", ",".join(queues), "-n", name,
                         f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"])
    finally:
        beat.stop()
    if beat.schema_changed is not None:  # as at start: a schema that is not this code's is exit 4
        sys.exit(beat.schema_changed.exit_code)


def worker_name(label: str, host: str) -> str:
    """``saejobs-{label}-{pid}-{random}@{host}``, e.g. ``saejobs-gpu0-1-k3x9q2@node2``: unique per process
    start. PID and host alone are not: in docker compose every worker is its container's PID 1 and the
    containers of one machine share ``SAEJOBS_HOST``, and two workers with one name would both pass every
    owner check on one job. The random part (6 base-36 characters, drawn from ``secrets``) tells them apart."""
    import secrets

    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return f"saejobs-{label}-{os.getpid()}-{''.join(secrets.choice(alphabet) for _ in range(6))}@{host}"


class Beat(threading.Thread):
    """Worker row heartbeat and the reaper of jobs whose worker died (SIGKILL, lost host). Each beat first
    reads the schema's revision: a database migrated under the worker (``db upgrade --force``) stops it
    within one beat, as a warm shutdown (its job handed back), exit 4, writing nothing more of its own.
    With the orphan check it also watches its own consumer: idle while a job waits untaken in its queues
    (``consumer_stalled``) twice in a row, the worker exits 75 for its supervisor to replace it."""

    def __init__(self, worker, queues: list[str]):
        super().__init__(daemon=True, name="saejobs-beat")
        self.worker, self.queues, self._stop_event = worker, queues, threading.Event()
        self.schema_changed: Exception | None = None
        self.consuming = threading.Event()  # set by Celery's worker_ready: before it, untaken messages are normal

    def run(self) -> None:
        from saejobs.db import jobs, workers
        from saejobs.db.session import SchemaMismatch
        from saejobs.tasks.runner import HEARTBEAT_S, STALE_AFTER_S
        from saejobs.worker.supervise import EX_TEMPFAIL

        registered, last_orphan_check, idle_while_waiting = False, 0.0, 0
        in_touch_since = last_beat = None  # monotonic: since when this worker's beats have come through on time
        while True:
            try:  # registering inside the loop: a worker started before its database shows up once it is up
                if not registered:
                    workers.register(self.worker, self.queues, os.environ.get("CUDA_VISIBLE_DEVICES"))
                    registered = True
                workers.beat(self.worker)
                now = time.monotonic()
                if last_beat is None or now - last_beat > 2 * HEARTBEAT_S + 1:
                    in_touch_since = now  # cut off (a database outage) or just started: others were too
                last_beat = now
                # Reap only after STALE_AFTER_S in touch: after an outage every live worker's beats resume
                # within a beat or two, so only the dead stay stale — no healthy job is taken.
                if now - in_touch_since >= STALE_AFTER_S:
                    reap(running=self.worker.current_job)
                if time.monotonic() - last_orphan_check > ORPHAN_AFTER_S / 2:
                    last_orphan_check = time.monotonic()
                    waiting = jobs.waiting_since(ORPHAN_AFTER_S)
                    resend_orphans(waiting)
                    idle_while_waiting = idle_while_waiting + 1 if self.consumer_stalled(waiting) else 0
                    if idle_while_waiting >= 2:  # two checks apart: not a message sent a moment ago
                        log.error("this worker is idle, yet a job queued over %g s ago has waited untaken in its "
                                  "queues at two checks %g s apart (its broker connection did not recover from an "
                                  "outage); it stops (exit %d) so that its supervisor starts a fresh one",
                                  ORPHAN_AFTER_S, ORPHAN_AFTER_S / 2, EX_TEMPFAIL)
                        workers.stopped(self.worker)
                        os._exit(EX_TEMPFAIL)  # the wedged consumer owns the main thread; nothing of ours runs
            except SchemaMismatch as e:  # the database was migrated under this worker: stop consuming, say why
                self.schema_changed = e
                log.error("%s; this worker stops (exit %d)", e, e.exit_code)
                os.kill(os.getpid(), signal.SIGTERM)
                break
            except Exception as e:  # database or broker blinked; try again next beat
                log.warning("beat failed: %s", e)
                idle_while_waiting = 0  # the consumer is reconnecting too: judge it afresh once the broker answers
            if self._stop_event.wait(HEARTBEAT_S):
                break
        if registered and self.schema_changed is None:  # its row is not ours to write under another schema
            workers.stopped(self.worker)

    def consumer_stalled(self, waiting: list[tuple[str, str]]) -> bool:
        """Idle, yet a job of ``waiting`` (``jobs.waiting_since(ORPHAN_AFTER_S)``) has its message waiting,
        untaken, in one of this worker's queues: the Celery consumer stopped consuming. (After a job ends
        while Redis is down, the failed ack can leave the consumer polling a socket that was closed under
        it: celery #9054; the process looks alive and takes nothing, forever.)"""
        from saejobs.tasks.broker import untaken_job_ids

        if not self.consuming.is_set() or self.worker.current_job is not None:
            return False
        mine = {j for j, q in waiting if q in self.queues}
        return bool(mine and mine & untaken_job_ids(set(self.queues)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def reap(running: str | None = None) -> list[str]:
    """Hand on jobs whose worker stopped beating (never ``running``, the asking worker's job now); the
    conditional requeue lets one reaper win."""
    from saejobs.db import jobs
    from saejobs.tasks.runner import STALE_AFTER_S
    from saejobs.tasks.submit import send

    handed = []
    for job_id in jobs.stale_running(STALE_AFTER_S, running=running):
        if jobs.requeue(job_id, "worker lost (no heartbeat); handed on", stale_after=STALE_AFTER_S):
            send(job_id)
            handed.append(job_id)
            log.warning("job %s: worker lost, requeued", job_id)
    return handed


def resend_orphans(waiting: list[tuple[str, str]]) -> list[str]:
    """Send again the jobs of ``waiting`` (``jobs.waiting_since(ORPHAN_AFTER_S)``: queued, and for that long)
    whose message the broker no longer has (e.g. Redis restarted)."""
    from saejobs.tasks.broker import pending_job_ids
    from saejobs.tasks.submit import send

    if not waiting:
        return []
    pending = pending_job_ids([j for j, _ in waiting], {q for _, q in waiting})
    lost = [(j, q) for j, q in waiting if j not in pending]
    for job_id, queue in lost:
        log.warning("job %s: queued but its message is not in the broker; sent again", job_id)
        send(job_id, queue)
    return [j for j, _ in lost]


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m worker.main")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--gpu", type=int)
    where.add_argument("--cpu", action="store_true")
    where.add_argument("--downloads", action="store_true")
    p.add_argument("--loglevel", default="info")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.loglevel.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(a.gpu, a.loglevel, downloads_only=a.downloads)


if __name__ == "__main__":
    main()
