"""The results database: SAEs, jobs and what they produced, each result with its provenance.

The database, not the broker, is the source of truth for job state: a message can be delivered twice,
a row is written once (unique keys on every result make re-runs idempotent).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import TypeDecorator

from saejobs.db.states import JobState


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class db_clock(FunctionElement):  # noqa: N801 (a SQL function, spelt as one)
    """The database server's clock as naive UTC, in SQL: a column default that the INSERT itself evaluates,
    so the row is stamped by the clock ``db.session.db_now`` reads (the one staleness and waiting are judged
    by), never by the writing host's. No schema change: the default lives in the INSERT, not the DDL."""

    type = DateTime()
    name = "db_clock"
    inherit_cache = True


@compiles(db_clock)
def _db_clock(element, compiler, **kw) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_clock, "sqlite")
def _db_clock_sqlite(element, compiler, **kw) -> str:  # as db_now; six digits of seconds, as SQLAlchemy writes them
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


@compiles(db_clock, "postgresql")
def _db_clock_postgresql(element, compiler, **kw) -> str:  # naive UTC whatever the session's TimeZone
    return "(CURRENT_TIMESTAMP AT TIME ZONE 'UTC')"


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC everywhere (SQLite keeps no zone), always read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Sae(Base):
    """A registry entry once downloaded: its checksums are the truth every host's copy is checked against
    (``local_path`` is the first copy's; ``sae_copies`` has each host's)."""

    __tablename__ = "saes"
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    neuronpedia_id: Mapped[str | None] = mapped_column(String(200), index=True)
    repo_id: Mapped[str] = mapped_column(String(200))
    folder: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(40))
    entry: Mapped[dict[str, Any]]
    local_path: Mapped[str | None] = mapped_column(Text)
    files: Mapped[dict[str, Any] | None]  # file name -> {"sha256", "size"}, as checked at download
    config: Mapped[dict[str, Any] | None]
    revision: Mapped[str | None] = mapped_column(String(80))
    source: Mapped[str | None] = mapped_column(Text)  # the mirror it came from; None: the Hub at ``revision``
    downloaded_at: Mapped[datetime | None]


class SaeCopy(Base):
    """A verified copy of an SAE's files on one host: workers on other hosts fetch their own."""

    __tablename__ = "sae_copies"
    __table_args__ = (UniqueConstraint("sae_id", "host", name="uq_sae_copy_host"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sae_id: Mapped[str] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))  # the parameters file's, as checked on that host
    files: Mapped[dict | None] = mapped_column(JSON)  # name -> {"size", "mtime_ns"} of each file when checked
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), index=True)
    state: Mapped[str] = mapped_column(String(20), index=True, default=JobState.QUEUED)
    params: Mapped[dict[str, Any]]
    sae_id: Mapped[str | None] = mapped_column(String(300), index=True)
    queue: Mapped[str | None] = mapped_column(String(100))
    requested_gpu: Mapped[int | None]
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(200))
    gpu: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)  # a shard's sweep
    requested_host: Mapped[str | None] = mapped_column(String(200))  # --gpu HOST:INDEX
    deadline_at: Mapped[datetime | None]  # the running attempt must finish by then
    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan")


class JobEvent(Base):
    """Progress history: what `jobs watch` replays and what tests read to see progress happen."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=db_clock())  # the database's clock, as waiting_since reads it
    state: Mapped[str] = mapped_column(String(20))
    progress: Mapped[float] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)
    job: Mapped[Job] = relationship(back_populates="events")


class Worker(Base):
    """A live worker process, refreshed by its heartbeat; `saejobs workers` reads this table."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    gpu: Mapped[str | None] = mapped_column(String(20))
    device: Mapped[str | None] = mapped_column(String(100))  # e.g. "cuda:0 (CUDA_VISIBLE_DEVICES=1)"
    queues: Mapped[list[Any]]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    current_job: Mapped[str | None] = mapped_column(String(36))
    cached: Mapped[list[Any] | None]
    stopped_at: Mapped[datetime | None]


class Verification(Base):
    __tablename__ = "verifications"
    __table_args__ = (UniqueConstraint("job_id", name="uq_verification_job"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    sae_id: Mapped[str] = mapped_column(String(300), index=True)
    verdict: Mapped[str] = mapped_column(String(10))
    reasons: Mapped[list[Any]]
    metrics: Mapped[dict[str, Any]]
    provenance: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sweep(Base):
    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    sae_id: Mapped[str] = mapped_column(String(300), index=True)
    model: Mapped[str] = mapped_column(String(300))
    settings: Mapped[dict[str, Any]]
    provenance: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    generations: Mapped[list[Generation]] = relationship(back_populates="sweep", order_by="Generation.id")


class Generation(Base):
    """One generated text: a steering configuration (or the DEFAULT control) with its exact inputs."""

    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("sweep_id", "config_key", name="uq_generation_config"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    config_key: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(10))  # STEERED | DEFAULT
    features: Mapped[list[Any]]  # [{"index": 7650, "strength": 50.0}] (empty for DEFAULT)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_token_ids: Mapped[list[Any]]
    seed: Mapped[int]
    sampling: Mapped[dict[str, Any]]
    output: Mapped[str] = mapped_column(Text)
    token_ids: Mapped[list[Any]]
    logprobs: Mapped[list[Any] | None]
    scores: Mapped[dict[str, Any] | None]  # concept / fluency / degeneration, stored with the chunk
    messages: Mapped[list[Any] | None]  # chat: the conversation the output continues ([{role, content}])
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sweep: Mapped[Sweep] = relationship(back_populates="generations")


class NeuronpediaRun(Base):
    """A response from Neuronpedia (imported or fetched), matched to a generation when one fits."""

    __tablename__ = "neuronpedia_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    api: Mapped[str] = mapped_column(String(40))
    request: Mapped[dict[str, Any]]
    outputs: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Comparison(Base):
    __tablename__ = "comparisons"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    neuronpedia_run_id: Mapped[int | None] = mapped_column(ForeignKey("neuronpedia_runs.id", ondelete="SET NULL"))
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Judgement(Base):
    """A judge model's ratings of one generation (``engine.judge``): 0–2 per criterion and their harmonic mean,
    with the prompts' version that asked and each reply (shortened) to audit them. One per generation, judge
    model and prompts version: a re-run adds nothing."""

    __tablename__ = "judgements"
    __table_args__ = (UniqueConstraint("generation_id", "judge", "prompts", name="uq_judgement"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    judge: Mapped[str] = mapped_column(String(200))  # the model the endpoint ran, as named to it
    prompts: Mapped[str] = mapped_column(String(40))  # engine.judge.PROMPTS when rated
    endpoint: Mapped[str] = mapped_column(Text)  # scheme://host:port/path, never a key
    ratings: Mapped[dict[str, Any]]  # {"concept": 0-2 | None, "instruction": ..., "fluency": ..., "harmonic": ...}
    replies: Mapped[dict[str, Any]]  # criterion -> the judge's reply, its first REPLY_KEPT characters
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeatureExplanation(Base):
    """What Neuronpedia says a feature is (an explanation, shown as its label), cached per SAE and feature:
    imported from a bulk export or stored by ``neuronpedia feature --fetch``. ``key``: Neuronpedia's
    explanation id, or a digest of the text when the record has none; unique per feature, so a re-import
    adds nothing. Full-text search lives outside the models (``FTS_OBJECTS``, migration 0004)."""

    __tablename__ = "feature_explanations"
    __table_args__ = (UniqueConstraint("sae_id", "feature_index", "key", name="uq_explanation_key"),
                      Index("ix_feature_explanations_sae_feature", "sae_id", "feature_index"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sae_id: Mapped[str] = mapped_column(String(300))  # saejobs' SAE id (the registry's), not Neuronpedia's
    feature_index: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text)
    type_name: Mapped[str | None] = mapped_column(String(200))  # Neuronpedia's typeName, e.g. oai_token-act-pair
    explainer: Mapped[str | None] = mapped_column(String(200))  # its explanationModelName, e.g. gpt-4o-mini
    source: Mapped[str] = mapped_column(Text)  # "neuronpedia-export:FILE" | "neuronpedia-api"
    stored_at: Mapped[datetime] = mapped_column(default=utcnow)  # when imported or fetched


# Full-text search objects the migrations make and the models do not describe (SQLite's FTS5 table, its
# shadow tables and triggers; PostgreSQL's expression index): autogenerate must not propose dropping them.
FTS_OBJECTS = ("feature_explanations_fts", "ix_feature_explanations_fts")


def fts_object(name: str | None) -> bool:
    return name is not None and name.startswith(FTS_OBJECTS)
