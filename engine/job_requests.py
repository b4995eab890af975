"""One typed request for each job kind besides the sweep (``engine.request.SweepRequest``): download,
verify, score and search. Torch-free, like the sweep's.

Each crosses every seam of its job the way a ``SweepRequest`` does: the CLI builds it from options, the
job row stores ``to_params()``, and the task reads its params only through ``from_params()``. So:

* every default is written once, as the field's default here (the CLI's option defaults read them);
* a value is checked once, at construction: a bad one raises ``UsageError`` with one line naming it,
  whether it came from the command line or from a row written elsewhere;
* ``to_params()`` writes exactly the keys the job rows have always held (a worker still on the previous
  release reads a new row, and ``jobs show --json`` shows the same params);
* ``from_params()`` reads a row of any age: a key absent or ``None`` takes the field's default, and keys
  that are not the request's (``timeout_s``, which ``tasks.submit`` adds for the attempt's deadline)
  are left to their readers.

Which request a kind takes is ``db.states.JobKind.request_type`` (one mapping, checked by the tests).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

from saejobs.engine import chat, search
from saejobs.engine.errors import UsageError
from saejobs.engine.interventions import NamedSteer
from saejobs.engine.request import DEFAULT_DTYPE, DTYPES, MAX_PROMPT_CHARS, Settings, SweepRequest, Vector
from saejobs.engine.sampling import MAX_TOKENS

EVAL_WINDOW = 128  # tokens per window of the bundled evaluation text (engine.verify.functional's context)
MAX_EVAL_TOKENS = 65_536
MAX_SEARCH_POINTS = 64
MAX_REFINE_ROUNDS = 6
MAX_NLL_INCREASE = 100.0  # nats per token: beyond this the bound admits anything
MAX_TOP_K = 100  # features per token (Neuronpedia's webapp allows 20)
MAX_TEXTS = 1_000  # texts in one features-top job: its result is one JSON document
_DEFAULT_SETTINGS = Settings().to_json()


def _from_params(cls, p: dict, what: str):
    """``cls`` built from the row's keys that are its fields (absent or ``None``: the field's default)."""
    known = {f.name: p[f.name] for f in fields(cls) if p.get(f.name) is not None}
    if missing := [f.name for f in fields(cls) if f.default is MISSING and f.name not in known]:
        raise UsageError(f"{what} job's params lack {', '.join(missing)}")
    return cls(**known)


def _text(name: str, value) -> None:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{name} must be a non-empty string, not {value!r}")


def _absolute(name: str, value) -> str | None:
    """A path read where the job runs: absolute, as the CLI resolves it on the submitting host."""
    if value is None:
        return None
    if not str(value).strip() or not Path(value).is_absolute():
        raise UsageError(f"{name} must be an absolute path (it is read where the job runs), not '{value}'")
    return str(value)


def _integer(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UsageError(f"{name} must be an integer from {lo} to {hi}, not {value!r}")
    return value


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be true or false, not {value!r}")
    return value


@dataclass(frozen=True)
class DownloadRequest:
    """``saejobs download``: the registry's files for one SAE, from the Hub or a local mirror."""

    sae: str  # the registry's id (the CLI resolves what the user typed to it)
    source: str | None = None  # a local mirror laid out like the Hub (REPO/FOLDER/FILE); None: the Hub

    def __post_init__(self) -> None:
        _text("sae", self.sae)
        object.__setattr__(self, "source", _absolute("source", self.source))

    def to_params(self) -> dict:
        return {"sae": self.sae, **({"source": self.source} if self.source is not None else {})}

    @classmethod
    def from_params(cls, p: dict) -> DownloadRequest:
        return _from_params(cls, p, "a download")


@dataclass(frozen=True)
class VerifyRequest:
    """``saejobs verify``: the SAE's files, then (unless ``structural_only``) its behaviour on its model."""

    sae: str
    path: str | None = None  # a folder on the worker's host, verified as it is; None: the downloaded copy
    structural_only: bool = False
    model: str | None = None  # model source for the functional checks; None: the SAE's model
    dtype: str = DEFAULT_DTYPE
    max_tokens: int = 2048  # tokens of the bundled evaluation text, in EVAL_WINDOW-token windows

    def __post_init__(self) -> None:
        _text("sae", self.sae)
        object.__setattr__(self, "path", _absolute("path", self.path))
        _flag("structural_only", self.structural_only)
        if self.model is not None:
            _text("model", self.model)
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype '{self.dtype}'; expected one of {', '.join(DTYPES)}")
        _integer("max_tokens", self.max_tokens, EVAL_WINDOW, MAX_EVAL_TOKENS)

    def to_params(self) -> dict:
        return {"sae": self.sae, "structural_only": self.structural_only, "dtype": self.dtype,
                "max_tokens": self.max_tokens, **({"model": self.model} if self.model is not None else {}),
                **({"path": self.path} if self.path is not None else {})}

    @classmethod
    def from_params(cls, p: dict) -> VerifyRequest:
        return _from_params(cls, p, "a verify")


@dataclass(frozen=True)
class ScoreRequest:
    """``saejobs score``: fill in the missing scores of a stored sweep's generations."""

    job: str  # the sweep job's full id

    def __post_init__(self) -> None:
        _text("job", self.job)

    def to_params(self) -> dict:
        return {"job": self.job}

    @classmethod
    def from_params(cls, p: dict) -> ScoreRequest:
        return _from_params(cls, p, "a score")


@dataclass(frozen=True)
class SearchRequest:
    """``saejobs search``: per feature × prompt, the strength in ``[lo, hi]`` with the highest concept
    score whose NLL stays within ``max_nll_increase`` of the DEFAULT's (``engine.search``): a coarse grid
    of ``points`` strengths, then ``refine_rounds`` rounds, each round one sweep (``round``) that generates
    as a sweep with the same options would: prompts or chats, sampling, steering method, batch size.
    Instead of features, named steers (several SAEs, layers, operations): ``[lo, hi]`` is then the range of
    their strength multiplier, as a sweep's strengths are for them."""

    sae: str
    features: tuple[int, ...] = ()
    prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()  # (): the sweep's default seed
    lo: float = 0.0
    hi: float = 400.0
    max_nll_increase: float = search.DEFAULT_MAX_NLL_INCREASE
    points: int = search.COARSE_POINTS
    refine_rounds: int = search.REFINE_ROUNDS
    settings: Settings = Settings()  # the rounds' sampling and steering (n_tokens, temperature, method, ...)
    model: str | None = None  # None: the SAE's model
    dtype: str = DEFAULT_DTYPE
    holdout_prompts: tuple[str, ...] = ()  # chosen on ``prompts``, reported on these (AxBench's split)
    max_repeat_increase: float = search.DEFAULT_MAX_REPEAT_INCREASE
    max_distinct2_drop: float = search.DEFAULT_MAX_DISTINCT2_DROP
    chats: tuple[chat.Conversation, ...] = ()  # instead of prompts, as a sweep's
    chat_template: str | None = None
    batch_size: int | None = None
    steers: tuple[NamedSteer, ...] = ()  # searched over their multiplier instead of features
    steer_vectors: tuple[Vector, ...] = ()  # the vector files the steers name

    def __post_init__(self) -> None:
        s = object.__setattr__
        _text("sae", self.sae)
        if not self.features and not self.steers:
            raise UsageError("no feature to search: give --feature INDEX (or steers: --feature SAE_ID:INDEX@STRENGTH, "
                             "--steers FILE)")
        if self.features and self.steers:
            raise UsageError("a search takes features of --sae or named steers, not both (their strengths are on "
                             "different scales): search them apart")
        if self.holdout_prompts and self.chats:
            raise UsageError("--holdout-prompts go with prompts; a search over --chat conversations has no held-out "
                             "conversations")
        s(self, "holdout_prompts", tuple(dict.fromkeys(self.holdout_prompts)))
        for p in self.holdout_prompts:
            if not isinstance(p, str) or not p.strip():
                raise UsageError("a held-out prompt is empty")
        if both := set(self.holdout_prompts) & set(self.prompts):
            raise UsageError(f"prompt {sorted(both)[0]!r} is both a training and a held-out prompt")
        repeat = _number("max_repeat_increase", self.max_repeat_increase)
        if not 0 <= repeat <= MAX_TOKENS:
            raise UsageError(f"max_repeat_increase must be from 0 to {MAX_TOKENS}, not {repeat:g}")
        drop = _number("max_distinct2_drop", self.max_distinct2_drop)
        if not 0 <= drop <= 1:
            raise UsageError(f"max_distinct2_drop must be from 0 to 1, not {drop:g}")
        s(self, "max_repeat_increase", repeat)
        s(self, "max_distinct2_drop", drop)
        lo, hi = _number("range LO", self.lo), _number("range HI", self.hi)
        if lo >= hi:
            raise UsageError(f"search range {lo:g}:{hi:g} is not LO:HI with LO < HI")
        s(self, "lo", lo)
        s(self, "hi", hi)
        bound = _number("max_nll_increase", self.max_nll_increase)
        if not 0 <= bound <= MAX_NLL_INCREASE:
            raise UsageError(f"max_nll_increase must be from 0 to {MAX_NLL_INCREASE:g}, not {bound:g}")
        s(self, "max_nll_increase", bound)
        _integer("points", self.points, 2, MAX_SEARCH_POINTS)
        _integer("refine_rounds", self.refine_rounds, 0, MAX_REFINE_ROUNDS)
        probe = self.round((lo, hi))  # the rounds' sweeps are valid: features, prompts, seeds, n_tokens, dtype
        s(self, "features", probe.features)  # as the sweep has them: integers, each once
        s(self, "prompts", probe.prompts)
        s(self, "chats", probe.chats)
        s(self, "seeds", probe.seeds)

    def round(self, strengths, features=None, prompts=None, steers=None) -> SweepRequest:
        """One round's sweep: every feature (or steer) × prompt × seed at ``strengths`` (``features``/``steers``
        by name/``prompts``: a subset, e.g. the held-out prompts at one feature's chosen strength)."""
        own = prompts is None  # the search's own texts (else other prompts: no chats)
        named = self.steers if steers is None else tuple(st for st in self.steers if st.name in steers)
        return SweepRequest(sae=self.sae, features=tuple(self.features if features is None else features),
                            strengths=tuple(strengths), prompts=tuple(self.prompts if own else prompts),
                            chats=self.chats if own else (), chat_template=self.chat_template if own else None,
                            seeds=tuple(self.seeds), settings=self.settings, model=self.model, dtype=self.dtype,
                            batch_size=self.batch_size, steers=named, steer_vectors=self.steer_vectors)

    @property
    def rule(self) -> search.Rule:
        return search.Rule(self.max_nll_increase, self.max_repeat_increase, self.max_distinct2_drop)

    def check_features(self, d_sae: int, sae_id: str) -> None:
        self.round((self.lo,)).check_features(d_sae, sae_id)

    def to_params(self) -> dict:
        return {"sae": self.sae, "features": list(self.features), "prompts": list(self.prompts),
                "seeds": list(self.seeds), "lo": self.lo, "hi": self.hi, "max_nll_increase": self.max_nll_increase,
                "points": self.points, "refine_rounds": self.refine_rounds, "n_tokens": self.settings.n_tokens,
                "model": self.model, "dtype": self.dtype,
                # later keys only when set, so a row of an earlier kind of search is written as it was;
                # the other settings flat beside n_tokens, as a sweep's row holds them
                **{k: v for k, v in self.settings.to_json().items() if k != "n_tokens" and v != _DEFAULT_SETTINGS[k]},
                **({"chats": [chat.to_json(c) for c in self.chats], "chat_template": self.chat_template}
                   if self.chats else {}),
                **({"batch_size": self.batch_size} if self.batch_size is not None else {}),
                **({"holdout_prompts": list(self.holdout_prompts)} if self.holdout_prompts else {}),
                **({"max_repeat_increase": self.max_repeat_increase}
                   if self.max_repeat_increase != search.DEFAULT_MAX_REPEAT_INCREASE else {}),
                **({"max_distinct2_drop": self.max_distinct2_drop}
                   if self.max_distinct2_drop != search.DEFAULT_MAX_DISTINCT2_DROP else {}),
                **({"steers": [st.to_json() for st in self.steers],
                    "steer_vectors": [{"path": v.path, "sha256": v.sha256} for v in self.steer_vectors]}
                   if self.steers else {})}

    @classmethod
    def from_params(cls, p: dict) -> SearchRequest:
        names = {f.name for f in fields(Settings)}
        settings = Settings(**{k: v for k, v in p.items() if k in names and v is not None})
        chats = tuple(chat.conversation(c, f"conversation {i + 1}") for i, c in enumerate(p.get("chats") or ()))
        steers = {"steers": tuple(NamedSteer.from_json(st) for st in p["steers"]),
                  "steer_vectors": tuple(Vector(v["path"], v["sha256"]) for v in p.get("steer_vectors") or ())} \
            if p.get("steers") else {}
        return _from_params(cls, {**{k: v for k, v in p.items() if k not in names}, "settings": settings,
                                  "chats": chats, **({"holdout_prompts": tuple(p["holdout_prompts"])}
                                                     if p.get("holdout_prompts") else {}), **steers}, "a search")


@dataclass(frozen=True)
class FeaturesRequest:
    """``saejobs features top``: per text (a prompt, or a chat as its template renders it), the SAE's ``k``
    most active features at each token and over the text (``engine.features.top_by_token``)."""

    sae: str
    prompts: tuple[str, ...] = ()
    chats: tuple[chat.Conversation, ...] = ()
    chat_template: str | None = None  # a Jinja chat template's text; None: the model's own
    k: int = 10  # Neuronpedia's webapp default (its inference server's is 5)
    ignore_bos: bool = True  # leave out BOS and special tokens, as Neuronpedia's search does by default
    model: str | None = None  # None: the SAE's model
    dtype: str = DEFAULT_DTYPE
    density_threshold: float | None = 0.01  # Neuronpedia's search default; None: keep dense features

    def __post_init__(self) -> None:
        s = object.__setattr__
        _text("sae", self.sae)
        s(self, "prompts", tuple(dict.fromkeys(self.prompts)))
        s(self, "chats", tuple(dict.fromkeys(tuple(c) for c in self.chats)))
        if not self.prompts and not self.chats:
            raise UsageError("no text: give --prompt TEXT, --prompts-file FILE or --chat FILE")
        if len(self.prompts) + len(self.chats) > MAX_TEXTS:
            raise UsageError(f"{len(self.prompts) + len(self.chats)} texts; one job takes at most {MAX_TEXTS}")
        for p in self.prompts:
            if not isinstance(p, str) or not p.strip():
                raise UsageError("a prompt is empty")
            if len(p) > MAX_PROMPT_CHARS:
                raise UsageError(f"a prompt has {len(p)} characters; the limit is {MAX_PROMPT_CHARS}")
        for i, c in enumerate(self.chats):  # built by engine.chat.conversation; checked again for params from elsewhere
            chat.conversation(chat.to_json(c), f"conversation {i + 1}")
        if self.chat_template is not None and not self.chats:
            raise UsageError("--chat-template renders --chat conversations; there are none")
        _integer("k", self.k, 1, MAX_TOP_K)
        _flag("ignore_bos", self.ignore_bos)
        if self.density_threshold is not None:
            d = _number("density_threshold", self.density_threshold)
            if not 0 <= d <= 1:
                raise UsageError(f"density_threshold must be from 0 to 1, not {d:g}")
            object.__setattr__(self, "density_threshold", d)
        if self.model is not None:
            _text("model", self.model)
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype '{self.dtype}'; expected one of {', '.join(DTYPES)}")

    def to_params(self) -> dict:
        return {"sae": self.sae, "prompts": list(self.prompts), "k": self.k, "ignore_bos": self.ignore_bos,
                "model": self.model, "dtype": self.dtype, "density_threshold": self.density_threshold,
                **({"chats": [chat.to_json(c) for c in self.chats], "chat_template": self.chat_template}
                   if self.chats else {})}

    @classmethod
    def from_params(cls, p: dict) -> FeaturesRequest:
        chats = tuple(chat.conversation(c, f"conversation {i + 1}") for i, c in enumerate(p.get("chats") or ()))
        req = _from_params(cls, {**p, "prompts": tuple(p.get("prompts") or ()), "chats": chats}, "a features")
        # a stored None means "keep dense features" (``_from_params`` reads an absent or None key as the default)
        return replace(req, density_threshold=None) if "density_threshold" in p and p["density_threshold"] is None else req


JobRequest = DownloadRequest | VerifyRequest | SweepRequest | ScoreRequest | SearchRequest | FeaturesRequest
"""What a job row's params are: one of these (``db.states.JobKind.request_type`` says which)."""
