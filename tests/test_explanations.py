"""Neuronpedia's explanations cached offline (issue 29, item 3; labels of item 4): ``saejobs features
import`` of the bulk export format (``tests/explanation_exports.py`` writes it as Neuronpedia's
``export-data.py`` does), full-text ``search`` on SQLite and PostgreSQL, ``label:TEXT`` resolution, and
the labels every export of a sweep carries. Expected values come from the fixture's literals."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pytest
from sqlalchemy import text

from saejobs.engine.score import FLAT, MAPPINGS
from tests.dbfixtures import db_url, home, sqlite_url  # noqa: F401
from tests.explanation_exports import (EXPLANATIONS, MODEL, SAE, fixture_rows, row, write_batches,
                                       write_fixture, write_json_array)
from tests.test_queue import one_clean_line, saejobs, submitted

OTHER = "gemma-2-2b/21-gemmascope-res-16k"
LABEL = {2: "dog, dog breeds: dog names", 12: "dogs and other pets", 40: "dog food brands", 7650: "Paris"}


def count(sae: str | None = None) -> int:
    from saejobs.db.session import get_engine

    with get_engine().connect() as c:
        return c.execute(text("SELECT count(*) FROM feature_explanations" + (" WHERE sae_id = :s" if sae else "")),
                         {"s": sae}).scalar()


def imported(*args: str) -> dict:
    return submitted(saejobs("features", "import", *map(str, args), "--json"))


def test_the_s3_layout_imports_once_whatever_its_form(db_url, tmp_path):
    sae_dir = write_fixture(tmp_path)  # v1/gemma-2-2b/20-gemmascope-res-16k/explanations/batch-{0,1,2}.jsonl.gz
    assert sorted(p.name for p in (sae_dir / "explanations").iterdir()) == ["batch-0.jsonl.gz", "batch-1.jsonl.gz",
                                                                             "batch-2.jsonl.gz"]
    got = imported(sae_dir)
    assert (got["files"], got["read"], got["new"]) == (3, len(EXPLANATIONS), len(EXPLANATIONS))
    assert got["saes"] == {SAE: {"read": len(EXPLANATIONS), "new": len(EXPLANATIONS)}}
    assert count(SAE) == len(EXPLANATIONS)
    again = imported(sae_dir / "explanations" / "batch-1.jsonl.gz")  # one batch again: 4 rows, none new
    assert (again["files"], again["read"], again["new"]) == (1, 4, 0)
    plain = write_batches(tmp_path / "plain", fixture_rows(), batch_size=100, gz=False)  # .jsonl, ungzipped
    array = write_json_array(tmp_path / "admin-export.json", fixture_rows())  # the admin export's JSON array
    for f in (plain[0], array):
        got = imported(f)
        assert (got["read"], got["new"]) == (len(EXPLANATIONS), 0), f.name
    assert count() == len(EXPLANATIONS)
    from saejobs.db import explanations

    assert explanations.explanations(SAE, 1000)[0] | {"stored_at": None} == {
        "sae": SAE, "index": 1000, "description": "cats", "type_name": None, "explainer": None, "stored_at": None,
        "source": f"neuronpedia-export:{sae_dir.resolve() / 'explanations' / 'batch-0.jsonl.gz'}"}


def test_labels_are_the_newest_explanation_and_the_later_row_of_a_file(db_url, tmp_path):
    from saejobs.db import explanations

    imported(write_fixture(tmp_path))
    assert explanations.labels(SAE, [2, 12, 40, 7650, 5]) == LABEL  # 7650: "Paris" follows "French places" in the file
    assert explanations.labels("gemma-2-2b/21-gemmascope-res-16k", [2]) == {}
    newer = row(2, "cm2z0002zzzzzzzzzzzzzzzzz", "canine words", "np_max-act-logits", "gemini-2.0-flash")
    f = tmp_path / "later.jsonl"
    f.write_text(json.dumps(newer) + "\n")
    assert imported(f)["new"] == 1
    assert explanations.labels(SAE, [2]) == {2: "canine words"}
    assert [e["description"] for e in explanations.explanations(SAE, 2)] == ["canine words", LABEL[2]]


def test_full_text_search_ranks_and_stems(db_url, tmp_path):
    from saejobs.db import explanations

    imported(write_fixture(tmp_path))
    hits = explanations.search("dog")
    assert hits[0]["index"] == 2 and hits[0]["description"] == LABEL[2]  # three times "dog": the best match
    assert sorted(h["index"] for h in hits) == [2, 12, 40]  # "dogs" is stemmed to "dog"; cats are not dogs
    assert hits[0]["score"] > hits[1]["score"] >= hits[2]["score"]
    assert [h["index"] for h in explanations.search("dog food")] == [40]  # every word must match
    assert [h["index"] for h in explanations.search("Eiffel towers")] == [100]
    assert explanations.search("dog", sae_id="gemma-2-2b/21-gemmascope-res-16k") == []
    assert [h["index"] for h in explanations.search("dog", limit=1)] == [2]
    out = submitted(saejobs("features", "search", "pets", "--sae", SAE, "--json"))
    assert [(h["sae"], h["index"], h["description"]) for h in out] == [(SAE, 12, "dogs and other pets")]
    assert "no words" in one_clean_line(saejobs("features", "search", "  ;; "), 2)


def test_resolve_label_picks_one_feature_or_says_why_not(db_url, tmp_path):
    from saejobs.db import explanations
    from saejobs.engine.errors import UsageError

    with pytest.raises(UsageError, match=r"no explanations of .* are cached: .*saejobs features import"):
        explanations.resolve_label(SAE, "dog")
    imported(write_fixture(tmp_path))
    assert explanations.resolve_label(SAE, "dog") == (2, LABEL[2])
    assert explanations.resolve_label(SAE, "  Dog Food Brands ") == (40, LABEL[40])  # the exact text wins
    assert explanations.resolve_label(SAE, "paris") == (7650, "Paris")
    with pytest.raises(UsageError, match=r"'numbers in tables' is the explanation of 2 features .* \(300 .*, 301 "):
        explanations.resolve_label(SAE, "numbers in tables")
    with pytest.raises(UsageError, match=r"matches 2 features .* equally well \(300 .*301 .*\); give the feature"):
        explanations.resolve_label(SAE, "tables")
    with pytest.raises(UsageError, match=r"matches 'giraffe'.*saejobs neuronpedia feature .* --fetch"):
        explanations.resolve_label(SAE, "giraffe")
    out = submitted(saejobs("features", "label", SAE, "label:dog food", "--json"))
    assert (out["index"], out["label"], len(out["explanations"])) == (40, LABEL[40], 1)
    line = one_clean_line(saejobs("features", "label", SAE, "label:tables"), 2)
    assert "equally well" in line


def gz(path, text: str):
    path.write_bytes(gzip.compress(text.encode()))
    return path


def lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_bad_exports_are_one_line_and_store_nothing(sqlite_url, tmp_path):
    good = [row(*e) for e in EXPLANATIONS[:3]]
    cases = [  # (file, arguments, exit code, what the line says)
        (tmp_path / "batch-0.jsonl.gz", (), 3, "not gzip-compressed"),
        (gz(tmp_path / "badline.jsonl.gz", lines(*good[:2], '{"modelId": "gemma-2-2b", "layer": ', good[2])), (),
         3, "badline.jsonl.gz line 3: not JSON"),
        (gz(tmp_path / "nodesc.jsonl.gz", lines(good[0], {k: v for k, v in good[1].items() if k != "description"})),
         (), 3, "line 2: no 'description'"),
        (gz(tmp_path / "badindex.jsonl.gz", lines({**good[0], "index": "-3"})), (), 3, "index: '-3' is not a feature"),
        (gz(tmp_path / "other.jsonl.gz", lines(good[0], {**good[1], "layer": "21-gemmascope-res-16k"})),
         ("--sae", SAE), 2, f"line 2 is an explanation of Neuronpedia's {MODEL}/21-gemmascope-res-16k, not of {SAE}"),
        (gz(tmp_path / "unknown.jsonl.gz", lines({**good[0], "layer": "99-nobody-16k"})), (), 2,
         "Neuronpedia's gemma-2-2b/99-nobody-16k, which saejobs' registry does not know; name its SAE with --sae"),
        (gz(tmp_path / "range.jsonl.gz", lines(good[0], {**good[1], "index": "16384"})), (), 2,
         f"feature 16384 is out of range for {SAE} (d_sae 16384)"),
        (tmp_path / "truncated.jsonl.gz", (), 3, "truncated or corrupt"),
        (tmp_path / "missing.jsonl.gz", (), 2, "no such file or directory"),
        (tmp_path / "empty-dir", (), 2, "no explanation export files"),
    ]
    (tmp_path / "batch-0.jsonl.gz").write_text(lines(*good))  # named .gz, but plain text
    (tmp_path / "truncated.jsonl.gz").write_bytes(gzip.compress(lines(*good).encode())[:-12])
    (tmp_path / "empty-dir").mkdir()
    for path, args, code, says in cases:
        line = one_clean_line(saejobs("features", "import", str(path), *args), code)
        assert says in line, (path.name, line)
        assert count() == 0, path.name


def test_an_import_is_one_transaction_across_batches_and_files(sqlite_url, tmp_path, monkeypatch):
    """The rows of earlier INSERT batches and earlier files are rolled back with the bad line's."""
    from saejobs.db import explanations
    from saejobs.engine import explanations as exports
    from saejobs.engine.errors import FormatError

    monkeypatch.setattr(explanations, "BATCH", 2)
    folder = tmp_path / "explanations"
    write_batches(tmp_path, fixture_rows(), batch_size=100)  # batch-0: every fixture row
    gz(folder / "batch-1.jsonl.gz", lines(row(5, "cm3", "fine", None, None), "not json"))
    with pytest.raises(FormatError, match=r"batch-1.jsonl.gz line 2: not JSON"):
        explanations.store(lambda: exports.read(exports.files(tmp_path)))
    assert count() == 0
    seen = []
    got = explanations.store(lambda: exports.read(exports.files(folder / "batch-0.jsonl.gz")), seen.append)
    assert got["new"] == count() == len(EXPLANATIONS) and seen == [2, 4, 6, 8, len(EXPLANATIONS)]


def labelled_sweep() -> str:
    """A succeeded sweep of the fixture's SAE: DEFAULT, features 2, 40, 5 (no explanation), 12+7650 and
    feature 40 of another SAE (nothing cached for it)."""
    from saejobs.db import jobs, results

    job = jobs.create("sweep", {"sae": SAE}, sae_id=SAE)
    sweep = results.ensure_sweep(job.id, SAE, "gemma-2-2b", {}, {})
    configs = [[], [{"index": 2, "strength": 10.0}], [{"index": 40, "strength": 10.0}],
               [{"index": 5, "strength": 10.0}], [{"index": 12, "strength": 10.0}, {"index": 7650, "strength": 10.0}],
               [{"index": 40, "strength": 10.0, "sae": OTHER}]]  # another SAE's feature 40: that SAE's label
    results.add_generations(sweep, [
        {"config_key": f"k{i}", "type": "STEERED" if f else "DEFAULT", "features": f, "prompt": "p",
         "prompt_token_ids": [1], "seed": 1, "sampling": {"temperature": 0.0}, "output": f"out <{i}>",
         "token_ids": [1, 2], "logprobs": None, "messages": None,
         "scores": {"concept_mean": 1.0, "concept_fire_rate": 0.5, "nll": 2.0, "completion_tokens": 2,
                    "concept": {str(x["index"]): {"mean": 1.0, "fire_rate": 0.5} for x in f}}}
        for i, f in enumerate(configs)])
    assert jobs.claim(job.id, worker="w", host="h", gpu=None)
    assert jobs.finish(job.id, "succeeded", worker="w", result={"sweep_id": sweep})
    return job.id


def test_results_carry_each_features_label_everywhere(sqlite_url, tmp_path):
    import pyarrow.parquet as pq

    from saejobs.frame import COLUMNS

    job = labelled_sweep()
    before = submitted(saejobs("results", job, "--json"))
    assert [r["labels"] for r in before] == [[], [None], [None], [None], [None, None], [None]]  # nothing cached yet
    evil = tmp_path / "evil.jsonl"  # untrusted label text: escaped in HTML, plain in tables
    evil.write_text(json.dumps(row(5, "cm9", "<script>x</script> [bold]five[/]", None, None)) + "\n")
    imported(write_fixture(tmp_path))
    imported(evil)
    want = [[], [LABEL[2]], [LABEL[40]], ["<script>x</script> [bold]five[/]"], [LABEL[12], "Paris"], [None]]
    got = submitted(saejobs("results", job, "--json"))
    assert [r["labels"] for r in got] == want
    rest = lambda rows: [{k: v for k, v in r.items() if k != "labels"} for r in rows]  # noqa: E731
    assert rest(got) == rest(before) and list(got[0])[-1] == "labels"  # nothing else changed; a key at the end
    table = list(csv.DictReader(io.StringIO(saejobs("results", job, "--csv").stdout)))
    cols = list(table[0])  # labels after the columns it had before, then the scores (columns added later go last)
    assert cols[cols.index("labels") + 1:] == [*FLAT, *MAPPINGS] and [json.loads(r["labels"]) for r in table] == want
    grid = saejobs("results", job, env={"COLUMNS": "400"}).stdout
    assert f"2: {LABEL[2]}" in grid and "12+7650: dogs and other pets + Paris" in grid and "[bold]five[/]" in grid
    assert submitted(saejobs("results", job, "--format", "parquet", "--out", str(tmp_path / "r.parquet"), "--json"))
    back = pq.read_table(tmp_path / "r.parquet")
    assert back.column_names == COLUMNS and COLUMNS[-1] == "label"
    assert back.column("label").to_pylist() == [None, LABEL[2], LABEL[40], "<script>x</script> [bold]five[/]",
                                                "dogs and other pets + Paris", None]
    page = tmp_path / "r.html"
    submitted(saejobs("report", job, "--html", str(page), "--json"))
    html = page.read_text()
    assert f"<h2>feature 40 <span class=\"label\">— {LABEL[40]}</span></h2>" in html
    assert "&lt;script&gt;x&lt;/script&gt; [bold]five[/]" in html and "<script>" not in html


def test_upgrading_a_database_full_of_rows_then_importing_and_searching(db_url, tmp_path):
    """Migration 0004 on a database with rows in every table of 0003; then the cache works, and rows written
    by plain SQL at head (as a later migration's data would be) are in the full-text index: the triggers."""
    from saejobs.db import explanations, migrate
    from saejobs.db.session import dispose_all
    from tests.test_migrations import assert_kept, at, populate

    eng = at("0003")
    inserted = populate(eng)
    migrate.upgrade(eng)
    assert migrate.stamped(eng) == migrate.SCHEMA_REVISION  # 0004 and every later one
    assert_kept(inserted, eng)
    dispose_all()
    assert imported(write_fixture(tmp_path))["new"] == len(EXPLANATIONS)
    from saejobs.db.session import get_engine

    with get_engine().begin() as c:
        c.execute(text("INSERT INTO feature_explanations (sae_id, feature_index, key, description, source, stored_at) "
                       "VALUES (:s, 9, 'k9', 'zebra crossings', 'sql', CURRENT_TIMESTAMP)"), {"s": SAE})
        c.execute(text("UPDATE feature_explanations SET description = 'okapi sightings' WHERE feature_index = 1000"))
        c.execute(text("DELETE FROM feature_explanations WHERE feature_index = 100"))
    assert [h["index"] for h in explanations.search("zebra")] == [9]
    assert [h["index"] for h in explanations.search("okapi")] == [1000] and explanations.search("cats") == []
    assert explanations.search("Eiffel") == []


def test_a_fetched_feature_is_cached_and_shown_offline(sqlite_url):
    from saejobs.db import explanations
    from tests.test_neuronpedia_feature import ANSWER, serve

    url, _ = serve(ANSWER)
    env = {"NEURONPEDIA_API_URL": url + "/api/steer"}
    offline = submitted(saejobs("neuronpedia", "feature", SAE, "7650", "--json"))
    assert offline["cached"] == []
    first = submitted(saejobs("neuronpedia", "feature", SAE, "7650", "--fetch", "--json", env=env))
    again = submitted(saejobs("neuronpedia", "feature", SAE, "7650", "--fetch", "--json", env=env))
    assert (first["cached_new"], again["cached_new"]) == (1, 0)  # no id in the answer: keyed by its text
    description = ANSWER["explanations"][0]["description"]
    assert explanations.labels(SAE, [7650]) == {7650: description}
    cached = submitted(saejobs("neuronpedia", "feature", SAE, "7650", "--json"))["cached"]
    assert [(e["description"], e["type_name"], e["explainer"], e["source"]) for e in cached] == [
        (description, "oai_token-act-pair", "gpt-4o-mini", "neuronpedia-api")]
