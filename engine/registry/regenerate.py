"""Regenerate the registry's data files from SAELens' published listing.

    pip download sae-lens --no-deps -d /tmp/sl && unzip -o /tmp/sl/sae_lens-*.whl -d /tmp/sl
    python -m engine.registry.regenerate --saelens-yaml /tmp/sl/sae_lens/pretrained_saes.yaml

SAELens' ``pretrained_saes.yaml`` names, for each Gemma Scope release, the folder of every SAE and,
for those Neuronpedia serves, its Neuronpedia id. The canonical 16k residual SAEs have a different
L0 at each layer (only some are ``average_l0_71``), which is why the mapping is copied, not derived.
Only the YAML is read: saejobs has no run-time dependency on sae-lens.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

DATA = Path(__file__).parent / "data"
WIDTHS = {"16k": 2**14, "32k": 2**15, "65k": 2**16, "131k": 2**17, "262k": 2**18, "524k": 2**19, "1m": 2**20}
GS1 = re.compile(r"^layer_(?P<layer>\d+)/width_(?P<width>\w+)/average_l0_(?P<l0>\d+)$")
GS2 = re.compile(r"^(?P<site>resid_post|mlp_out|attn_out)(?P<all>_all)?/layer_(?P<layer>\d+)_width_(?P<width>\w+?)"
                 r"_l0_(?P<size>small|medium|big)(?:_seed_(?P<seed>\d+))?$")
GS2_SITES = {"resid_post": "res", "mlp_out": "mlp", "attn_out": "att"}
HOOKS = {"res": "blocks.{L}.hook_resid_post", "mlp": "blocks.{L}.hook_mlp_out", "att": "blocks.{L}.attn.hook_z"}

# Model facts (transformers configs of the google/* models): hidden size, layers, attention heads, head dim.
MODELS = {
    "gemma-2-2b": ("google/gemma-2-2b", 2304, 26, 8, 256),
    "gemma-2-9b": ("google/gemma-2-9b", 3584, 42, 16, 256),
    "gemma-2-9b-it": ("google/gemma-2-9b-it", 3584, 42, 16, 256),
    "gemma-2-27b": ("google/gemma-2-27b", 4608, 46, 32, 128),
    "gemma-3-270m": ("google/gemma-3-270m", 640, 18, 4, 256),
    "gemma-3-1b": ("google/gemma-3-1b-pt", 1152, 26, 4, 256),
    "gemma-3-4b": ("google/gemma-3-4b-pt", 2560, 34, 8, 256),
    "gemma-3-12b": ("google/gemma-3-12b-pt", 3840, 48, 16, 256),
    "gemma-3-27b": ("google/gemma-3-27b-pt", 5376, 62, 32, 128),
}


def neuronpedia_model(release: str, info: dict) -> str:
    """Neuronpedia's model id of a release: ``gemma-2-2b``, ``gemma-3-270m``, ``gemma-3-270m-it``."""
    if info.get("conversion_func") == "gemma_3":
        m = re.match(r"gemma-scope-2-(\w+)-(pt|it)-", release)
        return f"gemma-3-{m[1]}" + ("-it" if m[2] == "it" else "")
    return info["model"]


def model_facts(model: str) -> tuple:
    return MODELS[model.removesuffix("-it")] if model not in MODELS else MODELS[model]


def hf_model(model: str) -> str:
    base = model_facts(model)[0]
    if model.endswith("-it") and model not in MODELS:
        return base.removesuffix("-pt") + "-it"
    return base


def describe(repo_id: str, repo: dict, path: str, l0: int | None = None) -> dict | None:
    """Registry fields of one folder of a repo, or None for what saejobs does not steer with (embeddings).

    ``repo`` is the repo's record in folders.yaml: its Neuronpedia model, loader kind and (Gemma
    Scope) site. Used here and by the registry at run time for explicit repo/folder paths.
    """
    if repo["kind"] == "gemma_3":
        m = GS2.match(path)
        if not m:
            return None
        site, width, fmt, files = GS2_SITES[m["site"]], m["width"], "gemma-scope-2", ["params.safetensors", "config.json"]
    else:
        m = GS1.match(path)
        if not m:
            return None
        site, width, fmt, files, l0 = repo["site"], m["width"], "gemma-scope", ["params.npz"], int(m["l0"])
    if width not in WIDTHS:
        return None
    model = repo["model"]
    _, d_model, _, n_heads, head_dim = model_facts(model)
    layer = int(m["layer"])
    return {
        "model": model, "model_hf": hf_model(model), "repo_id": repo_id, "folder": path, "files": files,
        "format": fmt, "site": site, "hook_name": HOOKS[site].format(L=layer), "layer": layer,
        "d_model": n_heads * head_dim if site == "att" else d_model, "d_sae": WIDTHS[width], "l0": l0,
        "architecture": "jumprelu", "width": width,
    }


def regenerate(listing: Path, out: Path) -> dict[str, int]:
    raw = yaml.safe_load(listing.read_text())
    saes: dict[str, dict] = {}
    repos: dict[str, dict] = {}
    skipped: set[str] = set()
    for release, info in sorted(raw.items()):
        if not release.startswith("gemma-scope") or "transcoder" in release:
            continue
        kind = info.get("conversion_func")
        repo = repos.setdefault(info["repo_id"], {"model": neuronpedia_model(release, info), "kind": kind, "folders": {}})
        if kind != "gemma_3":
            repo["site"] = re.match(r"gemma-scope-\w+?-(?:pt|it)-(res|mlp|att)", release)[1]
        for item in info["saes"]:
            d = describe(info["repo_id"], repo, item["path"], item.get("l0"))
            if d is None:
                skipped.add(f"{info['repo_id']}/{item['path'].split('/')[0]}")
                continue
            repo["folders"][item["path"]] = d["l0"]
            if item.get("neuronpedia"):
                saes[item["neuronpedia"]] = {"id": item["neuronpedia"], **d, "neuronpedia_id": item["neuronpedia"]}
    out.mkdir(parents=True, exist_ok=True)
    header = (f"# Generated by `python -m engine.registry.regenerate` from SAELens' {listing.name}; do not edit.\n"
              "# Transcoders and Gemma Scope's embedding SAEs are left out (saejobs steers at residual, MLP and\n"
              f"# attention hooks). Skipped folders: {', '.join(sorted(skipped)) or 'none'}.\n")
    (out / "saes.yaml").write_text(header + yaml.safe_dump(dict(sorted(saes.items())), sort_keys=False))
    for r in repos.values():
        r["folders"] = dict(sorted(r["folders"].items()))
    (out / "folders.yaml").write_text(header + yaml.safe_dump(dict(sorted(repos.items())), sort_keys=False, width=200))
    (out / "models.yaml").write_text(header + yaml.safe_dump(
        {m: {"model_hf": hf, "d_model": d, "n_layers": n, "n_heads": h, "head_dim": hd}
         for m, (hf, d, n, h, hd) in MODELS.items()}, sort_keys=False))
    return {"saes": len(saes), "folders": sum(len(r["folders"]) for r in repos.values())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m engine.registry.regenerate", description=__doc__.split("\n\n")[0])
    p.add_argument("--saelens-yaml", type=Path, required=True, help="sae_lens/pretrained_saes.yaml")
    p.add_argument("--out", type=Path, default=DATA)
    a = p.parse_args(argv)
    print(regenerate(a.saelens_yaml, a.out))


if __name__ == "__main__":
    main()
