"""``saejobs saes``: the registry of Gemma Scope SAEs under their Neuronpedia ids."""

from __future__ import annotations

import click

from cli.output import emit, json_option, table
from engine import registry

COLUMNS = ["id", "folder", "hook_name", "d_sae", "l0"]


@click.group()
def saes() -> None:
    """List and look up SAEs (Neuronpedia ids or explicit repo/folder paths)."""


@saes.command("list")
@click.option("--model", help="Neuronpedia model id, e.g. gemma-2-2b or gemma-3-270m.")
@click.option("--site", type=click.Choice(["res", "mlp", "att"]), help="Hook site.")
@json_option
def list_(model: str | None, site: str | None, as_json: bool) -> None:
    """SAEs with a Neuronpedia id."""
    found = registry.entries(model=model, site=site)
    emit([e.to_json() for e in found], as_json,
         lambda: table(f"{len(found)} SAEs", COLUMNS, ([getattr(e, c) for c in COLUMNS] for e in found)))


@saes.command("show")
@click.argument("ids", nargs=-1, required=True)
@json_option
def show(ids: tuple[str, ...], as_json: bool) -> None:
    """Everything saejobs knows about an SAE. One id prints an object, several an array."""
    found = [registry.get(i) for i in ids]
    data = [e.to_json() for e in found]
    emit(data[0] if len(data) == 1 else data, as_json,
         lambda: [table(e.id, ["field", "value"], e.to_json().items()) for e in found])


@saes.command("available")
@click.argument("model")
@click.option("--layer", type=int, help="Only this layer.")
@json_option
def available(model: str, layer: int | None, as_json: bool) -> None:
    """The widths and L0 folders that really exist on the Hub for MODEL (asks the Hub's tree API)."""
    from engine import hub  # huggingface_hub loads only here

    found = hub.available(model, layer)
    groups: dict[tuple, list[str]] = {}
    for f in found:
        groups.setdefault((f["repo"], f["site"], f["layer"], f["width"]), []).append(str(f["l0"]))
    emit(found, as_json, lambda: table(f"{len(found)} SAE folders on the Hub for {model}",
                                       ["repo", "site", "layer", "width", "L0s"],
                                       ([*k, ", ".join(sorted(v, key=_l0))] for k, v in sorted(groups.items(), key=_order))))


def _order(item: tuple) -> tuple:
    (repo, site, layer, width), _ = item
    from engine.registry.regenerate import WIDTHS

    return repo, site, layer, WIDTHS.get(width, 0)


def _l0(label: str) -> int:
    return int(label) if label.isdigit() else {"small": 0, "medium": 1, "big": 2}.get(label, 9)
