"""Regenerate the registry's data files from SAELens' published listing.

    pip download sae-lens --no-deps -d /tmp/pkgs && unzip -o /tmp/pkgs/sae_lens-*.whl -d /tmp/pkgs/saelens
    python -m saejobs.engine.registry.regenerate --saelens-yaml /tmp/pkgs/saelens/sae_lens/pretrained_saes.yaml

SAELens' ``pretrained_saes.yaml`` names, for each Gemma Scope release, the folder of every SAE and,
for those Neuronpedia serves, its Neuronpedia id. The canonical 16k residual SAEs have a different
L0 at each layer (only some are ``average_l0_71``), which is why the mapping is copied, not derived.
Only the YAML is read (saejobs has no run-time dependency on sae-lens), and it is checked rather
than trusted: a Neuronpedia id whose layer/site/width/L0 contradict its folder is left out and named
in the files' header. ``describe`` is shared with the run-time registry, which uses it for explicit
``owner/repo/folder`` paths.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from saejobs.engine.registry.entry import GEMMA_SCOPE_2_PREFIXES, SaeFormat, SaeSite

DATA = Path(__file__).parent / "data"
WIDTHS = {"4k": 2**12, "16k": 2**14, "32k": 2**15, "65k": 2**16, "131k": 2**17, "262k": 2**18, "524k": 2**19,
          "1m": 2**20}
SITES = tuple(SaeSite)
GS1 = re.compile(r"^layer_(?P<layer>\d+)/width_(?P<width>\w+)/average_l0_(?P<l0>\d+)$")
GS2 = re.compile(rf"^(?P<point>{GEMMA_SCOPE_2_PREFIXES})(?:_all)?/layer_(?P<layer>\d+)_width_(?P<width>\w+?)"
                 r"_l0_(?:small|medium|big)(?:_seed_\d+)?$")
GS1_REPO = re.compile(r"^google/gemma-scope-(?P<size>2b|9b|27b)-(?P<kind>pt|it)-(?P<site>res|mlp|att)$")
GS2_REPO = re.compile(r"^google/gemma-scope-2-(?P<size>270m|1b|4b|12b|27b)-(?P<kind>pt|it)$")
NP_ID = re.compile(r"^(?P<model>[\w.-]+)/(?P<layer>\d+)-gemmascope-(?:2-)?(?P<site>res|mlp|att)-(?P<width>\w+?)"
                   r"(?:__l0-(?P<l0>\d+))?$")

# Model facts from each model's transformers config.json (hidden_size, num_hidden_layers,
# num_attention_heads, head_dim); -it models share their base model's shapes. Checked against
# SAELens' gemma_2 loader (d_in 2304/3584/4608; attention d_in 2048 for 2b, 4096 for 9b), the
# gemma-3-270m GGUF on PyPI (640/18/4/256) and the listing's *-all releases (one SAE set per layer).
MODEL_FACTS = {
    "gemma-2-2b": (2304, 26, 8, 256),
    "gemma-2-9b": (3584, 42, 16, 256),
    "gemma-2-27b": (4608, 46, 32, 128),
    "gemma-3-270m": (640, 18, 4, 256),
    "gemma-3-1b": (1152, 26, 4, 256),
    "gemma-3-4b": (2560, 34, 8, 256),
    "gemma-3-12b": (3840, 48, 16, 256),
    "gemma-3-27b": (5376, 62, 32, 128),
}


def describe(repo_id: str, repo: dict, folder: str, l0: float | None, model: dict) -> dict | None:
    """SaeEntry fields (less id and neuronpedia_id) of one folder, or None if it is no res/mlp/att SAE.

    ``repo`` is the repo's record in folders.yaml, ``model`` its model's record in models.yaml.
    Gemma Scope's L0 is the folder's ``average_l0_N``; Gemma Scope 2's is the listing's number.
    """
    files = list(SaeFormat(repo["format"]).files)
    if repo["format"] == SaeFormat.GEMMA_SCOPE_2:
        m = GS2.match(folder)
        site = str(SaeSite.of_gemma_scope_2(m["point"])) if m else None
    else:
        m = GS1.match(folder)
        site = repo.get("site")
        l0 = int(m["l0"]) if m else None
    if m is None or m["width"] not in WIDTHS:
        return None
    layer = int(m["layer"])
    return {
        "model": repo["model"], "model_hf": model["model_hf"], "repo_id": repo_id, "folder": folder, "files": files,
        "format": repo["format"], "site": site, "hook_name": SaeSite(site).hook_name(layer), "layer": layer,
        # Attention SAEs read hook_z (o_proj's input): n_heads * head_dim, not the hidden size.
        "d_model": model["n_heads"] * model["head_dim"] if site == "att" else model["d_model"],
        "d_sae": WIDTHS[m["width"]], "l0": l0, "architecture": "jumprelu", "width": m["width"],
    }


def natural(s: str) -> list:
    """Sort key that puts layer_2 before layer_12."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def model_order(model: str) -> tuple[int, bool]:
    """Models by family and size (gemma-3-270m before gemma-3-1b), each base model before its -it."""
    return list(MODEL_FACTS).index(model.removesuffix("-it")), model.endswith("-it")


def saelens_version(listing: Path) -> str:
    init = listing.parent / "__init__.py"
    m = re.search(r'__version__\s*=\s*"([^"]+)"', init.read_text()) if init.is_file() else None
    if m:
        return m[1]
    for meta in sorted(listing.parent.parent.glob("sae_lens-*.dist-info/METADATA")):
        m = re.search(r"^Version: (\S+)", meta.read_text(), re.M)
        if m:
            return m[1]
    return "unknown"


def _repo(release: str, info: dict) -> dict | None:
    """folders.yaml record of a release's repo (model, format, site), or None for non-SAE releases."""
    m = GS1_REPO.match(info["repo_id"])
    if m and info.get("conversion_func") == "gemma_2":
        # From the repo name, not the listing's `model`: it says gemma-2-9b for gemma-scope-9b-it-res.
        model = f"gemma-2-{m['size']}" + ("-it" if m["kind"] == "it" else "")
        return {"model": model, "model_hf": f"google/{model}", "format": str(SaeFormat.GEMMA_SCOPE), "site": m["site"]}
    m = GS2_REPO.match(info["repo_id"])
    if m and info.get("conversion_func") == "gemma_3" and "transcoder" not in release:
        model = f"gemma-3-{m['size']}" + ("-it" if m["kind"] == "it" else "")
        # Hub model ids are irregular (google/gemma-3-270m but google/gemma-3-1b-pt): the listing's.
        return {"model": model, "model_hf": info["model"], "format": str(SaeFormat.GEMMA_SCOPE_2)}
    return None


def collect(raw: dict) -> tuple[dict, dict, dict, dict]:
    """(saes, repos, models, notes) from the parsed listing; raises ValueError on contradictions."""
    saes: dict[str, dict] = {}
    repos: dict[str, dict] = {}
    notes: dict[str, set] = {"skipped_releases": set(), "skipped_folders": set(), "bad_ids": set(), "l0": set()}
    for release, info in sorted(raw.items()):
        if not release.startswith("gemma-scope"):
            continue
        rec = _repo(release, info)
        if rec is None:
            notes["skipped_releases"].add(re.sub(r"^gemma-scope-2-(270m|1b|4b|12b|27b)-", "gemma-scope-2-*-", release))
            continue
        model_hf = rec.pop("model_hf")
        repo = repos.setdefault(info["repo_id"], {**rec, "folders": {}})
        if repo.get("model_hf", model_hf) != model_hf or {k: repo[k] for k in rec} != rec:
            raise ValueError(f"{release}: repo {info['repo_id']} described two ways")
        repo["model_hf"] = model_hf
        base = re.sub(r"-it$", "", rec["model"])
        d_model, n_layers, n_heads, head_dim = MODEL_FACTS[base]
        model = {"model_hf": model_hf, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "head_dim": head_dim}
        layers = set()
        for item in info["saes"]:
            path, np_id = item["path"], item.get("neuronpedia")
            d = describe(info["repo_id"], repo, path, item.get("l0"), model)
            if d is None:
                notes["skipped_folders"].add(f"{info['repo_id']}/{path.split('/')[0]}/")
                continue
            if d["layer"] >= n_layers:
                raise ValueError(f"{release}: {path} is past {rec['model']}'s {n_layers} layers")
            if repo["folders"].get(path, d["l0"]) != d["l0"] and d["format"] == SaeFormat.GEMMA_SCOPE_2:
                raise ValueError(f"{release}: {path} listed with two L0s")
            repo["folders"][path] = d["l0"]
            layers.add(d["layer"])
            if item.get("l0") is not None and item["l0"] != d["l0"]:
                notes["l0"].add(f"{info['repo_id']}/{path} (listing says {item['l0']})")
            if not np_id:
                continue
            m = NP_ID.match(np_id)
            if not m or (m["model"], int(m["layer"]), m["site"], m["width"]) != (d["model"], d["layer"], d["site"], d["width"]) \
                    or (m["l0"] is not None and int(m["l0"]) != d["l0"]):
                notes["bad_ids"].add(f"{np_id} -> {info['repo_id']}/{path}")
                continue
            if np_id in saes and (saes[np_id]["repo_id"], saes[np_id]["folder"]) != (info["repo_id"], path):
                raise ValueError(f"{np_id} names two folders")
            saes[np_id] = {"id": np_id, **d, "neuronpedia_id": np_id}
        if release.endswith("-all") and layers != set(range(n_layers)):  # *-all: every layer, so n_layers is checked
            raise ValueError(f"{release}: layers {sorted(layers)} but {rec['model']} has {n_layers}")
    models = {}
    for repo in repos.values():
        d_model, n_layers, n_heads, head_dim = MODEL_FACTS[re.sub(r"-it$", "", repo["model"])]
        models[repo["model"]] = {"model_hf": repo.pop("model_hf"), "d_model": d_model, "n_layers": n_layers,
                                 "n_heads": n_heads, "head_dim": head_dim}
        repo["folders"] = {f: repo["folders"][f] for f in sorted(repo["folders"], key=natural)}
    return saes, repos, models, notes


def _header(version: str, what: str, notes: dict) -> str:
    lines = [
        f"{what}",
        f"Generated from sae-lens {version} sae_lens/pretrained_saes.yaml; do not edit. Regenerate with",
        "  python -m saejobs.engine.registry.regenerate --saelens-yaml .../sae_lens/pretrained_saes.yaml",
        "Read: gemma-scope-* (Gemma 2, params.npz) and gemma-scope-2-* (Gemma 3, params.safetensors) res/mlp/att",
        "JumpReLU SAEs. Skipped, not SAEs saejobs steers with:",
        *(f"  release {r}" for r in sorted(notes["skipped_releases"])),
        *(f"  folders {f}*" for f in sorted(notes["skipped_folders"])),
    ]
    if notes["bad_ids"]:
        lines += ["Skipped Neuronpedia ids whose layer/site/width/L0 contradict their folder in the listing:",
                  *(f"  {b}" for b in sorted(notes["bad_ids"]))]
    if notes["l0"]:
        lines += ["L0 taken from the folder name where the listing's l0 field differs:",
                  *(f"  {b}" for b in sorted(notes["l0"]))]
    return "".join(f"# {line}\n" for line in lines)


def _dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=200, default_flow_style=False)


def regenerate(listing: Path, out: Path, version: str | None = None) -> dict[str, int]:
    raw = yaml.safe_load(Path(listing).read_text(encoding="utf-8"))
    saes, repos, models, notes = collect(raw)
    version = version or saelens_version(Path(listing))
    saes = dict(sorted(saes.items(), key=lambda kv: (model_order(kv[1]["model"]), SITES.index(kv[1]["site"]),
                                                      kv[1]["layer"], kv[1]["d_sae"], natural(kv[0]))))
    files = {
        "saes.yaml": ("Every Gemma Scope SAE Neuronpedia serves, by Neuronpedia id (SaeEntry fields).", saes),
        "folders.yaml": ("Every published folder per Hub repo (folder: L0), for explicit owner/repo/folder paths.",
                         dict(sorted(repos.items(), key=lambda kv: (model_order(kv[1]["model"]), kv[0])))),
        "models.yaml": ("Model shapes by Neuronpedia model id (attention SAEs read n_heads * head_dim).",
                        dict(sorted(models.items(), key=lambda kv: model_order(kv[0])))),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (what, data) in files.items():
        (out / name).write_text(_header(version, what, notes) + _dump(data), encoding="utf-8")
    return {"saes": len(saes), "folders": sum(len(r["folders"]) for r in repos.values()), "models": len(models),
            "skipped_ids": len(notes["bad_ids"])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m saejobs.engine.registry.regenerate", description=__doc__.split("\n\n")[0])
    p.add_argument("--saelens-yaml", type=Path, required=True, help="sae_lens/pretrained_saes.yaml from the sae-lens wheel")
    p.add_argument("--out", type=Path, default=DATA, help=f"folder to write (default: {DATA})")
    p.add_argument("--saelens-version", help="version for the header (default: read next to the YAML)")
    a = p.parse_args(argv)
    if not a.saelens_yaml.is_file():
        p.error(f"{a.saelens_yaml}: no such file")
    try:
        print(regenerate(a.saelens_yaml, a.out, a.saelens_version))
    except ValueError as e:
        sys.exit(f"regenerate: {e}")


if __name__ == "__main__":
    main()
