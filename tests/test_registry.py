"""The registry: Neuronpedia ids and explicit paths, from data generated off SAELens' listing."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from saejobs.engine import registry
from saejobs.engine.errors import FormatError, NotFoundError, UsageError
from tests.dbfixtures import home  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SAELENS = "6.54.12"  # the version the committed data was generated from (its header says so)

# Canonical 16k residual folders of gemma-2-2b exactly as SAELens 6.54.12 sae_lens/pretrained_saes.yaml
# lists them (release gemma-scope-2b-pt-res-canonical, ids layer_L/width_16k/canonical, `path:`);
# hard-coded because the listing is not there at test time. Only layer 20's is average_l0_71.
CANONICAL_2B_RES_16K = {0: "average_l0_105", 2: "average_l0_141", 12: "average_l0_82", 20: "average_l0_71",
                        25: "average_l0_116"}
SHOW_KEYS = {"id", "repo_id", "folder", "hook_name", "layer", "d_model", "d_sae", "l0", "format"}


@pytest.mark.parametrize("layer", sorted(CANONICAL_2B_RES_16K))
def test_canonical_gemma_2_2b_res_16k(layer):
    e = registry.get(f"gemma-2-2b/{layer}-gemmascope-res-16k")
    assert (e.repo_id, e.folder) == ("google/gemma-scope-2b-pt-res", f"layer_{layer}/width_16k/{CANONICAL_2B_RES_16K[layer]}")
    assert (e.hook_name, e.layer, e.d_model, e.d_sae, e.format) == (f"blocks.{layer}.hook_resid_post", layer, 2304, 16384, "gemma-scope")
    assert (e.model, e.model_hf, e.files, e.architecture, e.width) == (
        "gemma-2-2b", "google/gemma-2-2b", ("params.npz",), "jumprelu", "16k")
    assert e.l0 == int(CANONICAL_2B_RES_16K[layer].rsplit("_", 1)[1]) and e.neuronpedia_id == e.id


def test_mlp_and_attention_sites():
    att = registry.get("gemma-2-2b/12-gemmascope-att-16k")
    # hook_z is n_heads * head_dim = 8 * 256 wide, not the 2304 hidden size (SAELens' gemma_2 loader agrees).
    assert (att.hook_name, att.d_model, att.repo_id, att.site) == ("blocks.12.attn.hook_z", 2048, "google/gemma-scope-2b-pt-att", "att")
    assert registry.get("gemma-2-9b/20-gemmascope-att-16k").d_model == 4096
    mlp = registry.get("gemma-2-2b/12-gemmascope-mlp-16k")
    assert (mlp.hook_name, mlp.d_model, mlp.repo_id) == ("blocks.12.hook_mlp_out", 2304, "google/gemma-scope-2b-pt-mlp")


def test_gemma_scope_2():
    g3 = registry.get("gemma-3-270m/12-gemmascope-2-res-16k")
    assert (g3.model, g3.model_hf, g3.repo_id, g3.folder, g3.format, g3.d_model, g3.d_sae, g3.l0, g3.hook_name) == (
        "gemma-3-270m", "google/gemma-3-270m", "google/gemma-scope-2-270m-pt", "resid_post/layer_12_width_16k_l0_medium",
        "gemma-scope-2", 640, 16384, 60, "blocks.12.hook_resid_post")
    assert g3.files == ("params.safetensors", "config.json")
    it = registry.get("gemma-3-270m-it/12-gemmascope-2-res-16k")
    assert (it.model_hf, it.repo_id) == ("google/gemma-3-270m-it", "google/gemma-scope-2-270m-it")
    assert registry.get("gemma-3-1b/13-gemmascope-2-res-16k").model_hf == "google/gemma-3-1b-pt"
    att = registry.get("google/gemma-scope-2-270m-pt/attn_out/layer_12_width_16k_l0_small")
    assert (att.hook_name, att.d_model, att.l0, att.neuronpedia_id) == ("blocks.12.attn.hook_z", 4 * 256, 20, None)


def test_entries_filter_and_order():
    assert {e.model for e in registry.entries()} >= {"gemma-2-2b", "gemma-2-9b", "gemma-2-9b-it", "gemma-3-270m", "gemma-3-27b-it"}
    res = registry.entries(model="gemma-2-2b", site="res")
    assert res and {(e.model, e.site) for e in res} == {("gemma-2-2b", "res")}
    assert [(e.layer, e.d_sae) for e in res] == sorted((e.layer, e.d_sae) for e in res)
    assert registry.entries(model="google/gemma-2-2b", site="res") == res  # a Hub model id works too
    assert registry.entries(model="gemma-3-27b") == []  # known model, no Neuronpedia SAEs
    with pytest.raises(NotFoundError, match="did you mean: gemma-2-2b"):
        registry.entries(model="gemma-2-2bb")


def test_listing_mistakes_are_not_copied():
    # The listing's gemma-scope-9b-it-res says model gemma-2-9b; its SAEs were trained on gemma-2-9b-it.
    it = registry.get("gemma-2-9b-it/20-gemmascope-res-16k")
    assert (it.model, it.model_hf, it.repo_id) == ("gemma-2-9b-it", "google/gemma-2-9b-it", "google/gemma-scope-9b-it-res")
    assert registry.get(f"{it.repo_id}/{it.folder}").model == "gemma-2-9b-it"
    # Two 9b ids sit on folders of another layer/width there; they are left out, not mapped wrongly.
    for bad in ("gemma-2-9b/20-gemmascope-res-131k__l0-10", "gemma-2-9b/20-gemmascope-res-131k__l0-12"):
        with pytest.raises(NotFoundError):
            registry.get(bad)
    # The folder name's L0 wins over the listing's l0 field (78 there).
    assert registry.get("gemma-2-9b/20-gemmascope-res-524k").l0 == 48


def test_explicit_paths():
    e = registry.get("  google/gemma-scope-2b-pt-res/layer_20/width_65k/average_l0_61/ ")
    assert (e.id, e.model, e.d_sae, e.l0, e.hook_name, e.neuronpedia_id) == (
        "google/gemma-scope-2b-pt-res/layer_20/width_65k/average_l0_61", "gemma-2-2b", 65536, 61,
        "blocks.20.hook_resid_post", None)
    same = registry.get("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    assert same.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    assert same.id == "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"
    # Neuronpedia serves this folder as X and X__l0-114: the canonical one is named.
    assert registry.get("google/gemma-scope-2b-pt-res/layer_5/width_1m/average_l0_114").neuronpedia_id == \
        "gemma-2-2b/5-gemmascope-res-1m"
    g3 = registry.get("google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_small")
    assert (g3.format, g3.layer, g3.l0, g3.d_model, g3.neuronpedia_id) == ("gemma-scope-2", 12, 20, 640, None)


def test_folders_and_model_info():
    assert registry.folders("google/gemma-scope-2b-pt-res", layer=20) == [
        f"layer_20/width_{w}/average_l0_{n}" for w, ns in (("16k", (22, 38, 71, 139, 294)), ("65k", (20, 34, 61, 114, 221)))
        for n in ns]
    assert registry.folders("google/gemma-scope-2-270m-pt", layer=12, width="16k", site="att") == [
        *(f"attn_out/layer_12_width_16k_l0_{s}" for s in ("big", "medium", "small")),
        *(f"attn_out_all/layer_12_width_16k_l0_{s}" for s in ("big", "small"))]
    with pytest.raises(NotFoundError, match="did you mean: google/gemma-scope-2b-pt-res"):
        registry.folders("google/gemma-scope-2b-pt-re")
    facts = {"gemma-2-2b": (2304, 26, 8, 256), "gemma-2-9b": (3584, 42, 16, 256), "gemma-2-27b": (4608, 46, 32, 128),
             "gemma-3-270m": (640, 18, 4, 256), "gemma-3-1b": (1152, 26, 4, 256), "gemma-3-4b": (2560, 34, 8, 256),
             "gemma-3-12b": (3840, 48, 16, 256), "gemma-3-27b": (5376, 62, 32, 128)}
    for m, f in facts.items():
        i = registry.model_info(m)
        assert (i["d_model"], i["n_layers"], i["n_heads"], i["head_dim"]) == f
    assert registry.model_info("google/gemma-3-270m-it")["id"] == "gemma-3-270m-it"
    assert registry.model_info("google/gemma-2-2b")["id"] == "gemma-2-2b"
    with pytest.raises(NotFoundError):
        registry.model_info("gemma-4-1b")


def test_unknown_ids_suggest_the_nearest():
    with pytest.raises(NotFoundError) as e:
        registry.get("gemma-2-2b/20-gemmascope-res-16")
    msg = str(e.value)
    assert msg.startswith("unknown SAE 'gemma-2-2b/20-gemmascope-res-16'; did you mean: gemma-2-2b/20-gemmascope-res-16k")
    assert e.value.exit_code == 2 and "\n" not in msg
    with pytest.raises(NotFoundError, match="average_l0_61"):
        registry.get("google/gemma-scope-2b-pt-res/layer_20/width_65k/average_l0_60")
    with pytest.raises(NotFoundError, match="saejobs saes list"):
        registry.get("zzzz")


@pytest.mark.parametrize("bad", ["../etc/passwd", "google/gemma-scope-2b-pt-res/../../x", "a\\b", "/etc/passwd",
                                 "~/x", "C:/x", "google/gemma-scope-2b-pt-res/./layer_20"])
def test_path_escapes_are_refused(bad):
    with pytest.raises(UsageError, match="refused") as e:
        registry.get(bad)
    assert e.value.exit_code == 2


def _invoke(args):
    """``saejobs ...`` through the real entry group; the bare ``saes`` group if the CLI cannot be imported yet."""
    try:
        from saejobs.cli.main import cli
        return CliRunner().invoke(cli, args), True
    except ImportError:
        from saejobs.cli.saes_cmd import saes
        return CliRunner().invoke(saes, args[1:]), False


def test_cli_show_and_list():
    r, _ = _invoke(["saes", "show", "gemma-2-2b/20-gemmascope-res-16k", "--json"])
    d = json.loads(r.output)
    assert SHOW_KEYS <= set(d) and (d["folder"], d["l0"], d["d_model"]) == ("layer_20/width_16k/average_l0_71", 71, 2304)
    r, full = _invoke(["saes", "show", "nope/1-x"])
    if full:
        assert r.exit_code == 2 and r.output.count("\n") == 1 and "unknown SAE 'nope/1-x'" in r.output
    else:
        assert isinstance(r.exception, NotFoundError) and r.exception.exit_code == 2
    r, _ = _invoke(["saes", "list", "--model", "gemma-3-270m", "--site", "res", "--json"])
    assert {e["id"] for e in json.loads(r.output)} >= {"gemma-3-270m/12-gemmascope-2-res-16k"}


def test_custom_registry_entries(home):
    from tests.synthetic_saes import make

    sae = make(home)
    assert registry.get(sae.id) == sae.entry
    (home / "registry.d" / "bad.yaml").write_text("- {id: x}\n")
    with pytest.raises(FormatError, match="missing"):
        registry.get(sae.id)


def test_data_files_ship_as_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "registry/data/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["saejobs.engine"]
    for name in ("saes.yaml", "folders.yaml", "models.yaml"):
        head = (registry.DATA / name).read_text().splitlines()[:3]
        assert any("sae-lens" in line and "pretrained_saes.yaml" in line for line in head)
        assert any("python -m saejobs.engine.registry.regenerate" in line for line in head)


@pytest.fixture(scope="module")
def saelens_listing() -> Path:
    """SAELens' pretrained_saes.yaml (with its version file) from the sae-lens wheel on PyPI."""
    from tests.pypi import wheel_files

    return wheel_files("sae-lens", SAELENS, ("sae_lens/pretrained_saes.yaml", "sae_lens/__init__.py")) \
        / "sae_lens" / "pretrained_saes.yaml"


def test_regenerate_reproduces_the_committed_data(tmp_path, saelens_listing):
    from saejobs.engine.registry.regenerate import main

    main(["--saelens-yaml", str(saelens_listing), "--out", str(tmp_path)])
    for name in ("saes.yaml", "folders.yaml", "models.yaml"):
        assert (tmp_path / name).read_text() == (registry.DATA / name).read_text(), name
