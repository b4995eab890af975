"""``saejobs download|verify|sweep``: put a job in the database, then on the queue (or run it here). The
generation options (``GENERATION_OPTIONS``) are defined here once; ``search`` shares them with ``sweep``.

Without ``--wait`` the command prints the job id and returns at once; ``--wait`` follows the job to
its end; ``--local`` runs the same task code in this process with no broker.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from pathlib import Path

import click

from saejobs.cli.complete import sae_ids
from saejobs.cli.follow import finish, follow, run_local
from saejobs.cli.output import json_option
from saejobs.engine.errors import UsageError
from saejobs.engine.job_requests import EVAL_WINDOW, MAX_EVAL_TOKENS, DownloadRequest, JobRequest, VerifyRequest
from saejobs.engine.presets import Preset
from saejobs.engine.request import DTYPES
from saejobs.engine.sampling import SamplingSemantics
from saejobs.engine.steering import SteerMethod


class Spelled(click.Choice):
    """Choices listed, and defaults printed, as they are stored (``SIMPLE_ADDITIVE``, ``bfloat16``); other
    spellings are mapped by ``canonical`` first (any case, interp-engine's method names, dtype aliases)."""

    def __init__(self, choices, canonical):
        super().__init__(list(choices))
        self.canonical = canonical

    def convert(self, value, param, ctx):
        try:
            value = self.canonical(value)
        except Exception:  # not a known spelling: the Choice refuses it, listing the stored names
            pass
        return super().convert(value, param, ctx)


DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16",
                 "f16": "float16", "half": "float16"}


def _dtype_name(value) -> str:
    text = str(value).strip().lower()
    return DTYPE_ALIASES.get(text, text)


def _method_name(value) -> str:
    from saejobs.engine.steering import steer_method

    return steer_method(value).value


DTYPE = Spelled(DTYPES, _dtype_name)  # every command's --dtype: float32, bfloat16, float16, or bf16, fp16, fp32
METHOD = Spelled([m.value for m in SteerMethod], _method_name)
DTYPE_HELP = "Model dtype (bf16, fp16, fp32 too)."


SUBMISSION_OPTIONS = [
    click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends."),
    click.option("--local", is_flag=True, help="Run in this process, no broker needed (implies --wait)."),
    click.option("--gpu", help="Run on GPU INDEX of any host, or HOST:INDEX (that host's GPU) only."),
    click.option("--timeout", type=click.FloatRange(1), help="Seconds an attempt may run before it is failed."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    json_option,
]


def submission_options(f):
    """The options every submitting command shares (``submission`` adds the submitting itself)."""
    for option in reversed(SUBMISSION_OPTIONS):
        f = option(f)
    return f


def submission(f):
    """A submitting command: ``f`` builds the job's typed request, this queues (or runs) it."""
    @submission_options
    @functools.wraps(f)
    def wrapper(*args, wait, local, gpu, timeout, quiet, as_json, shard_size=None, **kwargs):
        request, sae_id = f(*args, **kwargs)  # the command builds the job's typed request (its kind is the type's)
        enqueue(request, sae_id=sae_id, wait=wait, local=local, gpu=gpu, quiet=quiet, as_json=as_json,
                timeout_s=timeout, shard_size=shard_size)  # --shard-size: sweep's only; scheduling, not the request
    return wrapper


def enqueue(request: JobRequest, *, sae_id: str | None, wait: bool, local: bool, gpu: str | None,
            quiet: bool, as_json: bool, timeout_s: float | None = None, shard_size: int | None = None) -> None:
    job = submit_and_follow(request, sae_id=sae_id, wait=wait, local=local, gpu=gpu, quiet=quiet, as_json=as_json,
                            timeout_s=timeout_s, shard_size=shard_size)
    if job is not None:
        finish(job, as_json)


def submit_and_follow(request: JobRequest, *, sae_id: str | None, wait: bool, local: bool, gpu: str | None,
                      quiet: bool, as_json: bool, timeout_s: float | None = None, shard_size: int | None = None):
    """Submit the job; with ``local`` (run here) or ``wait`` follow it and return its final row; otherwise print
    its id (or row, ``as_json``) and return None."""
    from saejobs.db import jobs
    from saejobs.db.states import JobKind
    from saejobs.tasks.app import Target
    from saejobs.tasks.submit import queue_for, submit

    if local and gpu is not None:
        raise UsageError("--gpu picks a worker's queue; it cannot be combined with --local")
    target = Target.parse(gpu) if gpu is not None else None
    job = submit(request, sae_id=sae_id, gpu=target, local=local, shard_size=shard_size, timeout_s=timeout_s)
    if not local:
        say_if_untaken(queue_for(JobKind.of(request), target))
    if local:
        return run_local(job.id, quiet=quiet or as_json)
    if wait:
        if not as_json:
            click.echo(job.id, err=True)
        return follow(job.id, quiet=quiet or as_json)
    click.echo(json.dumps(jobs.as_dict(job), indent=2, default=str) if as_json else job.id)
    return None


def say_if_untaken(queue: str | None) -> None:
    """One line on stderr when no live worker consumes the queue a job was just sent to: it stays queued
    (the broker keeps it) until one starts, and a newcomer should not have to guess why."""
    from saejobs.db import workers
    from saejobs.tasks.app import broker_url
    from saejobs.tasks.submit import redact

    if queue is not None and queue not in workers.live_queues():
        click.echo(f"note: queued on {redact(broker_url())}, but no live worker takes queue '{queue}': start one "
                   f"with `saejobs up` (or `{_worker_for(queue)}`), or run the job here with --local", err=True)


def _worker_for(queue: str) -> str:
    """The worker command that consumes ``queue`` (tasks/app.py's names; worker/main.py's queues)."""
    from saejobs.tasks.app import DOWNLOAD_QUEUE, SHARED_QUEUE

    if queue == DOWNLOAD_QUEUE:
        return "saejobs worker --downloads"
    gpu, _, host = queue.removeprefix(f"{SHARED_QUEUE}.gpu").partition("@")
    if queue.startswith(f"{SHARED_QUEUE}.gpu") and gpu.isdigit():
        return f"saejobs worker --gpu {gpu}" + (f" on host {host}" if host else "")
    return "saejobs worker --cpu"


@click.command()
@click.argument("sae", shell_complete=sae_ids)
@click.option("--source", type=click.Path(file_okay=False, path_type=Path),
              help="A local mirror laid out like the Hub (REPO/FOLDER/FILE) instead of huggingface.co.")
@submission
def download(sae: str, source: Path | None):
    """Fetch an SAE's files (Neuronpedia id or repo/folder path) into the cache and record checksums."""
    from saejobs.engine import registry

    entry = registry.get(sae)
    return DownloadRequest(entry.id, source=str(source.resolve()) if source is not None else None), entry.id


@click.command()
@click.argument("sae", shell_complete=sae_ids)
@click.option("--path", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Verify this folder instead of the downloaded copy.")
@click.option("--structural-only", is_flag=True, help="Only the file checks; no model is loaded.")
@click.option("--model", "model_source", help="Model source for the functional checks (default: the SAE's model).")
@click.option("--dtype", default=VerifyRequest.dtype, show_default=True, type=DTYPE, help=DTYPE_HELP)
@click.option("--max-tokens", default=VerifyRequest.max_tokens, show_default=True,
              type=click.IntRange(EVAL_WINDOW, MAX_EVAL_TOKENS),
              help="Tokens of the bundled evaluation text to run (128-token windows).")
@submission
def verify(sae: str, path: Path | None, structural_only: bool, model_source: str | None, dtype: str, max_tokens: int):
    """Check an SAE: its files (checksums, keys, shapes, values, config) and, on its model, L0, FVU,
    cosine, delta loss and dead features on a bundled text, judged against the registry's L0."""
    from saejobs.engine import registry

    entry = registry.get(sae)
    return VerifyRequest(entry.id, path=str(path.resolve()) if path is not None else None,
                         structural_only=structural_only, model=model_source or None, dtype=dtype,
                         max_tokens=max_tokens), entry.id


MAX_RANGE_VALUES = 100_000  # a range longer than this is a typo (the grid limit refuses far fewer configurations)


def _values(value, parse):
    """Each part of each (repeated) option, ``parse`` (``int`` or ``float``) applied: ``a,b,c`` and the
    inclusive range ``LO:HI:STEP`` (``0:400:50`` is 0, 50, ..., 400; for integers the step may be left
    out: ``0:7``). Steps are added as decimals, so ``0:1:0.1`` gives 0.3, not 0.30000000000000004."""
    from decimal import Decimal, InvalidOperation

    integer = parse is int
    out = []
    for v in [value] if isinstance(value, str) else value:  # a single option's text, or a repeated one's tuple
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" not in part:
                try:
                    out.append(parse(part))
                except ValueError:
                    raise click.BadParameter(f"'{part}' is not {'an integer' if integer else 'a number'}") from None
                continue
            bits = part.split(":")
            if integer and len(bits) == 2:
                bits.append("1")
            try:
                lo, hi, step = (Decimal(b.strip()) for b in bits)
            except (ValueError, InvalidOperation):
                raise click.BadParameter(f"'{part}' is not a range LO:HI:STEP of numbers") from None
            if len(bits) != 3 or not all(d.is_finite() for d in (lo, hi, step)) or step <= 0 or lo > hi:
                raise click.BadParameter(f"'{part}' is not a range LO:HI:STEP with LO <= HI and STEP > 0")
            if integer and any(d != d.to_integral_value() for d in (lo, hi, step)):
                raise click.BadParameter(f"'{part}' is not a range of integers")
            n = int((hi - lo) / step) + 1
            if n > MAX_RANGE_VALUES:
                raise click.BadParameter(f"'{part}' holds {n} values; the limit is {MAX_RANGE_VALUES}")
            out += [parse(lo + i * step) for i in range(n)]
    return out


def _floats(ctx, param, value):
    return _values(value, float)


def _ints(ctx, param, value):
    return _values(value, int)


def _preset(ctx, param, value):
    """An eager option: the preset's values become the defaults of the options not given."""
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **Preset(value).values}
    return value


def _from(ctx, param, value):
    """An eager option: a Neuronpedia steer (request body, saved steer or presets) as named steers and the
    sweep's defaults (``engine/neuronpedia_import.py``)."""
    if value is None:
        return None
    from saejobs.engine import neuronpedia_import

    try:
        doc = json.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{value}: not a readable JSON file ({str(e).splitlines()[0]})") from None
    imported = neuronpedia_import.read(doc, Path(value).stem)
    neuronpedia_import.check(imported)
    ctx.default_map = {**(ctx.default_map or {}), **imported.defaults}
    ctx.meta["saejobs.imported"] = imported
    return value


@dataclass(frozen=True)
class FeatureArgs:
    """What ``--feature`` values said: indices of ``--sae``, interventions of any SAE, and indices whose SAE
    the value named (a Neuronpedia feature URL: (SAE id, index)) or must be looked up (``label:TEXT``)."""

    indices: list[int]
    terms: list
    urls: list[tuple[str, int]]
    labels: list[str]


def _features(ctx, param, value):
    """``--feature``: indices of ``--sae`` (lists, ranges), interventions ``SAE_ID:INDEX@STRENGTH`` (which
    together make one named steer, "command line"), Neuronpedia feature URLs (``URL`` or ``URL@STRENGTH``)
    and ``label:TEXT`` (resolved through cached explanations)."""
    from saejobs.engine import registry
    from saejobs.engine.interventions import parse_feature

    plain, terms, urls, labels = [], [], [], []
    try:
        for v in (v.strip() for v in value):
            if v.lower().startswith("label:"):
                if not v[6:].strip():
                    raise UsageError("label: needs text, e.g. --feature 'label:dogs'")
                labels.append(v[6:].strip())
            elif (url := registry.parse_url(v.split("@")[0])) is not None:
                entry, index = registry.from_url(v.split("@")[0])
                if index is None:
                    raise UsageError(f"{v.split('@')[0]} is an SAE's page; --feature takes a feature's "
                                     "(.../MODEL/SAE/INDEX), --sae takes this one")
                if "@" in v:
                    terms.append(parse_feature(f"{entry.id}:{index}@{v.split('@', 1)[1]}"))
                else:
                    urls.append((entry.id, index))
            elif "@" in v:
                terms.append(parse_feature(v))
            else:
                plain.append(v)
        return FeatureArgs(_values(plain, int), terms, urls, labels)
    except UsageError as e:
        raise click.BadParameter(str(e)) from None


def resolve_features(sae: str | None, args: FeatureArgs) -> tuple[str | None, list[int]]:
    """(the SAE, its feature indices): URLs' features must be of ``--sae`` (or give it); labels are looked
    up among its cached explanations, each choice said on stderr."""
    for sae_id, index in args.urls:
        if sae is None:
            sae = sae_id
        elif registry_id(sae) != sae_id:
            raise UsageError(f"--feature names feature {index} of {sae_id}, not of --sae {sae}; give --sae "
                             f"{sae_id}, or steer it beside --sae's with {sae_id}:{index}@STRENGTH")
    indices = [*args.indices, *(i for _, i in args.urls)]
    if args.labels:
        if sae is None:
            raise UsageError("--feature 'label:...' needs --sae (whose explanations to search)")
        from saejobs.db import explanations

        for text in args.labels:
            index, description = explanations.resolve_label(registry_id(sae), text)
            click.echo(f"note: 'label:{text}' is feature {index} of {registry_id(sae)}: {description}", err=True)
            indices.append(index)
    return sae, indices


def registry_id(sae: str) -> str:
    from saejobs.engine import registry

    return registry.get(sae).id


GENERATION_OPTIONS = [
    click.option("--prompt", "prompts", multiple=True, help="Prompt (repeatable)."),
    click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="One prompt per line."),
    click.option("--chat", "chat_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="Chat conversations instead of prompts: JSON (a list of them) or JSONL (one per line), each a "
                      "list of {role, content} ending with the user's; rendered as Neuronpedia's steer-chat does."),
    click.option("--system", help="A system message put first in every --chat conversation."),
    click.option("--chat-template", "chat_template_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="A Jinja chat template to render --chat with, for a model whose tokenizer has none."),
    click.option("--seed", "seeds", multiple=True, callback=_ints, help="Seeds (default 42)."),
    click.option("--n-tokens", default=32, show_default=True, type=click.IntRange(1, 4096)),
    click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0)),
    click.option("--freq-penalty", default=0.0, show_default=True, type=float,
                 help="TransformerLens-era frequency penalty (no effect at temperature 0)."),
    click.option("--sampling", "sampling_semantics", default="transformerlens", show_default=True,
                 type=click.Choice([m.value for m in SamplingSemantics]),
                 help="Sampling semantics: Neuronpedia's TransformerLens-era server, or interp-engine (its server today)."),
    click.option("--presence-penalty", default=0.0, show_default=True, type=float,
                 help="interp-engine: subtracted once from every token generated so far (applies when greedy too)."),
    click.option("--top-k", default=0, show_default=True, type=click.IntRange(0), help="interp-engine: 0 = off."),
    click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
                 help="interp-engine: 1 = off."),
    click.option("--steer-special-tokens/--no-steer-special-tokens", default=True, show_default=True,
                 help="Steer the prompt's special tokens (BOS, ...) too, as Neuronpedia's steer_special_tokens."),
    click.option("--strength-multiplier", default=1.0, show_default=True, type=float),
    click.option("--method", default=SteerMethod.SIMPLE_ADDITIVE.value, show_default=True, type=METHOD,
                 help="Steering operation (any case; interp-engine's names too: additive, orthogonal, ...)."),
    click.option("--normalize/--no-normalize", default=False, show_default=True, help="Unit-norm steering vectors."),
    click.option("--n-logprobs", default=0, show_default=True, type=click.IntRange(0, 100),
                 help="Store the chosen token's logprob and the top-k per generated token."),
    click.option("--preset", type=click.Choice([p.value for p in Preset]), is_eager=True,
                 callback=_preset,
                 help="Start from the settings a Neuronpedia client sends by default (README, Presets); "
                      "options given explicitly win."),
    click.option("--model", "model_source", help="Model source: HF id, local dir, .gguf file, or gemma-3-270m-gguf "
                                                 "(default: the SAE's model)."),
    click.option("--dtype", default="float32", show_default=True, type=DTYPE, help=DTYPE_HELP),
    click.option("--batch-size", type=click.IntRange(1), help="Configurations per batched generation (default: fits memory)."),
]


@dataclass(frozen=True)
class GenerationArgs:
    """What the generation options said: the texts to continue, how to sample and how to steer. ``sweep`` and
    ``search`` share them (one definition), so a search's rounds run exactly as a sweep given the same
    options would."""

    prompts: tuple[str, ...]
    prompts_file: Path | None
    chat_file: Path | None
    system: str | None
    chat_template_file: Path | None
    seeds: list[int]
    n_tokens: int
    temperature: float
    freq_penalty: float
    sampling_semantics: str
    presence_penalty: float
    top_k: int
    top_p: float
    steer_special_tokens: bool
    strength_multiplier: float
    method: str
    normalize: bool
    n_logprobs: int
    preset: str | None
    model_source: str | None
    dtype: str
    batch_size: int | None

    def texts(self, imported=None) -> tuple[list[str], list, str | None]:
        """(prompts, chats, chat template text): ``--prompt`` and the prompts file's lines, or the chats
        (``--chat``, else an imported steer's conversations when no prompt is given), and the template,
        checked to render them before anything is queued."""
        from saejobs.engine import chat

        prompts = list(self.prompts)
        if self.prompts_file is not None:
            prompts += [line.rstrip("\n") for line in self.prompts_file.read_text(encoding="utf-8").splitlines()
                        if line.strip()]
        if (self.system is not None or self.chat_template_file is not None) and self.chat_file is None:
            raise UsageError("--system and --chat-template go with --chat FILE")
        chats = chat.load(self.chat_file, self.system) if self.chat_file is not None else []
        if imported is not None and imported.chats and self.chat_file is None and not prompts:
            chats = [chat.conversation(c, f"the imported conversation {i + 1}") for i, c in enumerate(imported.chats)]
        template = chat.read_template(self.chat_template_file) if self.chat_template_file is not None else None
        if template is not None:
            chat.check_renders(template, chats)  # too large, looping or loading a file: refused before anything is queued
        return prompts, chats, template

    def settings(self):
        from saejobs.engine.request import Settings

        return Settings(method=self.method.upper(), normalize=self.normalize, strength_multiplier=self.strength_multiplier,
                        n_tokens=self.n_tokens, temperature=self.temperature, freq_penalty=self.freq_penalty,
                        n_logprobs=self.n_logprobs, sampling_semantics=self.sampling_semantics,
                        presence_penalty=self.presence_penalty, top_k=self.top_k, top_p=self.top_p,
                        steer_special_tokens=self.steer_special_tokens)

    def check_chat_template(self, chats, template, model_hf: str) -> None:
        """A chat needs a template: refused here when the model's tokenizer is known to have none."""
        from saejobs.engine import chat

        if chats and template is None and chat.model_template(self.model_source or model_hf) is False:
            raise UsageError(chat.NO_TEMPLATE.format(model=self.model_source or model_hf))  # None: the worker checks


GENERATION_PARAMS = [f.name for f in fields(GenerationArgs)]


def generation_options(f):
    """The generation options, handed to ``f`` as one ``gen: GenerationArgs``."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        gen = GenerationArgs(**{k: kwargs.pop(k) for k in GENERATION_PARAMS})
        return f(*args, gen=gen, **kwargs)

    for option in reversed(GENERATION_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


@click.command()
@click.option("--sae", shell_complete=sae_ids,
              help="SAE id (Neuronpedia id or repo/folder path); default: the first SAE a steer names.")
@click.option("--feature", "features", multiple=True, callback=_features,
              help="Feature indices of --sae: 3,7 or a range 0:7; a Neuronpedia feature URL; 'label:TEXT' (its cached "
                   "explanations); or SAE_ID:INDEX@STRENGTH (or URL@STRENGTH), the terms of one steer across SAEs "
                   "and layers (repeatable).")
@click.option("--from", "from_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
              callback=_from, help="A Neuronpedia steer as the sweep: a request body (/api/steer, /api/steer-chat, "
                                   "/v1/steer/completion[-chat]), a saved steer (/api/steer-load) or steer presets; "
                                   "its settings are defaults that options override.")
@click.option("--steers", "steers_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Named steers (JSON or YAML: {name: [intervention, ...]}), each run at every --strength, "
                   "which multiplies its interventions' strengths (README, Steers).")
@click.option("--vector", "vectors", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A raw steering vector (.npy or .safetensors, d_model floats) instead of a feature.")
@click.option("--strength", "strengths", multiple=True, callback=_floats,
              help="Strengths: 0,10,50,100 or a range 0:400:50 (repeatable); for named steers, multipliers "
                   "(default 1).")
@generation_options
@click.option("--combine", is_flag=True, help="Steer all features at once (one configuration per strength).")
@click.option("--shard-size", type=click.IntRange(1),
              help="Configurations per shard job (default: about two shards per live worker, at most 256).")
@submission
def sweep(sae, features, from_file, steers_file, vectors, strengths, combine, gen: GenerationArgs):
    """Steering sweep: features × strengths × prompts (or chats) × seeds, plus DEFAULT per prompt × seed;
    named steers (several SAEs, layers and operations each) × strength multipliers × the same."""
    from saejobs.engine import registry
    from saejobs.engine.request import SweepRequest, Vector

    imported = click.get_current_context().meta.get("saejobs.imported")
    sae, features, steers, steer_vectors = named_steers(sae, features, steers_file, imported)
    entry = registry.get(sae)
    prompts, chats, template = gen.texts(imported)
    settings = gen.settings()
    req = SweepRequest(sae=entry.id, features=features, vectors=tuple(Vector.of(v) for v in vectors),
                       strengths=strengths, prompts=prompts, seeds=gen.seeds, settings=settings, combine=combine,
                       model=gen.model_source, dtype=gen.dtype, batch_size=gen.batch_size, chats=chats,
                       chat_template=template, steers=tuple(steers), steer_vectors=tuple(steer_vectors))
    req.check_features(entry.d_sae, entry.id)
    req.check_steers(registry.get)
    gen.check_chat_template(chats, template, entry.model_hf)
    return req, entry.id


def named_steers(sae: str | None, features: FeatureArgs, steers_file: Path | None, imported=None):
    """(the SAE, its feature indices, the named steers, the vector files they name) from ``--sae``, ``--feature``
    (its ``SAE_ID:INDEX@STRENGTH`` terms make one steer, "command line"), ``--steers FILE`` and a ``--from``
    import; the SAE defaults to the first a steer steers along (else the first it swaps onto). Sweep's and
    search's one reading of them."""
    from saejobs.engine import registry
    from saejobs.engine.interventions import NamedSteer, load_steers
    from saejobs.engine.request import Vector

    sae, indices = resolve_features(sae, features)
    steer_vectors: list = []

    def label(path: Path) -> str:
        steer_vectors.append(Vector.of(path))
        return steer_vectors[-1].label

    steers = load_steers(steers_file, label) if steers_file is not None else []
    if features.terms:
        steers.append(NamedSteer("command line", tuple(features.terms)))
    if imported is not None:
        steers += imported.steers
        for note in imported.notes:
            click.echo(f"note: {note}", err=True)
    if sae is None:
        its = [it for st in steers for it in st.interventions]
        sae = next((it.direction.sae for it in its if it.direction.sae is not None), None) or next(
            (it.target.sae for it in its if it.target is not None and it.target.sae is not None), None)
    if sae is None:
        raise UsageError("no SAE: give --sae ID (or steers naming SAEs: --feature SAE_ID:INDEX@STRENGTH, --steers FILE)")
    steers = [NamedSteer(st.name, tuple(_registry_ids(it, registry) for it in st.interventions)) for st in steers]
    return sae, indices, steers, steer_vectors


def _registry_ids(it, registry):
    """The intervention with its SAEs named by their registry ids (a steer file may use a repo/folder path)."""
    from dataclasses import replace

    def canonical(d):
        return d if d is None or d.sae is None else replace(d, sae=registry.get(d.sae).id)

    return replace(it, direction=canonical(it.direction), target=canonical(it.target))


COMMANDS = [download, verify, sweep]
