"""Fetch an SAE's files from the Hugging Face Hub with ``huggingface_hub`` itself.

Honours ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HOME`` as huggingface_hub does. Byte progress comes
from huggingface_hub's own tqdm hook, forwarded to the job's progress callback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from tqdm.auto import tqdm

from engine.download import sha256_file
from engine.errors import NotFoundError, SaejobsError, TransientError
from engine.registry.entry import SaeEntry


def _progress_tqdm(report: Callable[[int, int | None], None]) -> type[tqdm]:
    class Reporter(tqdm):
        def __init__(self, *a, **kw):
            kw["disable"] = True
            super().__init__(*a, **kw)
            self._total = kw.get("total")

        def update(self, n=1):
            report(n, self._total)
            return super().update(n)

    return Reporter


def fetch_from_hub(entry: SaeEntry, dest: Path, progress: Callable[[float, str], None]) -> dict[str, str]:
    root = dest
    for _ in Path(entry.folder).parts:
        root = root.parent
    done = 0

    def report(n: int, total: int | None) -> None:
        nonlocal done
        done += n
        progress(done / total if total else 0.0, f"{done / 1e6:.1f} MB")

    digests = {}
    for name in entry.files:
        try:
            path = hf_hub_download(entry.repo_id, f"{entry.folder}/{name}", local_dir=root,
                                   tqdm_class=_progress_tqdm(report))
        except (EntryNotFoundError, RepositoryNotFoundError) as e:
            raise NotFoundError(f"{entry.repo_id}/{entry.folder}/{name} not found on the Hub ({type(e).__name__})") from None
        except GatedRepoError:
            raise SaejobsError(f"{entry.repo_id} is gated: accept its licence on the Hub and set HF_TOKEN") from None
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", None)
            if status == 401:
                raise SaejobsError(f"{entry.repo_id}: 401 unauthorized; set HF_TOKEN to a token that can read it") from None
            raise TransientError(f"{entry.repo_id}/{entry.folder}/{name}: HTTP {status}") from None
        except (OSError, ConnectionError) as e:
            raise TransientError(f"{entry.repo_id}/{entry.folder}/{name}: {type(e).__name__}: {e}") from None
        digests[name] = sha256_file(Path(path))
    return digests
