"""``saejobs features``: find the features to steer, offline — the SAE's top features per token
(``top``, a job on a worker's cached model or ``--local``), the nearest features by decoder cosine
(``similar``, here: it reads decoders only), and explanations cached from Neuronpedia (``import``,
``search``: ``cli/explanations_cmd.py``)."""

from __future__ import annotations

from pathlib import Path

import click

from saejobs.cli.complete import sae_ids
from saejobs.cli.output import console, emit, json_option, plain, table
from saejobs.cli.submit_cmd import DTYPE, DTYPE_HELP, _floats, submission_options
from saejobs.engine.errors import UsageError
from saejobs.engine.job_requests import MAX_TOP_K, FeaturesRequest


@click.group()
def features() -> None:
    """Find features: top features of a text, similar features, cached Neuronpedia explanations."""


def _sae_and_index(sae: str, feature: int | None) -> tuple[str, int | None]:
    """``--sae`` may be a Neuronpedia SAE or feature URL (a feature's page gives the index too)."""
    from saejobs.engine import registry

    found = registry.from_url(sae)
    if found is None:
        return registry.get(sae).id, feature
    entry, index = found
    if index is not None and feature is not None and feature != index:
        raise UsageError(f"--sae names feature {index}, --feature {feature}; give one")
    return entry.id, feature if feature is not None else index


@features.command("top")
@click.option("--sae", required=True, shell_complete=sae_ids, help="SAE id, or its Neuronpedia page URL.")
@click.option("--prompt", "prompts", multiple=True, help="Text (repeatable).")
@click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="One text per line.")
@click.option("--chat", "chat_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Chat conversations (as sweep --chat takes them), rendered by the model's chat template.")
@click.option("--system", help="A system message put first in every --chat conversation.")
@click.option("--chat-template", "chat_template_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A Jinja chat template to render --chat with.")
@click.option("--k", default=FeaturesRequest.k, show_default=True, type=click.IntRange(1, MAX_TOP_K),
              help="Features per token.")
@click.option("--include-bos", is_flag=True, help="Keep BOS and special tokens (Neuronpedia's ignoreBos false).")
@click.option("--density-threshold", default=FeaturesRequest.density_threshold, show_default=True,
              type=click.FloatRange(0, 1), help="Drop features firing on more than this share of tokens (measured on "
                                                "the bundled evaluation text), as Neuronpedia's search does.")
@click.option("--keep-dense", is_flag=True, help="Keep dense features (no density filter, no density measured).")
@click.option("--per-token", is_flag=True, help="Show each token's features (the JSON always has them).")
@click.option("--sort", default="frequency", show_default=True, type=click.Choice(["frequency", "strength"]),
              help="Order over the text: tokens whose top-k holds the feature (Neuronpedia's default), or its "
                   "largest activation.")
@click.option("--then-sweep", is_flag=True, help="Then steer with the first --top features over the text (a sweep "
                                                  "job on the same texts at --strength).")
@click.option("--top", "n_top", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="With --then-sweep: how many features to steer.")
@click.option("--strength", "strengths", multiple=True, callback=_floats, help="With --then-sweep: the sweep's strengths (0,50,100 "
                                                              "or 0:400:50).")
@click.option("--model", "model_source", help="Model source (default: the SAE's model).")
@click.option("--dtype", default=FeaturesRequest.dtype, show_default=True, type=DTYPE, help=DTYPE_HELP)
@submission_options
def top(sae, prompts, prompts_file, chat_file, system, chat_template_file, k, include_bos, density_threshold, keep_dense,
        per_token, sort, then_sweep, n_top, strengths, model_source, dtype, wait, local, gpu, timeout, quiet,
        as_json) -> None:
    """The SAE's K most active features at each token of each text and over the text, as Neuronpedia's
    "search via inference" computes them (README, Finding features). Without --wait or --local: the job's id."""
    from saejobs.engine import chat

    sae_id, _ = _sae_and_index(sae, None)
    prompts = list(prompts)
    if prompts_file is not None:
        prompts += [line for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if (system is not None or chat_template_file is not None) and chat_file is None:
        raise UsageError("--system and --chat-template go with --chat FILE")
    chats = chat.load(chat_file, system) if chat_file is not None else []
    template = chat.read_template(chat_template_file) if chat_template_file is not None else None
    if template is not None:
        chat.check_renders(template, chats)
    if then_sweep and not strengths:
        raise UsageError("--then-sweep needs --strength (e.g. --strength 0,50,100)")
    if strengths and not then_sweep:
        raise UsageError("--strength goes with --then-sweep")
    req = FeaturesRequest(sae=sae_id, prompts=tuple(prompts), chats=tuple(chats), chat_template=template, k=k,
                          ignore_bos=not include_bos, model=model_source, dtype=dtype,
                          density_threshold=None if keep_dense else density_threshold)
    if chats and template is None:
        from saejobs.engine import registry

        source = model_source or registry.get(sae_id).model_hf
        if chat.model_template(source) is False:  # None: not known here; the worker checks
            raise UsageError(chat.NO_TEMPLATE.format(model=source))
    job = _run(req, wait=wait or then_sweep, local=local, gpu=gpu, timeout=timeout, quiet=quiet, as_json=as_json)
    if job is None:
        return
    result = {"job": job.id, **job.result}
    if sort == "strength":
        for t in result["texts"]:
            t["features"].sort(key=lambda f: -f["max_activation"])
    _add_labels(sae_id, result)
    if then_sweep:
        _then_sweep(result, req, n_top, strengths, local=local, gpu=gpu, timeout_s=timeout, quiet=quiet,
                    as_json=as_json)
        return
    emit(result, as_json, lambda: _render_top(result, per_token))


def _run(req, *, wait, local, gpu, timeout, quiet, as_json):
    """The job submitted, and (``wait``/``local``) run to its end: its final row; None when it was only
    queued (its id printed). A job that did not succeed exits as ``saejobs jobs`` says."""
    from saejobs.cli.follow import finish
    from saejobs.cli.submit_cmd import submit_and_follow
    from saejobs.db.states import JobState

    job = submit_and_follow(req, sae_id=req.sae, wait=wait, local=local, gpu=gpu, quiet=quiet, as_json=as_json,
                            timeout_s=timeout)
    if job is not None and job.state != JobState.SUCCEEDED:
        finish(job, as_json)  # exits non-zero with the job's reason
    return job


def _add_labels(sae_id: str, result: dict) -> None:
    """Each feature's cached explanation (None when there is none)."""
    from saejobs.db import explanations

    wanted = {f["index"] for t in result["texts"] for f in t["features"]}
    wanted |= {f["index"] for t in result["texts"] for tok in t["per_token"] for f in tok["features"]}
    labels = explanations.labels(sae_id, sorted(wanted)) if wanted else {}
    for t in result["texts"]:
        for f in t["features"]:
            f["label"] = labels.get(f["index"])
        for tok in t["per_token"]:
            for f in tok["features"]:
                f["label"] = labels.get(f["index"])


def _render_top(result: dict, per_token: bool) -> None:
    for t in result["texts"]:
        shown = t["text"] if len(t["text"]) <= 60 else t["text"][:57] + "..."
        console().print(plain(f"{result['sae']}: top features of {shown!r} ({t['kept_tokens']} tokens, "
                              f"k {result['k']})"))
        table(None, ["feature", "label", "tokens", "max act", "at token", "mean act"],
              ([f["index"], f["label"] or "", f["frequency"], f"{f['max_activation']:.3g}",
                f"{f['max_position']} {t['tokens'][f['max_position']]!r}", f"{f['mean_activation']:.3g}"]
               for f in t["features"][:25]))
        if len(t["features"]) > 25:
            console().print(f"... {len(t['features']) - 25} more in --json")
        if per_token:
            table(None, ["pos", "token", "features (activation)"],
                  ([tok["position"], repr(tok["token"]),
                    ", ".join(f"{f['index']} ({f['activation']:.3g})" + (f" {f['label']}" if f["label"] else "")
                              for f in tok["features"])] for tok in t["per_token"]))


def _then_sweep(result: dict, req: FeaturesRequest, n_top: int, strengths: list[float], **how) -> None:
    """A sweep of the first ``n_top`` features over all texts (in the order shown) on the same texts."""
    from saejobs.cli.submit_cmd import enqueue
    from saejobs.engine.request import SweepRequest

    chosen: list[int] = []
    for t in result["texts"]:
        chosen += [f["index"] for f in t["features"] if f["index"] not in chosen][:max(0, n_top - len(chosen))]
    if not chosen:
        raise UsageError("no feature fired on these texts: nothing to sweep")
    click.echo(f"sweeping features {', '.join(map(str, chosen))} of {req.sae} at strengths "
               f"{', '.join(f'{s:g}' for s in strengths)}", err=True)
    sweep = SweepRequest(sae=req.sae, features=tuple(chosen), strengths=tuple(strengths), prompts=req.prompts,
                         chats=req.chats, chat_template=req.chat_template, model=req.model, dtype=req.dtype)
    enqueue(sweep, sae_id=req.sae, wait=False, **how)


@features.command("similar")
@click.option("--sae", required=True, shell_complete=sae_ids, help="SAE id, or a Neuronpedia SAE or feature URL.")
@click.option("--feature", type=click.IntRange(0), help="Feature index (a feature URL in --sae gives it).")
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 128), help="Features per SAE.")
@click.option("--this-sae-only", is_flag=True, help="Only within --sae, not the model's other downloaded SAEs "
                                                   "at its hook.")
@json_option
def similar(sae, feature, k, this_sae_only, as_json) -> None:
    """Features whose decoder directions are nearest FEATURE's by cosine, in its SAE and in every other
    downloaded SAE of the same model at the same hook (Neuronpedia's sae-topk-by-decoder-cossim; the
    feature itself comes first, at cosine 1)."""
    from saejobs.db import explanations
    from saejobs.tasks import features as feature_tasks

    sae_id, index = _sae_and_index(sae, feature)
    if index is None:
        raise UsageError("which feature? give --feature INDEX (or a feature's URL as --sae)")
    from saejobs.tasks.runner import host_name

    got = feature_tasks.similar(sae_id, index, host_name(), k, across=not this_sae_only)
    for g in got["groups"]:
        labels = explanations.labels(g["sae"], [f["index"] for f in g["features"]])
        for f in g["features"]:
            f["label"] = labels.get(f["index"])

    def render() -> None:
        for g in got["groups"]:
            table(f"nearest {sae_id} feature {index} in {g['sae']}", ["feature", "cosine", "label"],
                  ([f["index"], f"{f['cosine']:.4f}", f["label"] or ""] for f in g["features"]))
    emit(got, as_json, render)


def _register() -> None:
    from saejobs.cli import explanations_cmd

    for cmd in explanations_cmd.COMMANDS:
        features.add_command(cmd)


_register()
