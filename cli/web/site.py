"""The pages ``serve`` shows for one sweep, written as static files (``saejobs report JOB --site DIR``): its job
page, every grid page (each prompt × seed, each page of features) and the page of every generation a grid shows,
with the stylesheet; links between them are relative, so the folder can be copied or mailed and opened anywhere.
No script (nothing is live), no form. Written into a temporary folder beside DIR and renamed: never half a site."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from jinja2 import Environment, FileSystemLoader, select_autoescape

from saejobs.cli.web import pages
from saejobs.cli.web.app import HERE, fmt
from saejobs.engine.errors import UsageError


def site_url(name: str, **kw) -> str:
    """``app.server_url``'s names as files of the folder."""
    match name:
        case "index" | "job":
            return "index.html"
        case "sweep":
            return f"sweep-{kw.get('group') or 0}-{kw.get('cols') or 0}.html"
        case "generation":
            return f"generation-{kw['gen']}.html"
        case "static":
            return kw["file"]
    raise KeyError(name)


def export(ref: str, out: Path, progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Write sweep ``ref``'s pages into the new folder ``out``; returns what was written."""
    out = out.resolve()
    if out.exists():
        raise UsageError(f"{out} exists; --site writes a new folder")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such directory")
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.globals.update(url=site_url, fmt=fmt, static=True)
    first = pages.sweep_page(ref)  # refuses a job that is not a sweep, or one with no rows yet
    job = first["job"]["id"]
    tmp = Path(tempfile.mkdtemp(prefix=".saejobs-site-", dir=out.parent))
    try:
        write = lambda name, template, **ctx: (tmp / name).write_text(  # noqa: E731
            env.get_template(template).render(**ctx), encoding="utf-8")
        write("index.html", "job.html", **{**pages.job_page(job), "sweeps": []})
        shutil.copy(HERE / "static" / "app.css", tmp / "app.css")
        total, done, gens = first["groups"] * first["col_pages"], 0, set()
        for g in range(first["groups"]):
            col_pages = first["col_pages"] if g == 0 else None
            c = 0
            while col_pages is None or c < col_pages:
                page = first if (g, c) == (0, 0) else pages.sweep_page(job, g, c)
                col_pages = page["col_pages"]
                write(site_url("sweep", group=g, cols=c), "sweep.html", **page)
                shown = [page["default"]] + [cell for r in page["grid"] for cell in r["cells"]]
                for cell in shown:
                    if cell is not None and cell["id"] not in gens:
                        gens.add(cell["id"])
                        write(site_url("generation", gen=cell["id"]), "generation.html",
                              **pages.generation_page(cell["id"]))
                done += 1
                progress(done, max(total, done))
                c += 1
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"job": job, "site": str(out), "grid_pages": done, "generations": len(gens)}
