"""``saejobs saes``: the registry of Gemma Scope SAEs under their Neuronpedia ids."""

from __future__ import annotations

import click

from saejobs.cli.complete import sae_ids
from saejobs.cli.output import emit, fitting, json_option, table
from saejobs.engine.registry.entry import SaeSite

COLUMNS = ["id", "folder", "hook_name", "d_sae", "l0"]
OPTIONAL = ("folder", "hook_name")  # dropped, in this order, before an id would have to fold


@click.group()
def saes() -> None:
    """List and look up SAEs (Neuronpedia ids or explicit repo/folder paths)."""


@saes.command("list")
@click.option("--model", help="Neuronpedia model id, e.g. gemma-2-2b or gemma-3-270m.")
@click.option("--site", type=click.Choice([s.value for s in SaeSite]), help="Hook site.")
@click.option("--layer", type=click.IntRange(0), help="Only this layer.")
@click.option("--width", help="Only this width: 16k, 1m, or a number of features (16384).")
@click.option("--wide", is_flag=True, help="Every column however narrow the terminal (long cells fold).")
@json_option
def list_(model: str | None, site: str | None, layer: int | None, width: str | None, wide: bool, as_json: bool) -> None:
    """SAEs with a Neuronpedia id (a narrow terminal gets fewer columns, never shortened ids)."""
    from saejobs.cli.output import console
    from saejobs.engine import registry

    found = registry.entries(model=model, site=site, layer=layer, width=width)

    def render() -> None:
        rows = [[getattr(e, c) for c in COLUMNS] for e in found]
        cols = COLUMNS if wide else fitting(COLUMNS, rows, console().width, OPTIONAL)
        table(f"{len(found)} SAEs", cols, ([r[COLUMNS.index(c)] for c in cols] for r in rows))
    emit([e.to_json() for e in found], as_json, render)


@saes.command("show")
@click.argument("ids", nargs=-1, required=True, shell_complete=sae_ids)
@json_option
def show(ids: tuple[str, ...], as_json: bool) -> None:
    """Everything saejobs knows about an SAE. One id prints an object, several an array."""
    from saejobs.engine import registry

    found = [registry.get(i) for i in ids]
    data = [e.to_json() for e in found]
    emit(data[0] if len(data) == 1 else data, as_json,
         lambda: [table(e.id, ["field", "value"], e.to_json().items()) for e in found])


@saes.command("available")
@click.argument("model")
@click.option("--layer", type=click.IntRange(0), help="Only this layer.")
@click.option("--site", type=click.Choice([s.value for s in SaeSite]), help="Only this hook site.")
@json_option
def available(model: str, layer: int | None, site: str | None, as_json: bool) -> None:
    """The widths and L0 folders that really exist on the Hub for MODEL (asks the Hub's tree API)."""
    from saejobs.engine import hub  # huggingface_hub loads only here

    found = hub.available(model, layer, site)
    groups: dict[tuple, list[str]] = {}
    for f in found:
        groups.setdefault((f["repo"], f["site"], f["layer"], f["width"]), []).append(str(f["l0"]))
    emit(found, as_json, lambda: table(f"{len(found)} SAE folders on the Hub for {model}",
                                       ["repo", "site", "layer", "width", "L0s"],
                                       ([*k, ", ".join(sorted(v, key=_l0))] for k, v in sorted(groups.items(), key=_order))))


def _order(item: tuple) -> tuple:
    (repo, site, layer, width), _ = item
    from saejobs.engine.registry.regenerate import WIDTHS

    return repo, site, layer, WIDTHS.get(width, 0)


def _l0(label: str) -> int:
    return int(label) if label.isdigit() else {"small": 0, "medium": 1, "big": 2}.get(label, 9)
