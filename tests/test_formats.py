"""Both Gemma Scope layouts load to the JumpReLU formula; every kind of bad file is refused clearly."""

import os
import zipfile

import numpy as np
import pytest
import torch

from saejobs.engine.errors import FormatError, IntegrityError
from saejobs.engine.sae import CONVERTED_FILE, load_sae
from saejobs.engine.synthetic import gemma_scope_2_config, random_params, write_sae
from tests.saes import entry

FORMATS = ["gemma-scope", "gemma-scope-2"]


def reference(params, x):
    """The JumpReLU formula in numpy, written from the Gemma Scope definition."""
    pre = x @ params["W_enc"] + params["b_enc"]
    acts = np.maximum(pre, 0) * (pre > params["threshold"])
    return acts, acts @ params["W_dec"] + params["b_dec"]


def write(tmp_path, fmt, params=None, e=None):
    e = e or entry(fmt)
    params = params if params is not None else random_params(e.d_model, e.d_sae, seed=1)
    write_sae(tmp_path, fmt, params, gemma_scope_2_config(e) if fmt == "gemma-scope-2" else None)
    return e, params


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_decode_match_formula(tmp_path, fmt):
    e, params = write(tmp_path, fmt)
    sae = load_sae(e, tmp_path)
    x = np.random.default_rng(2).standard_normal((5, e.d_model), dtype=np.float32) * 3
    acts, recon = reference(params, x)
    got = sae.encode(torch.from_numpy(x))
    assert (got > 0).any() and (got == 0).any(), "test input must exercise both sides of the threshold"
    np.testing.assert_allclose(got.numpy(), acts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.decode(got).numpy(), recon, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sae.feature_vector(7).numpy(), params["W_dec"][7])


@pytest.mark.parametrize("fmt", FORMATS)
def test_converted_copy_is_used_then_invalidated(tmp_path, fmt, monkeypatch):
    e, params = write(tmp_path, fmt)
    load_sae(e, tmp_path)
    assert (tmp_path / CONVERTED_FILE).exists()
    with monkeypatch.context() as m:
        m.setattr("saejobs.engine.sae.read_params", lambda *a: pytest.fail("original files parsed again"))
        sae = load_sae(e, tmp_path)
    np.testing.assert_array_equal(sae.W_enc.numpy(), params["W_enc"])
    changed = dict(params, b_dec=params["b_dec"] + 1)
    write_sae(tmp_path, fmt, changed, gemma_scope_2_config(e) if fmt == "gemma-scope-2" else None)
    st = os.stat(tmp_path / ("params.npz" if fmt == "gemma-scope" else "params.safetensors"))
    os.utime(tmp_path / ("params.npz" if fmt == "gemma-scope" else "params.safetensors"), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(load_sae(e, tmp_path).b_dec.numpy(), changed["b_dec"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_transposed_weights_are_named(tmp_path, fmt):
    e = entry(fmt)
    params = random_params(e.d_model, e.d_sae)
    params["W_enc"] = np.ascontiguousarray(params["W_enc"].T)
    write(tmp_path, fmt, params, e)
    with pytest.raises(FormatError, match=r"W_enc has shape \(64, 32\), expected \(32, 64\) \(transposed\?\)"):
        load_sae(e, tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(tmp_path, fmt):
    write(tmp_path, fmt)
    path = tmp_path / ("params.npz" if fmt == "gemma-scope" else "params.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FormatError, match="truncated"):
        load_sae(entry(fmt), tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_finite_values(tmp_path, fmt):
    e = entry(fmt)
    params = random_params(e.d_model, e.d_sae)
    params["threshold"][3] = np.nan
    params["W_dec"][1, 2] = np.inf
    write(tmp_path, fmt, params, e)
    with pytest.raises(IntegrityError, match="non-finite"):
        load_sae(e, tmp_path)
    assert not (tmp_path / CONVERTED_FILE).exists()


def test_pickled_npz_is_refused_unopened(tmp_path):
    e = entry()
    params = random_params(e.d_model, e.d_sae)
    obj = np.empty(1, dtype=object)
    obj[0] = {"payload": 1}
    np.savez(tmp_path / "params.npz", **params, extra=obj)
    with pytest.raises(FormatError, match="pickled object arrays; refused"):
        load_sae(e, tmp_path)


def test_missing_and_extra_arrays(tmp_path):
    e = entry()
    params = random_params(e.d_model, e.d_sae)
    np.savez(tmp_path / "params.npz", **{k: v for k, v in params.items() if k != "threshold"})
    with pytest.raises(FormatError, match="missing arrays threshold"):
        load_sae(e, tmp_path)
    np.savez(tmp_path / "params.npz", **params, W_skip=params["b_dec"])
    with pytest.raises(FormatError, match="unexpected arrays W_skip"):
        load_sae(e, tmp_path)


def test_wrong_dtype(tmp_path):
    e = entry()
    params = {k: v.astype(np.float64) for k, v in random_params(e.d_model, e.d_sae).items()}
    write(tmp_path, "gemma-scope", params, e)
    with pytest.raises(FormatError, match="dtype float64, expected float32"):
        load_sae(e, tmp_path)


def test_not_a_zip(tmp_path):
    (tmp_path / "params.npz").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(FormatError, match="params.npz"):
        load_sae(entry(), tmp_path)


def test_npz_is_a_real_zip_of_npy(tmp_path):
    """The synthetic writer produces the layout numpy and Google use: a zip of .npy members."""
    write(tmp_path, "gemma-scope")
    assert sorted(zipfile.ZipFile(tmp_path / "params.npz").namelist()) == sorted(
        f"{k}.npy" for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    )


def test_files_written_with_the_published_key_names_load(tmp_path):
    """The published layouts written by hand, with the key names as Google ships them (docs/reference.md:
    Gemma Scope ``params.npz`` with W_enc, W_dec, ...; Gemma Scope 2 ``params.safetensors`` with
    lowercase w_enc, w_dec, ...), not through saejobs' own key table."""
    from safetensors.numpy import save_file

    p = random_params(32, 64, seed=3)
    np.savez(tmp_path / "params.npz", W_enc=p["W_enc"], W_dec=p["W_dec"], b_enc=p["b_enc"], b_dec=p["b_dec"],
             threshold=p["threshold"])
    gs2 = tmp_path / "gs2"
    gs2.mkdir()
    save_file({"w_enc": p["W_enc"], "w_dec": p["W_dec"], "b_enc": p["b_enc"], "b_dec": p["b_dec"],
               "threshold": p["threshold"]}, str(gs2 / "params.safetensors"))
    e2 = entry("gemma-scope-2")
    (gs2 / "config.json").write_text('{"architecture": "jump_relu", "model_name": "gemma-3-270m", '
                                     f'"hf_hook_point_in": "model.layers.{e2.layer}.output"}}')
    for e, folder in ((entry("gemma-scope"), tmp_path), (e2, gs2)):
        sae = load_sae(e, folder)
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            np.testing.assert_array_equal(getattr(sae, name).numpy(), p[name])
