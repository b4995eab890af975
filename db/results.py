"""Writing and reading results: verifications, sweeps and generations (idempotent by key)."""

from __future__ import annotations

from sqlalchemy import select

from db.models import Verification
from db.session import session


def record_verification(job_id: str, sae_id: str, verdict: str, reasons: list, metrics: dict, provenance: dict,
                        url: str | None = None) -> None:
    with session(url) as s:
        row = s.scalar(select(Verification).where(Verification.job_id == job_id)) or Verification(job_id=job_id)
        row.sae_id, row.verdict, row.reasons, row.metrics, row.provenance = sae_id, verdict, reasons, metrics, provenance
        s.add(row)


def verifications(sae_id: str | None = None, url: str | None = None) -> list[Verification]:
    with session(url) as s:
        q = select(Verification).order_by(Verification.id.desc())
        if sae_id:
            q = q.where(Verification.sae_id == sae_id)
        return list(s.scalars(q))
