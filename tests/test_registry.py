"""The registry: Neuronpedia ids and explicit paths, from data generated off SAELens' listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import registry
from engine.errors import NotFoundError, UsageError
from tests.dbfixtures import home  # noqa: F401

# Canonical 16k residual folders of gemma-2-2b as SAELens 6.54 pretrained_saes.yaml lists them
# (release gemma-scope-2b-pt-res-canonical). Only layer 20's is average_l0_71.
CANONICAL_2B_RES_16K = {0: "average_l0_105", 2: "average_l0_141", 12: "average_l0_82", 20: "average_l0_71",
                        25: "average_l0_116"}


@pytest.mark.parametrize("layer", sorted(CANONICAL_2B_RES_16K))
def test_canonical_gemma_2_2b_res_16k(layer):
    e = registry.get(f"gemma-2-2b/{layer}-gemmascope-res-16k")
    assert (e.repo_id, e.folder) == ("google/gemma-scope-2b-pt-res", f"layer_{layer}/width_16k/{CANONICAL_2B_RES_16K[layer]}")
    assert (e.hook_name, e.layer, e.d_model, e.d_sae, e.format) == (f"blocks.{layer}.hook_resid_post", layer, 2304, 16384, "gemma-scope")
    assert e.l0 == int(CANONICAL_2B_RES_16K[layer].rsplit("_", 1)[1])


def test_sites_and_gemma_scope_2():
    att = registry.get("gemma-2-2b/12-gemmascope-att-16k")
    assert (att.hook_name, att.d_model, att.repo_id) == ("blocks.12.attn.hook_z", 2048, "google/gemma-scope-2b-pt-att")
    mlp = registry.get("gemma-2-2b/12-gemmascope-mlp-16k")
    assert (mlp.hook_name, mlp.d_model) == ("blocks.12.hook_mlp_out", 2304)
    g3 = registry.get("gemma-3-270m/12-gemmascope-2-res-16k")
    assert (g3.repo_id, g3.folder, g3.format, g3.d_model, g3.l0) == (
        "google/gemma-scope-2-270m-pt", "resid_post/layer_12_width_16k_l0_medium", "gemma-scope-2", 640, 60)
    assert g3.files == ("params.safetensors", "config.json")
    assert {e.model for e in registry.entries()} >= {"gemma-2-2b", "gemma-2-9b", "gemma-3-270m", "gemma-3-27b-it"}


def test_explicit_path():
    e = registry.get("google/gemma-scope-2b-pt-res/layer_20/width_65k/average_l0_61/")
    assert (e.id, e.d_sae, e.l0, e.neuronpedia_id) == (
        "google/gemma-scope-2b-pt-res/layer_20/width_65k/average_l0_61", 65536, 61, None)
    same = registry.get("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    assert same.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"


def test_unknown_ids_suggest_the_nearest():
    with pytest.raises(NotFoundError) as e:
        registry.get("gemma-2-2b/20-gemmascope-res-16")
    assert "did you mean: gemma-2-2b/20-gemmascope-res-16k" in str(e.value) and e.value.exit_code == 2
    with pytest.raises(NotFoundError, match="average_l0_61"):
        registry.get("google/gemma-scope-2b-pt-res/layer_20/width_65k/average_l0_60")


@pytest.mark.parametrize("bad", ["../etc/passwd", "google/gemma-scope-2b-pt-res/../../x", "a\\b"])
def test_path_escapes_are_refused(bad):
    with pytest.raises(UsageError, match="refused"):
        registry.get(bad)


def test_cli_show_and_list():
    from cli.main import cli

    r = CliRunner().invoke(cli, ["saes", "show", "gemma-2-2b/20-gemmascope-res-16k", "--json"])
    d = json.loads(r.output)
    assert {"id", "repo_id", "folder", "hook_name", "layer", "d_model", "d_sae", "l0", "format"} <= set(d)
    r = CliRunner().invoke(cli, ["saes", "show", "nope/1-x"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "unknown SAE 'nope/1-x'" in r.output
    r = CliRunner().invoke(cli, ["saes", "list", "--model", "gemma-3-270m", "--site", "res", "--json"])
    assert {e["id"] for e in json.loads(r.output)} >= {"gemma-3-270m/12-gemmascope-2-res-16k"}


def test_custom_registry_entries(home):
    from tests.synthetic_saes import make

    sae = make(home)
    assert registry.get(sae.id) == sae.entry
    (home / "registry.d" / "bad.yaml").write_text("- {id: x}\n")
    with pytest.raises(Exception, match="missing"):
        registry.get(sae.id)


def test_regenerate_reproduces_the_committed_data(tmp_path):
    listing = Path("/tmp/pkgs/saelens/sae_lens/pretrained_saes.yaml")
    if not listing.is_file():
        pytest.skip("SAELens' pretrained_saes.yaml not unpacked here (see engine/registry/regenerate.py)")
    from engine.registry.regenerate import regenerate

    regenerate(listing, tmp_path)
    for name in ("saes.yaml", "folders.yaml", "models.yaml"):
        assert (tmp_path / name).read_text() == (registry.DATA / name).read_text()
