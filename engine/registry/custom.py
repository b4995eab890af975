"""SAEs the published listing does not have: your own, or the demo's synthetic one.

Each ``$SAEJOBS_HOME/registry.d/*.yaml`` holds a list of entries with SaeEntry's fields. They are
files from the user, so every field is checked: a bad file is one clear error naming it, and an id
may not shadow a published one.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from saejobs.engine import paths
from saejobs.engine.errors import FormatError
from saejobs.engine.registry.entry import SaeEntry, SaeFormat

FIELDS = {f.name: f.type for f in fields(SaeEntry)}
OPTIONAL = {"l0", "neuronpedia_id"}


def folder() -> Path:
    return paths.home() / "registry.d"


def load() -> dict[str, SaeEntry]:
    out: dict[str, SaeEntry] = {}
    d = folder()
    if not d.is_dir():
        return out
    for f in sorted(d.glob("*.yaml")):
        try:
            items = yaml.safe_load(f.read_text(encoding="utf-8")) or []
        except yaml.YAMLError as e:
            raise FormatError(f"{f}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(items, list):
            raise FormatError(f"{f}: expected a list of SAE entries")
        for i, item in enumerate(items):
            entry = parse(item, f"{f} entry {i}")
            out[entry.id] = entry
    return out


def parse(item: object, where: str) -> SaeEntry:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: expected a mapping of SaeEntry fields")
    missing = [k for k in FIELDS if k not in item and k not in OPTIONAL]
    unknown = [k for k in item if k not in FIELDS]
    if missing or unknown:
        raise FormatError(f"{where}: " + "; ".join(
            p for p in (f"missing {', '.join(missing)}" if missing else "",
                        f"unknown {', '.join(unknown)}" if unknown else "") if p))
    for k in ("layer", "d_model", "d_sae"):
        if not isinstance(item[k], int) or item[k] < 0:
            raise FormatError(f"{where}: {k} must be a non-negative integer, not {item[k]!r}")
    if item["format"] not in set(SaeFormat):
        raise FormatError(f"{where}: format must be {' or '.join(SaeFormat)}, not {item['format']!r}")
    for k in ("repo_id", "folder"):
        if paths.escapes(str(item[k])):
            raise FormatError(f"{where}: {k} {item[k]!r} must be a relative path without '..' (it names a cache folder)")
    for name in item["files"]:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise FormatError(f"{where}: file name {name!r} must be a plain name")
    return SaeEntry(**{**{k: None for k in OPTIONAL}, **item, "files": tuple(item["files"])})


def write(entries: list[SaeEntry], name: str) -> Path:
    """Add (or replace) a registry file; used by the demo for its synthetic SAE."""
    d = folder()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump([e.to_json() for e in entries], sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path
