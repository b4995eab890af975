"""Neuronpedia's bulk explanation exports, written here exactly as Neuronpedia writes them, for tests.

The writer follows hijohnnylin/neuronpedia (commit ebb8426f)
``utils/neuronpedia-utils/neuronpedia_utils/export-data.py``:

- ``export_explanations`` (lines 458-525): ``{OUTPUT_PATH_BASE}/{source}/explanations/batch-{N}.jsonl``
  with ``OUTPUT_PATH_BASE = ./exports/{MODEL_ID}`` (line 645), the columns ``id, modelId, layer, index,
  authorId, description, embedding, typeName, explanationModelName, umap_x, umap_y, umap_cluster,
  umap_log_feature_sparsity`` (lines 503-517), ``ORDER BY index`` over a text column (line 518; Prisma's
  ``Explanation.index String``, ``apps/webapp/prisma/schema.prisma`` line 803), 1,024 rows a batch (line 24);
- ``write_batch_to_jsonl`` (lines 60-121): ``"\\n".join(json.dumps(row) for row in rows)`` and a final
  newline; then ``replace_author_and_creator_with_default_creator_id`` (lines 420-434) rewrites each line
  with ``json.dumps(data) + "\\n"`` and ``authorId`` set to ``DEFAULT_CREATOR_ID``;
- ``compress_files`` (lines 605-622): ``gzip.compress(..., compresslevel=5)`` into ``batch-{N}.jsonl.gz``,
  the plain file removed. The bucket holds that tree under ``v1/`` (``utils/neuronpedia-utils/README.md``,
  ``aws s3 sync . s3://neuronpedia-datasets/v1``).

``embedding`` is a pgvector column read by psycopg2 without a vector adapter: its text form or null.
The admin ``POST /api/admin/export-explanations`` answers a JSON array of ``id, modelId, layer, index,
description, explanationModelName, typeName`` (``apps/webapp/lib/db/explanation.ts``,
``exportExplanations``): ``write_json_array``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

MODEL, LAYER = "gemma-2-2b", "20-gemmascope-res-16k"
SAE = f"{MODEL}/{LAYER}"  # saejobs' registry id of that Neuronpedia source (d_sae 16384)
CREATOR = "clkht01d40000jv08hvalcvly"  # DEFAULT_CREATOR_ID's role: one id for every author
COLUMNS = ["id", "modelId", "layer", "index", "authorId", "description", "embedding", "typeName",
           "explanationModelName", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity"]

# (index, id, description, typeName, explanationModelName): the fixture's explanations, in no order
EXPLANATIONS = [
    (7650, "cm1a7650aaaaaaaaaaaaaaaaa", "French places and cities", "oai_token-act-pair", "gpt-4o-mini"),
    (7650, "cm1b7650bbbbbbbbbbbbbbbbb", "Paris", "np_max-act-logits", "gemini-2.0-flash"),
    (12, "cm1c0012ccccccccccccccccc", "dogs and other pets", "oai_token-act-pair", "gpt-4o-mini"),
    (40, "cm1d0040ddddddddddddddddd", "dog food brands", "oai_token-act-pair", "gpt-4o-mini"),
    (2, "cm1e0002eeeeeeeeeeeeeeeee", "dog, dog breeds: dog names", "oai_token-act-pair", "gpt-4o-mini"),
    (100, "cm1f0100fffffffffffffffff", "references to the Eiffel Tower", "oai_token-act-pair", "gpt-4o-mini"),
    (1000, "cm1g1000ggggggggggggggggg", "cats", None, None),
    (300, "cm1h0300hhhhhhhhhhhhhhhhh", "numbers in tables", "oai_token-act-pair", "gpt-4o-mini"),
    (301, "cm1i0301iiiiiiiiiiiiiiiii", "numbers in tables", "oai_token-act-pair", "gpt-4o-mini"),
]


def row(index: int, np_id: str, description: str, type_name: str | None, explainer: str | None,
        model: str = MODEL, layer: str = LAYER) -> dict:
    """One ``Explanation`` row as ``RealDictCursor`` gives it to ``json.dumps`` (columns in SELECT order)."""
    values = [np_id, model, layer, str(index), CREATOR, description,
              "[0.0125,-0.5,0.25]" if index == 7650 else None, type_name, explainer, 0.0, 0.0, 0, 0.0]
    return dict(zip(COLUMNS, values))


def export_order(rows: list[dict]) -> list[dict]:
    """``ORDER BY index`` on a text column (PostgreSQL's C-like order for digits): "100" < "1000" < "12"."""
    return sorted(rows, key=lambda r: r["index"])


def write_batches(sae_dir: Path, rows: list[dict], batch_size: int = 1024, gz: bool = True) -> list[Path]:
    """``{sae_dir}/explanations/batch-N.jsonl[.gz]`` as export-data.py leaves them; returns the files."""
    folder = sae_dir / "explanations"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[start:start + batch_size]
        text = "".join(json.dumps(r) + "\n" for r in chunk)  # after the authorId rewrite: one dumps per line
        path = folder / f"batch-{n}.jsonl"
        if gz:
            path = path.with_name(path.name + ".gz")
            path.write_bytes(gzip.compress(text.encode(), compresslevel=5))
        else:
            path.write_text(text)
        out.append(path)
    return out


def fixture_rows() -> list[dict]:
    return export_order([row(*e) for e in EXPLANATIONS])


def write_fixture(root: Path, batch_size: int = 4) -> Path:
    """The fixture as the S3 tree: ``root/v1/gemma-2-2b/20-gemmascope-res-16k/explanations/batch-{0,1,2}``."""
    sae_dir = root / "v1" / MODEL / LAYER
    write_batches(sae_dir, fixture_rows(), batch_size)
    return sae_dir


def write_json_array(path: Path, rows: list[dict]) -> Path:
    """The admin export's answer (and the old /api/explanation/export file): a JSON array of rows."""
    keep = ("id", "modelId", "layer", "index", "description", "explanationModelName", "typeName")
    path.write_text(json.dumps([{k: r[k] for k in keep} for r in rows]))
    return path
