"""Neuronpedia's explanations of features, cached: stored, looked up as labels, searched by full text.

- ``store``: one transaction, however many rows (a 1M-feature SAE's export included): a bad row anywhere
  rolls back every row before it. Rows go in by batches of ``BATCH`` with ``ON CONFLICT DO NOTHING`` on
  (SAE, feature, key), so importing the same export again adds nothing.
- ``labels``: one label per feature — the explanation stored most recently (``stored_at``), and among
  those stored together (one import, one fetch) the one stored last, i.e. the later row of the file.
- ``search``: every word of the text must match (stemmed: "dogs" finds "dog"); SQLite ranks by FTS5's
  ``bm25``, PostgreSQL by ``ts_rank`` over ``to_tsvector('english', description)`` with
  ``plainto_tsquery`` (the same AND of words; the GIN index of migration 0004 serves it). ``score``:
  higher is better, comparable within one database only. One row per matching explanation.
- ``resolve_label``: ``--feature label:TEXT``. An explanation equal to TEXT (case and surrounding spaces
  aside) wins; else the best-ranked match. Two different features equally good is ambiguous: a
  ``UsageError`` naming them, as is no match at all (naming how to fill the cache).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from saejobs.db.models import FeatureExplanation, utcnow
from saejobs.db.session import read_session, retried, session
from saejobs.engine.errors import UsageError

BATCH = 5000  # rows per INSERT: memory for a batch, not the export
IN_CHUNK = 500  # feature indices per IN (...) of a label lookup
FTS = "feature_explanations_fts"
WORD = re.compile(r"\w+")
NOTHING_CACHED = ("import Neuronpedia's export with `saejobs features import FILE`, or fetch a feature's "
                  "with `saejobs neuronpedia feature {sae} INDEX --fetch`")


def _insert(s: Session):
    table = FeatureExplanation.__table__
    if s.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing(index_elements=["sae_id", "feature_index", "key"])


def _count(s: Session, sae_id: str) -> int:
    return s.scalar(select(func.count()).select_from(FeatureExplanation).where(FeatureExplanation.sae_id == sae_id))


@retried
def store(records: Callable[[], Iterable], progress: Callable[[int], None] | None = None,
          url: str | None = None) -> dict:
    """Store every explanation ``records()`` yields (``engine.explanations.Explanation``s), in one
    transaction: a callable, so a retry after an outage reads them again from the start. ``progress``
    hears the count of rows read after each batch. Returns rows read and rows new, per SAE too."""
    with session(url) as s:
        ins, now = _insert(s), utcnow()
        read: dict[str, int] = {}
        before: dict[str, int] = {}
        batch: list[dict] = []
        n = 0
        for e in records():
            if e.sae_id not in before:
                before[e.sae_id] = _count(s, e.sae_id)
            read[e.sae_id] = read.get(e.sae_id, 0) + 1
            batch.append({"sae_id": e.sae_id, "feature_index": e.index, "key": e.key, "description": e.description,
                          "type_name": e.type_name, "explainer": e.explainer, "source": e.source, "stored_at": now})
            n += 1
            if len(batch) == BATCH:
                s.execute(ins, batch)
                batch = []
                if progress is not None:
                    progress(n)
        if batch:
            s.execute(ins, batch)
        if progress is not None:
            progress(n)
        per_sae = {sae: {"read": read[sae], "new": _count(s, sae) - before[sae]} for sae in read}
        return {"read": n, "new": sum(v["new"] for v in per_sae.values()), "saes": per_sae}


def lookup(s: Session, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """(SAE, feature) → label, in the caller's session; pairs with nothing cached are absent."""
    wanted: dict[str, set[int]] = {}
    for sae, index in pairs:
        if sae is not None and isinstance(index, int):
            wanted.setdefault(sae, set()).add(index)
    out: dict[tuple[str, int], str] = {}
    for sae, indices in wanted.items():
        ordered = sorted(indices)
        for i in range(0, len(ordered), IN_CHUNK):
            q = (select(FeatureExplanation.feature_index, FeatureExplanation.description)
                 .where(FeatureExplanation.sae_id == sae, FeatureExplanation.feature_index.in_(ordered[i:i + IN_CHUNK]))
                 .order_by(FeatureExplanation.feature_index, FeatureExplanation.stored_at.desc(),
                           FeatureExplanation.id.desc()))
            for index, description in s.execute(q):
                out.setdefault((sae, index), description)  # the first of each feature: the newest
    return out


@retried
def labels(sae_id: str, indices: Iterable[int], url: str | None = None) -> dict[int, str]:
    """Feature → its label (the newest explanation cached), for those of ``indices`` that have one."""
    with read_session(url) as s:
        return {i: d for (_, i), d in lookup(s, ((sae_id, i) for i in indices)).items()}


@retried
def labels_of(pairs: Iterable[tuple[str, int]], url: str | None = None) -> dict[tuple[str, int], str]:
    """(SAE, feature) → label for features of several SAEs at once (a steer's features may name others)."""
    with read_session(url) as s:
        return lookup(s, list(pairs))


@retried
def explanations(sae_id: str, index: int, url: str | None = None) -> list[dict]:
    """Every cached explanation of one feature, the label (newest) first."""
    with read_session(url) as s:
        q = (select(FeatureExplanation).where(FeatureExplanation.sae_id == sae_id,
                                              FeatureExplanation.feature_index == index)
             .order_by(FeatureExplanation.stored_at.desc(), FeatureExplanation.id.desc()))
        return [_as_dict(e) for e in s.scalars(q)]


def _as_dict(e: FeatureExplanation, score: float | None = None) -> dict:
    d = {"sae": e.sae_id, "index": e.feature_index, "description": e.description, "type_name": e.type_name,
         "explainer": e.explainer, "source": e.source, "stored_at": e.stored_at.isoformat()}
    return d if score is None else {**d, "score": score}


def words(query: str) -> list[str]:
    found = WORD.findall(query)
    if not found:
        raise UsageError(f"search text {query[:40]!r} has no words to look for")
    return found


@retried
def search(query: str, sae_id: str | None = None, limit: int = 20, url: str | None = None) -> list[dict]:
    """Cached explanations with every word of ``query``, best first (see the module's docstring)."""
    terms = words(query)
    with read_session(url) as s:
        if s.bind.dialect.name == "postgresql":
            sql = ("SELECT id, ts_rank(to_tsvector('english', description), plainto_tsquery('english', :q)) AS score "
                   "FROM feature_explanations WHERE to_tsvector('english', description) @@ "
                   "plainto_tsquery('english', :q)" + (" AND sae_id = :sae" if sae_id else "")
                   + " ORDER BY score DESC, sae_id, feature_index, id LIMIT :n")
            params = {"q": " ".join(terms), "sae": sae_id, "n": limit}
        else:
            sql = (f"SELECT e.id, -bm25({FTS}) AS score FROM {FTS} JOIN feature_explanations e ON e.id = {FTS}.rowid "
                   f"WHERE {FTS} MATCH :q" + (" AND e.sae_id = :sae" if sae_id else "")
                   + f" ORDER BY bm25({FTS}), e.sae_id, e.feature_index, e.id LIMIT :n")
            params = {"q": " ".join('"' + t.replace('"', '""') + '"' for t in terms), "sae": sae_id, "n": limit}
        hits = s.execute(text(sql), params).all()
        rows = {e.id: e for e in s.scalars(select(FeatureExplanation).where(
            FeatureExplanation.id.in_([h[0] for h in hits])))}
        return [_as_dict(rows[i], float(sc)) for i, sc in hits]


@retried
def cached_count(sae_id: str | None = None, url: str | None = None) -> int:
    with read_session(url) as s:
        q = select(func.count()).select_from(FeatureExplanation)
        return s.scalar(q if sae_id is None else q.where(FeatureExplanation.sae_id == sae_id))


@retried
def _exact(sae_id: str, label: str, url: str | None = None) -> list[tuple[int, str]]:
    with read_session(url) as s:
        q = (select(FeatureExplanation.feature_index, FeatureExplanation.description)
             .where(FeatureExplanation.sae_id == sae_id,
                    func.lower(func.trim(FeatureExplanation.description)) == label.strip().lower())
             .order_by(FeatureExplanation.feature_index))
        return list(dict(s.execute(q).all()).items())


def resolve_label(sae_id: str, label: str, url: str | None = None) -> tuple[int, str]:
    """The feature of ``sae_id`` that ``label`` names: (index, its explanation). See the module's docstring
    for the rule; no match, or a tie between different features, is a one-line ``UsageError``."""
    exact = _exact(sae_id, label, url=url)
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise UsageError(f"label '{label}' is the explanation of {len(exact)} features of {sae_id} "
                         f"({_listed(exact)}); give the feature index")
    hits = search(label, sae_id, limit=10, url=url)
    if not hits:
        if cached_count(sae_id, url=url) == 0:
            raise UsageError(f"no explanations of {sae_id} are cached: " + NOTHING_CACHED.format(sae=sae_id))
        raise UsageError(f"no cached explanation of {sae_id} matches '{label}'; `saejobs features search` lists "
                         "what does, or " + NOTHING_CACHED.format(sae=sae_id))
    best = hits[0]["score"]
    tied = {h["index"]: h["description"] for h in hits if abs(h["score"] - best) <= 1e-9 * max(1.0, abs(best))}
    if len(tied) > 1:
        raise UsageError(f"label '{label}' matches {len(tied)} features of {sae_id} equally well "
                         f"({_listed(list(tied.items()))}); give the feature index or more words")
    return hits[0]["index"], hits[0]["description"]


def _listed(pairs: list[tuple[int, str]], most: int = 4) -> str:
    shown = ", ".join(f"{i} '{d[:40]}'" for i, d in pairs[:most])
    return shown + (f", and {len(pairs) - most} more" if len(pairs) > most else "")
