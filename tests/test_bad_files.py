"""A broken SAE file, through the CLI: one line naming the problem, a non-zero exit, no traceback."""

from __future__ import annotations

import numpy as np
import pytest

from saejobs.engine.synthetic import random_params, write_sae
from tests.dbfixtures import home  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import saejobs


def corrupt(folder, how, d_model=64):
    params = random_params(d_model, 256)
    if how == "transposed":
        params["W_dec"] = np.ascontiguousarray(params["W_dec"].T)
    elif how == "nan":
        params["b_enc"][5] = np.nan
    if how == "pickle":
        obj = np.empty(1, dtype=object)
        obj[0] = {"x": 1}
        np.savez(folder / "params.npz", **params, extra=obj)
        return
    write_sae(folder, "gemma-scope", params)
    if how == "truncated":
        data = (folder / "params.npz").read_bytes()
        (folder / "params.npz").write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("how, says", [
    ("transposed", "W_dec has shape (64, 256), expected (256, 64) (transposed?)"),
    ("truncated", "truncated"),
    ("nan", "non-finite"),
    ("pickle", "pickled object arrays; refused"),
])
def test_verify_names_the_problem(home, how, says):
    sae = make(home, d_model=64, d_sae=256)
    corrupt(sae.mirror_folder, how)
    res = saejobs("verify", sae.id, "--path", str(sae.mirror_folder), "--local", "--quiet")
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in res.stderr, res.stderr


def test_sweep_on_a_broken_sae_fails_with_the_reason(home):
    """Broken on the mirror, so the download records the broken bytes' digest (a local copy changed after its
    download is fetched again instead: tests/test_copies.py)."""
    sae = make(home, d_model=640, d_sae=256)  # gemma-3-270m's width: the width check at submit passes, the load refuses
    corrupt(sae.mirror_folder, "transposed", d_model=640)
    assert saejobs("download", sae.id, "--source", str(sae.mirror), "--local", "--quiet").returncode == 0
    res = saejobs("sweep", "--sae", sae.id, "--feature", "1", "--strength", "1", "--prompt", "x", "--model",
                  "gemma-3-270m-gguf", "--local", "--quiet")
    assert res.returncode == 3  # FormatError's code, from the failed job's row
    assert "transposed?" in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
