"""Each host's copy of an SAE holds the bytes recorded now: a copy is reused only while it matches the SAE's
current digest and its files are the ones checked; fetched bytes are checked before they are renamed into
place. Two "hosts" are two ``SAEJOBS_HOST``/``SAEJOBS_HOME`` pairs on one database, each a real CLI process
running its job ``--local``; expected digests come from hashlib on the files themselves."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np

from tests.dbfixtures import home  # noqa: F401
from tests.faults.sweeps import sqlite_db  # noqa: F401
from tests.synthetic_saes import make
from tests.test_queue import one_clean_line, saejobs, submitted


def host_b(home, tmp_path):
    """Host B's own home (SAE cache), knowing the test SAE's id as host A does (its registry.d)."""
    b = tmp_path / "home-b"
    shutil.copytree(home / "registry.d", b / "registry.d")
    return b


def on(host: str, home_dir, *args: str):
    return saejobs(*args, env={"SAEJOBS_HOST": host, "SAEJOBS_HOME": str(home_dir)})


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_same_shape(npz) -> None:
    """New values, same keys, shapes and file size: a re-released SAE no size check can tell apart."""
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["W_dec"] = arrays["W_dec"] + np.float32(0.5)
    size = npz.stat().st_size
    np.savez(npz, **arrays)
    assert npz.stat().st_size == size


def test_a_copy_follows_a_redownload_and_a_changed_copy_is_hashed_again(home, sqlite_db, tmp_path):  # noqa: F811
    sae = make(home)
    params = sae.mirror_folder / "params.npz"
    home_b = host_b(home, tmp_path)
    submitted(on("host-a", home, "download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    first = submitted(on("host-b", home_b, "verify", sae.id, "--structural-only", "--local", "--json"))
    copy_b = home_b / "saes" / sae.entry.repo_id / sae.entry.folder / "params.npz"
    assert first["result"]["verdict"] != "FAIL" and sha(copy_b) == sha(params)
    # the SAE is downloaded again, with other bytes of the same shape: host B must not go on with the old ones
    rewrite_same_shape(params)
    shutil.rmtree(home / "saes")
    submitted(on("host-a", home, "download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    again = submitted(on("host-b", home_b, "verify", sae.id, "--structural-only", "--local", "--json"))
    assert again["result"]["verdict"] != "FAIL", again["result"]["reasons"]
    assert sha(copy_b) == sha(params)  # fetched anew
    # host B's copy changed on its disk (same size): hashed again, found wrong, fetched again
    data = bytearray(copy_b.read_bytes())
    data[-100] ^= 0xFF
    copy_b.write_bytes(bytes(data))
    third = submitted(on("host-b", home_b, "verify", sae.id, "--structural-only", "--local", "--json"))
    assert third["result"]["verdict"] != "FAIL" and sha(copy_b) == sha(params)


def test_a_byte_changed_on_the_mirror_is_refused_before_it_lands(home, sqlite_db, tmp_path):  # noqa: F811
    """Host B fetches from the mirror after a byte changed there: exit 3, and no file with those bytes in
    B's cache (checked before the rename), nothing recorded for B."""
    sae = make(home)
    params = sae.mirror_folder / "params.npz"
    home_b = host_b(home, tmp_path)
    submitted(on("host-a", home, "download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    recorded = sha(params)
    data = bytearray(params.read_bytes())
    data[-100] ^= 0xFF
    params.write_bytes(bytes(data))
    res = on("host-b", home_b, "verify", sae.id, "--structural-only", "--local", "--json")
    line = one_clean_line(res, 3)
    assert "sha256" in line
    folder = home_b / "saes" / sae.entry.repo_id / sae.entry.folder
    assert not (folder / "params.npz").exists() and not (folder / "params.npz.part").exists()
    from saejobs.db import saes

    assert [c.host for c in saes.copies(sae.id)] == ["host-a"] and saes.get(sae.id).files["params.npz"]["sha256"] == recorded
    assert os.environ.get("SAEJOBS_DB") == sqlite_db


def test_a_multi_file_saes_copy_digest_is_its_parameters_files(home, sqlite_db, tmp_path, tiny_gemma2_dir):  # noqa: F811
    """A Gemma Scope 2 SAE is two files (params.safetensors, config.json): each host's copy records the
    parameters file's sha256 (hashlib on the mirror's file), not config.json's nor one over both, and the SAE's
    recorded files are both, each with its own digest. Then a byte changed in the mirror's parameters file:
    host C's sweep is refused (exit 3) before any generation, and nothing lands in its cache."""
    sae = make(home, fmt="gemma-scope-2", d_sae=256)
    params, config = sae.mirror_folder / "params.safetensors", sae.mirror_folder / "config.json"
    assert sha(params) != sha(config)
    home_b = host_b(home, tmp_path)
    submitted(on("host-a", home, "download", sae.id, "--source", str(sae.mirror), "--local", "--json"))
    assert submitted(on("host-b", home_b, "verify", sae.id, "--structural-only", "--local", "--json"))["state"] == "succeeded"
    from saejobs.db import saes

    files = saes.get(sae.id).files
    assert set(files) == {"params.safetensors", "config.json"}
    assert files["params.safetensors"]["sha256"] == sha(params) and files["config.json"]["sha256"] == sha(config)
    got = {c.host: c.sha256 for c in saes.copies(sae.id)}
    assert got == {"host-a": sha(params), "host-b": sha(params)}, got
    copy_b = home_b / "saes" / sae.entry.repo_id / sae.entry.folder
    assert sha(copy_b / "params.safetensors") == sha(params) and sha(copy_b / "config.json") == sha(config)

    data = bytearray(params.read_bytes())
    data[-100] ^= 0xFF
    params.write_bytes(bytes(data))
    home_c = tmp_path / "home-c"
    shutil.copytree(home / "registry.d", home_c / "registry.d")
    res = on("host-c", home_c, "sweep", "--sae", sae.id, "--feature", "1", "--strength", "0,4", "--prompt", "Hi",
             "--n-tokens", "2", "--model", str(tiny_gemma2_dir), "--local", "--json")
    assert "sha256" in one_clean_line(res, 3)
    from saejobs.db import results
    from saejobs.db.models import Job
    from saejobs.db.session import session
    from sqlalchemy import select

    with session() as s:
        (job,) = s.scalars(select(Job).where(Job.kind == "sweep")).all()
        assert job.state == "failed"
    assert results.generation_rows(job.id) == []
    folder_c = home_c / "saes" / sae.entry.repo_id / sae.entry.folder
    assert not (folder_c / "params.safetensors").exists() and not (folder_c / "params.safetensors.part").exists()
    assert {c.host for c in saes.copies(sae.id)} == {"host-a", "host-b"}
