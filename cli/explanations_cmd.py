"""``saejobs features import|search|label``: Neuronpedia's explanations, cached in the database.

``import`` reads Neuronpedia's bulk exports (``engine/explanations.py`` says where the format comes
from) in one transaction; ``search`` and ``label`` read the cache only, offline.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from saejobs.cli.complete import sae_ids
from saejobs.cli.output import console, emit, err_console, json_option, table


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--sae", "sae", shell_complete=sae_ids,
              help="The saejobs SAE the export is of (default: the registry's SAE with the rows' Neuronpedia "
                   "id, modelId/layer); needed for an SAE whose Neuronpedia id the registry does not know.")
@json_option
def import_(path: Path, sae: str | None, as_json: bool) -> None:
    """Cache Neuronpedia's explanations from its bulk export: PATH is a batch-N.jsonl.gz file (as in
    s3://neuronpedia-datasets/v1/MODEL/SAE/explanations/), a .jsonl, a JSON array, or a folder of them.

    One transaction: a bad line anywhere imports nothing. Importing the same export again adds nothing."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from saejobs.db import explanations as cache
    from saejobs.engine import explanations as exports

    paths = exports.files(path)
    started = time.monotonic()
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                   console=err_console(), disable=as_json or not err_console().is_terminal, transient=True)
    with bar:
        task = bar.add_task(f"importing {len(paths)} file(s): 0 rows", total=None)

        def progress(n: int) -> None:
            rate = n / max(time.monotonic() - started, 1e-6)
            bar.update(task, description=f"importing {len(paths)} file(s): {n:,} rows ({rate:,.0f}/s)")

        got = cache.store(lambda: exports.read(paths, sae), progress)
    seconds = time.monotonic() - started
    out = {"files": len(paths), **got, "seconds": round(seconds, 3)}
    emit(out, as_json, lambda: table(
        f"imported {got['read']:,} explanations from {len(paths)} file(s) in {seconds:.1f} s",
        ["sae", "read", "new"], ([s, v["read"], v["new"]] for s, v in got["saes"].items())))


@click.command()
@click.argument("text")
@click.option("--sae", "sae", shell_complete=sae_ids, help="Only this SAE's features.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
def search(text: str, sae: str | None, limit: int, as_json: bool) -> None:
    """Cached explanations containing every word of TEXT (stemmed), best match first."""
    from saejobs.db import explanations as cache

    if sae is not None:
        from saejobs.engine import registry

        sae = registry.get(sae).id
    hits = cache.search(text, sae, limit)
    emit(hits, as_json, lambda: table(
        f"{len(hits)} cached explanation(s) match '{text}'" + (f" in {sae}" if sae else ""),
        ["sae", "feature", "explanation", "explainer", "score"],
        ([h["sae"], h["index"], h["description"], h["explainer"] or "", f"{h['score']:.3g}"] for h in hits)))
    if not hits and not as_json and cache.cached_count(sae) == 0:
        console().print("nothing is cached" + (f" for {sae}" if sae else "") + ": `saejobs features import FILE` "
                        "loads Neuronpedia's export")


@click.command()
@click.argument("sae", shell_complete=sae_ids)
@click.argument("feature")
@json_option
def label(sae: str, feature: str, as_json: bool) -> None:
    """The cached explanations of one feature (its label first): FEATURE is an index, or label:TEXT to
    find the feature whose explanation best matches TEXT."""
    from saejobs.db import explanations as cache
    from saejobs.engine import registry
    from saejobs.engine.errors import UsageError

    entry = registry.get(sae)
    if feature.startswith("label:"):
        index, _ = cache.resolve_label(entry.id, feature[len("label:"):])
    elif feature.isdigit():
        index = int(feature)
    else:
        raise UsageError(f"feature '{feature}' is neither an index nor label:TEXT")
    if not 0 <= index < entry.d_sae:
        raise UsageError(f"feature {index} is out of range for {entry.id} (d_sae {entry.d_sae})")
    found = cache.explanations(entry.id, index)
    out = {"sae": entry.id, "index": index, "label": found[0]["description"] if found else None, "explanations": found}
    emit(out, as_json, lambda: table(
        f"{entry.id} feature {index}: " + (out["label"] if found else "no cached explanation"),
        ["explanation", "type", "explainer", "source", "stored_at"],
        ([e["description"], e["type_name"] or "", e["explainer"] or "", e["source"], e["stored_at"]] for e in found)))


COMMANDS = [import_, search, label]
