"""SAE rows: a registry entry plus where it lies on disk and the checksums it had when it arrived."""

from __future__ import annotations

from pathlib import Path

from db.models import Sae, utcnow
from db.session import retried, session
from engine.registry.entry import SaeEntry


@retried
def get(sae_id: str, url: str | None = None) -> Sae | None:
    with session(url) as s:
        return s.get(Sae, sae_id)


@retried
def record_download(entry: SaeEntry, folder: Path, files: dict[str, dict], config: dict | None = None,
                    revision: str | None = None, url: str | None = None) -> Sae:
    with session(url) as s:
        row = s.get(Sae, entry.id) or Sae(id=entry.id)
        row.neuronpedia_id = entry.neuronpedia_id
        row.repo_id, row.folder, row.format = entry.repo_id, entry.folder, entry.format
        row.entry = entry.to_json()
        row.local_path = str(folder)
        row.files = files
        row.config = config
        row.revision = revision
        row.downloaded_at = utcnow()
        s.add(row)
    return row


def present(row: Sae | None, entry: SaeEntry) -> bool:
    """Every file recorded at download is still there with the recorded size."""
    if row is None or not row.local_path or not row.files:
        return False
    folder = Path(row.local_path)
    return all(
        name in row.files and (folder / name).is_file() and (folder / name).stat().st_size == row.files[name]["size"]
        for name in entry.files
    )
