"""Neuronpedia's bulk explanation exports, read and checked, each record mapped to a saejobs SAE.

The format, as Neuronpedia's own source writes and reads it (hijohnnylin/neuronpedia, commit ebb8426f):

- ``utils/neuronpedia-utils/neuronpedia_utils/export-data.py`` (``export_explanations``) writes one SAE's
  explanations to ``exports/{modelId}/{sourceId}/explanations/batch-{N}.jsonl``, 1,024 rows a batch
  (``FEATURES_EXPLANATIONS_BATCH_SIZE``), ``ORDER BY index`` (a text column, so batches run 0, 1, 10,
  100, ...), then gzips each file to ``batch-{N}.jsonl.gz`` (``compress_files``); the README there syncs
  ``exports/`` to ``s3://neuronpedia-datasets/v1``, so an SAE's explanations are
  ``v1/{modelId}/{sourceId}/explanations/batch-{N}.jsonl.gz`` — the path the webapp's importer lists
  (``apps/webapp/app/api/admin/import/route.ts``: ``${DATASET_BASE_PATH}${modelId}/${sourceId}`` +
  ``/explanations/``, ``.jsonl.gz``; ``lib/utils/s3.ts``: bucket ``neuronpedia-datasets``, ``v1/``).
- Each line is one ``Explanation`` row (``apps/webapp/prisma/schema.prisma``) as ``json.dumps`` of the
  columns ``id, modelId, layer, index, authorId, description, embedding, typeName,
  explanationModelName, umap_x, umap_y, umap_cluster, umap_log_feature_sparsity``. ``layer`` is the
  source id (``20-gemmascope-res-16k``) and ``index`` a string (the column is text); ``typeName`` and
  ``explanationModelName`` may be null; a feature may have several rows (several explainers).
- The webapp's ``GET /api/explanation/export`` now answers 400 pointing at those datasets
  (``apps/webapp/app/api/explanation/export/route.ts``); it used to redirect to a JSON array of the same
  rows, and the admin ``POST /api/admin/export-explanations`` still answers one
  (``lib/db/explanation.ts``, ``exportExplanations``: ``id, modelId, layer, index, description,
  explanationModelName, typeName``). Such an array (a ``.json`` file) is read too.

What saejobs keeps of a row: ``index``, ``description``, ``typeName``, ``explanationModelName`` and ``id``
(the key that makes a re-import add nothing); ``embedding`` and the UMAP columns are ignored. NUL
characters become spaces, as Neuronpedia's importer does (``lib/db/import.ts``, ``importJsonlString``).

Errors are one line: a file that is not what its name says, or a line that is not JSON or lacks a field,
is a ``FormatError`` (exit 3) naming the file and line; an export of an SAE saejobs does not know, or not
of the ``--sae`` given, a ``UsageError`` (exit 2).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from saejobs.engine.errors import FormatError, UsageError

SUFFIXES = (".jsonl.gz", ".jsonl", ".json")
KEY_MAX = 100  # the key column's width; a longer id is replaced by its digest


@dataclass(frozen=True)
class Explanation:
    sae_id: str
    index: int
    key: str
    description: str
    type_name: str | None
    explainer: str | None
    source: str


def files(path: Path) -> list[Path]:
    """The export files a path names: the file itself, or a directory's ``batch-N`` files (those of its
    ``explanations/`` folder when it has one: the S3 layout's SAE folder), in batch order."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    folder = path / "explanations" if (path / "explanations").is_dir() else path
    found = sorted((p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)), key=_natural)
    if not found:
        raise UsageError(f"{folder}: no explanation export files in it (batch-N.jsonl.gz, .jsonl or .json)")
    return found


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def digest(description: str, type_name: str | None, explainer: str | None) -> str:
    """The key of an explanation without an id: the same text from the same explainer is the same row."""
    raw = json.dumps([description, type_name, explainer], ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed row) of one file, streamed: ``FILE line N`` for JSONL, ``FILE item N`` for an array."""
    if path.name.endswith(".gz"):
        opened = gzip.open(path, "rt", encoding="utf-8")
    else:
        opened = open(path, encoding="utf-8")
    try:
        with opened as f:
            first = f.read(1)
            while first and first.isspace():
                first = f.read(1)
            if first == "[":  # a JSON array (the admin export, the old /api/explanation/export file)
                try:
                    doc = json.loads(first + f.read())
                except json.JSONDecodeError as e:
                    raise FormatError(f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
                for i, item in enumerate(doc):
                    yield f"{path} item {i}", item
                return
            for n, line in enumerate(_lines(first, f), 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path} line {n}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise FormatError(f"{path} line {n}: not JSON ({e.msg} at column {e.colno})") from None
    except gzip.BadGzipFile:
        raise FormatError(f"{path}: not gzip-compressed, as a .gz file must be") from None
    except (EOFError, zlib.error):
        raise FormatError(f"{path}: the gzip stream is truncated or corrupt") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None


def _lines(first: str, f) -> Iterator[str]:
    rest = f.readline()
    yield first + rest
    yield from f


def _field(row: Any, key: str, where: str, optional: bool = False) -> Any:
    if not isinstance(row, dict):
        raise FormatError(f"{where}: expected an object (an Explanation row), got {type(row).__name__}")
    value = row.get(key)
    if value is None and optional:
        return None
    if key not in row:
        raise FormatError(f"{where}: no '{key}' (not a Neuronpedia explanation export?)")
    if key == "index":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
            raise FormatError(f"{where}.index: {str(value)[:20]!r} is not a feature index")
        return int(value)
    if not isinstance(value, str):
        raise FormatError(f"{where}.{key}: expected a string, got {type(value).__name__}")
    return value


class SaeMap:
    """Neuronpedia's (modelId, layer) of each row → the saejobs SAE it belongs to, checked once per pair.

    Without ``sae``: the registry entry whose Neuronpedia id is ``modelId/layer``. With ``sae``: that SAE,
    and every row must be for its Neuronpedia id (an SAE without one takes one (modelId, layer) pair)."""

    def __init__(self, sae: str | None = None):
        from saejobs.engine import registry

        self.forced = registry.get(sae) if sae else None
        self.known: dict[tuple[str, str], Any] = {}

    def entry(self, model: str, layer: str, where: str):
        pair = (model, layer)
        if pair in self.known:
            return self.known[pair]
        np_id = f"{model}/{layer}"
        if self.forced is not None:
            own = self.forced.neuronpedia_id
            if own is not None and own != np_id:
                raise UsageError(f"{where} is an explanation of Neuronpedia's {np_id}, not of {self.forced.id} "
                                 f"({own}); nothing imported")
            if own is None and self.known:
                other = "/".join(next(iter(self.known)))
                raise UsageError(f"{where} is for Neuronpedia's {np_id}, after rows for {other}: one --sae takes "
                                 "one SAE's export; nothing imported")
            found = self.forced
        else:
            found = _by_neuronpedia_id(np_id)
            if found is None:
                raise UsageError(f"{where}: an export of Neuronpedia's {np_id}, which saejobs' registry does not "
                                 "know; name its SAE with --sae ID (`saejobs saes list`); nothing imported")
        self.known[pair] = found
        return found


def _by_neuronpedia_id(np_id: str):
    from saejobs.engine import registry

    try:
        found = registry.get(np_id)
        if found.neuronpedia_id == np_id:
            return found
    except UsageError:
        pass
    return next((e for e in registry.entries() if e.neuronpedia_id == np_id), None)


def read(paths: list[Path], sae: str | None = None, source: str = "neuronpedia-export") -> Iterator[Explanation]:
    """Every explanation of ``paths`` (``files``' answer), checked and mapped, streamed file by file."""
    mapping = SaeMap(sae)
    for path in paths:
        origin = f"{source}:{path.resolve()}"
        for where, row in rows(path):
            yield record(row, where, mapping, origin)


def record(row: Any, where: str, mapping: SaeMap, origin: str) -> Explanation:
    """One export row as an ``Explanation`` of its saejobs SAE."""
    model, layer = _field(row, "modelId", where), _field(row, "layer", where)
    index = _field(row, "index", where)
    description = _field(row, "description", where).replace("\x00", " ")
    type_name = _field(row, "typeName", where, optional=True)
    explainer = _field(row, "explanationModelName", where, optional=True)
    np_key = _field(row, "id", where, optional=True)
    entry = mapping.entry(model, layer, where)
    if index >= entry.d_sae:
        raise UsageError(f"{where}: feature {index} is out of range for {entry.id} (d_sae {entry.d_sae}); "
                         "nothing imported")
    key = np_key if np_key and len(np_key) <= KEY_MAX else digest(description, type_name, explainer)
    return Explanation(entry.id, index, key, description, type_name, explainer, origin)


def from_feature_answer(body: dict, sae_id: str, index: int) -> list[Explanation]:
    """The explanations of a ``GET /api/feature/{modelId}/{layer}/{index}`` answer (already checked by
    ``engine.neuronpedia.parse_feature``): each row of the webapp's ``Explanation`` include, with its id."""
    out = []
    for e in body.get("explanations") or []:
        description = str(e["description"]).replace("\x00", " ")
        type_name = e.get("typeName") if isinstance(e.get("typeName"), str) else None
        explainer = e.get("explanationModelName") if isinstance(e.get("explanationModelName"), str) else None
        np_key = e.get("id") if isinstance(e.get("id"), str) and 0 < len(e["id"]) <= KEY_MAX else None
        out.append(Explanation(sae_id, index, np_key or digest(description, type_name, explainer), description,
                               type_name, explainer, "neuronpedia-api"))
    return out
