"""One typed sweep request: what the CLI, the demo and the task build, validated once, torch-free.

A ``SweepRequest`` crosses every seam of a sweep — the CLI builds it from options, the job row stores
``to_params()``, the task rebuilds it with ``from_params()`` — so a value is checked in one place and
means the same everywhere. Duplicates are removed at construction (``--strength 10,10`` is one
strength), so a grid never holds two configurations with one key. Raw vectors are named by file name
and sha256, so two different ``v.npy`` are two vectors, and a file that changed after submission is
refused instead of silently steering with other numbers.

The grid is features × strengths × prompts × seeds (with ``combine``: all features at once, per
strength), plus one DEFAULT generation per prompt × seed. Chat conversations (``chats``, with an
optional ``chat_template`` text; ``engine.chat``) take the place of prompts. Every configuration has a key derived from
everything that determines its output, so a redelivered sweep can skip what is already stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path

from saejobs.engine import chat
from saejobs.engine.errors import IntegrityError, UsageError
from saejobs.engine.sampling import Sampling
from saejobs.engine.interventions import NamedSteer
from saejobs.engine.steering import SteerMethod, steer_method

MAX_PROMPT_CHARS = 32_000  # about 8k tokens: longer belongs in a file of shorter prompts, not one generation
DEFAULT_MAX_CONFIGS = 1_000_000  # a sweep's grid at most (``SAEJOBS_MAX_CONFIGS``): one row each in the database
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = DTYPES[0]


@dataclass(frozen=True)
class Settings(Sampling):
    """What applies to every configuration of a sweep (stored with it, part of every key): how tokens are
    sampled (``Sampling``'s fields) and how the model is steered."""

    method: SteerMethod = SteerMethod.SIMPLE_ADDITIVE
    normalize: bool = False
    strength_multiplier: float = 1.0
    steer_special_tokens: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "method", steer_method(self.method))
        if self.method is SteerMethod.SWAP:
            raise UsageError("SWAP moves a direction onto a target, which each intervention names: "
                             "give it in a steer file (--steers FILE), not as the sweep's --method")
        if not math.isfinite(self.strength_multiplier):
            raise UsageError(f"strength_multiplier must be a finite number, not {self.strength_multiplier}")

    def sampling(self) -> Sampling:
        """The generation part alone, as ``engine.generate`` takes it."""
        return Sampling(**{f.name: getattr(self, f.name) for f in fields(Sampling)})

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, StrEnum) else v for k, v in asdict(self).items()}


# Settings added after the first release: a stored job may lack them (they take their defaults), and
# a key leaves them out at their default, so configurations stored before they existed keep their
# keys (a sweep redelivered across an upgrade still skips what it has).
LATER_SETTINGS = ("sampling_semantics", "presence_penalty", "top_k", "top_p", "steer_special_tokens")
STEERING_ONLY = ("method", "normalize", "strength_multiplier", "steer_special_tokens")  # not part of a DEFAULT's key


@dataclass(frozen=True)
class SweepConfig:
    type: str  # STEERED | DEFAULT
    features: tuple  # ({"index": 7650, "strength": 50.0} | {"vector": "v.npy@0123abcd4567", "strength": ..}, ...)
    prompt: str  # "" for a chat
    seed: int
    key: str = field(default="", compare=False)
    chat: chat.Conversation = ()  # a chat configuration's conversation (the assistant turn answers it)
    chat_template: str = ""  # chat.template_id: which template renders it
    steer: str = ""  # a named steer's configuration: its name (its features are its interventions)
    multiplier: float | None = None  # a named steer's: Neuronpedia's strength_multiplier for this row

    def to_json(self) -> dict:
        out = {"type": self.type, "features": [dict(f) for f in self.features], "prompt": self.prompt,
               "seed": self.seed}
        if self.steer:  # only named steers carry these, so other configurations' keys are what they always were
            out.update(steer=self.steer, multiplier=self.multiplier)
        if self.chat:  # only chats carry these, so a prompt configuration's key is what it always was
            out.update(chat=chat.to_json(self.chat), chat_template=self.chat_template)
        return out


_LATER_DEFAULTS = {k: Settings().to_json()[k] for k in LATER_SETTINGS}


def config_key(cfg: SweepConfig, settings: Settings, steering_id: str) -> str:
    """Hash of everything that determines the output; ``steering_id`` names the SAE/vectors used."""
    kept = {k: v for k, v in settings.to_json().items() if k not in _LATER_DEFAULTS or v != _LATER_DEFAULTS[k]}
    payload = {**cfg.to_json(), "settings": kept if cfg.type == "STEERED" else
               {k: v for k, v in kept.items() if k not in STEERING_ONLY},
               "steering": steering_id if cfg.type == "STEERED" else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def plan_configs(features: list[int], vectors: list[str], strengths: list[float], prompts: list[str], seeds: list[int],
                 combine: bool, settings: Settings, steering_id: str, chats: list[chat.Conversation] = (),
                 chat_template: str | None = None, steers: list[tuple[str, tuple[dict, ...]]] = ()) -> list[SweepConfig]:
    """The whole grid, DEFAULT rows first (one per prompt or chat × seed), then per feature (or per
    ``combine`` group), then per named steer (``(name, interventions as stored)``), per strength the same
    block; ``vectors`` are vector labels. A named steer's strength is its rows' multiplier. Inputs are
    assumed valid and distinct (``SweepRequest`` makes them so). One planner: ``plan_slice`` over every index."""
    return plan_slice(features, vectors, strengths, prompts, seeds, combine, settings, steering_id, chats, chat_template,
                      steers=steers)


def grid_size(n_terms: int, n_strengths: int, n_inputs: int, n_seeds: int, combine: bool, n_steers: int = 0) -> int:
    """How many configurations ``plan_configs`` makes, without making them."""
    groups = ((1 if combine else n_terms) if n_terms else 0) + n_steers
    return n_inputs * n_seeds * (1 + groups * n_strengths)


def plan_slice(features: list[int], vectors: list[str], strengths: list[float], prompts: list[str], seeds: list[int],
               combine: bool, settings: Settings, steering_id: str, chats: list[chat.Conversation] = (),
               chat_template: str | None = None, lo: int = 0, hi: int | None = None,
               steers: list[tuple[str, tuple[dict, ...]]] = ()) -> list[SweepConfig]:
    """Configurations ``[lo, hi)`` of the grid, each found from its index in the grid's order (DEFAULT
    block of inputs × seeds, then per group per strength the same block): a shard plans its own slice in
    time proportional to it, never the whole grid."""
    terms = [{"index": int(i)} for i in features] + [{"vector": v} for v in vectors]
    n_term_groups = (1 if combine else len(terms)) if terms else 0
    inputs = [(p, ()) for p in prompts] + [("", c) for c in chats]
    template = chat.template_id(chat_template)
    block = len(inputs) * len(seeds)  # one DEFAULT row, or one (group, strength)'s rows
    total = grid_size(len(terms), len(strengths), len(inputs), len(seeds), combine, len(steers))
    out = []
    for i in range(max(lo, 0), total if hi is None else min(hi, total)):
        fs: tuple = ()
        named, multiplier = "", None
        if i >= block:
            group, rest = divmod(i - block, len(strengths) * block)
            strength = float(strengths[rest // block])
            if group < n_term_groups:
                fs = tuple({**t, "strength": strength} for t in (terms if combine else [terms[group]]))
            else:
                named, items = steers[group - n_term_groups]
                fs, multiplier = tuple(dict(t) for t in items), strength
        (p, c), seed = inputs[i % block // len(seeds)], seeds[i % len(seeds)]
        cfg = SweepConfig("STEERED" if fs else "DEFAULT", fs, p, int(seed), chat=c, chat_template=template if c else "",
                          steer=named, multiplier=multiplier)
        out.append(replace(cfg, key=config_key(cfg, settings, steering_id)))
    return out


@dataclass(frozen=True)
class Vector:
    """A raw steering vector file, named by file name and content."""

    path: str  # absolute, on the submitting host
    sha256: str

    @property
    def label(self) -> str:
        return f"{Path(self.path).name}@{self.sha256[:12]}"

    @classmethod
    def of(cls, path: str | Path) -> Vector:
        from saejobs.engine.download import sha256_file

        p = Path(path).resolve()
        if not p.is_file():
            raise UsageError(f"steering vector '{path}' is not a file")
        if p.suffix not in (".npy", ".safetensors"):
            raise UsageError(f"{path}: a steering vector must be .npy or .safetensors")
        return cls(str(p), sha256_file(p))

    def check(self) -> None:
        """The file still holds what was submitted."""
        from saejobs.engine.download import sha256_file

        if not Path(self.path).is_file():
            raise UsageError(f"steering vector '{self.path}' is gone (it is read where the job runs)")
        if (now := sha256_file(Path(self.path))) != self.sha256:
            raise IntegrityError(f"steering vector '{self.path}' changed since the sweep was submitted "
                                 f"(sha256 {now[:12]}, submitted {self.sha256[:12]})")


def _distinct(values) -> tuple:
    return tuple(dict.fromkeys(values))


def _model_layers(model: str) -> int | None:
    """The registry's layer count for a model id (None for a model it does not list)."""
    from saejobs.engine import registry
    from saejobs.engine.errors import NotFoundError

    try:
        return int(registry.model_info(model)["n_layers"])
    except NotFoundError:
        return None


@dataclass(frozen=True)
class SweepRequest:
    sae: str
    features: tuple[int, ...] = ()
    vectors: tuple[Vector, ...] = ()
    strengths: tuple[float, ...] = ()
    prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (42,)
    chats: tuple[chat.Conversation, ...] = ()  # instead of prompts: conversations the assistant answers
    chat_template: str | None = None  # a Jinja chat template's text; None: the model's own
    settings: Settings = Settings()
    combine: bool = False
    model: str | None = None  # model source; None: the SAE's model
    dtype: str = DEFAULT_DTYPE
    batch_size: int | None = None  # None: sized by memory
    steers: tuple[NamedSteer, ...] = ()  # named steers (engine.interventions), each run at every strength
    steer_vectors: tuple[Vector, ...] = ()  # the vector files the steers name

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "features", _distinct(int(i) for i in self.features))
        s(self, "vectors", _distinct(self.vectors))
        s(self, "strengths", _distinct(float(x) for x in self.strengths))
        s(self, "prompts", _distinct(self.prompts))
        s(self, "chats", _distinct(tuple(c) for c in self.chats))
        s(self, "seeds", _distinct(int(x) for x in self.seeds) or (42,))
        s(self, "steers", tuple(self.steers))
        s(self, "steer_vectors", _distinct(self.steer_vectors))
        if not self.features and not self.vectors and not self.steers:
            raise UsageError("nothing to steer with: give --feature INDEX, --vector FILE, "
                             "--feature SAE_ID:INDEX@STRENGTH or --steers FILE")
        if len({st.name for st in self.steers}) != len(self.steers):
            raise UsageError("two steers have one name; each named steer needs its own")
        if self.steers and self.settings.strength_multiplier != 1.0:
            raise UsageError("with named steers --strength gives the strength multipliers; "
                             "leave --strength-multiplier at 1")
        labels = {v.label for v in self.steer_vectors}
        for st in self.steers:
            for it in st.interventions:
                for d in (it.direction, it.target):
                    if d is not None and d.vector is not None and d.vector not in labels:
                        raise UsageError(f"steer '{st.name}' names vector {d.vector}, which the sweep does not carry")
        if any(i < 0 for i in self.features):
            raise UsageError(f"feature {min(self.features)} is out of range (feature indices start at 0)")
        if not self.strengths and self.steers and not self.features and not self.vectors:
            s(self, "strengths", (1.0,))  # named steers carry their strengths: multiplier 1 unless asked
        if not self.strengths:
            raise UsageError("no strength: give --strength, e.g. 0,10,50")
        if bad := [x for x in self.strengths if not math.isfinite(x)]:
            raise UsageError(f"strength {bad[0]} is not a finite number")
        if self.prompts and self.chats:
            raise UsageError("give prompts or chat conversations (--chat), not both")
        if not self.prompts and not self.chats:
            raise UsageError("no prompt: give --prompt TEXT, --prompts-file FILE or --chat FILE")
        if self.chat_template is not None and not self.chats:
            raise UsageError("--chat-template renders --chat conversations; there are none")
        for i, c in enumerate(self.chats):  # built by engine.chat.conversation; checked again for params from elsewhere
            chat.conversation(chat.to_json(c), f"conversation {i + 1}")
        for p in self.prompts:
            if not p.strip():
                raise UsageError("a prompt is empty")
            if len(p) > MAX_PROMPT_CHARS:
                raise UsageError(f"a prompt has {len(p)} characters; the limit is {MAX_PROMPT_CHARS}")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype '{self.dtype}'; expected one of {', '.join(DTYPES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, not {self.batch_size}")

    def concept_features(self, sae_id: str) -> list[int]:
        """The features of the sweep's SAE it steers (``--feature`` indices, then steers' features of
        ``sae_id`` or of no named SAE): what a DEFAULT row is scored on, as its baseline."""
        steered = (it.direction.index for st in self.steers for it in st.interventions
                   if it.direction.index is not None and it.direction.sae in (None, sae_id))
        return list(dict.fromkeys([*self.features, *steered]))

    def check_features(self, d_sae: int, sae_id: str) -> None:
        if bad := [f for f in self.features if f >= d_sae]:
            raise UsageError(f"feature {bad[0]} is out of range for {sae_id} (d_sae {d_sae})")

    def steer_saes(self) -> list[str]:
        """Every SAE the named steers read, besides the sweep's own (in order of first mention)."""
        named = [s for st in self.steers for it in st.interventions
                 for s in (it.direction.sae, it.target.sae if it.target else None) if s is not None]
        return [s for s in dict.fromkeys(named) if s != self.sae]

    def check_steers(self, entry_of) -> None:
        """Each steer's SAEs (``entry_of(id)`` -> its registry entry) exist, belong to the sweep SAE's model,
        and hold the features named; each vector's hook is a layer of that model."""
        own = entry_of(self.sae)
        layers = _model_layers(own.model)
        for st in self.steers:
            for it in st.interventions:
                for d in (it.direction, it.target):
                    if d is None or d.index is None:
                        continue
                    e = entry_of(d.sae) if d.sae is not None else own
                    if e.model != own.model:
                        raise UsageError(f"steer '{st.name}': {e.id} is an SAE of {e.model}; the sweep steers "
                                         f"{own.model} ({own.id})")
                    if d.index >= e.d_sae:
                        raise UsageError(f"steer '{st.name}': feature {d.index} is out of range for {e.id} "
                                         f"(d_sae {e.d_sae})")
                if it.hook is not None and layers is not None:
                    from saejobs.engine.hook_names import parse_hook

                    if parse_hook(it.hook).layer >= layers:
                        raise UsageError(f"steer '{st.name}': hook {it.hook} is past {own.model}'s layers "
                                         f"(0..{layers - 1})")

    def configs(self, steering_id: str, lo: int | None = None, hi: int | None = None) -> list[SweepConfig]:
        """The whole grid, or with ``lo``/``hi`` its slice ``[lo, hi)`` (a shard's: planned alone)."""
        grid = (list(self.features), [v.label for v in self.vectors], list(self.strengths), list(self.prompts),
                list(self.seeds), self.combine, self.settings, steering_id, list(self.chats), self.chat_template)
        steers = [(st.name, tuple(it.to_json() for it in st.interventions)) for st in self.steers]
        return plan_slice(*grid, lo=lo or 0, hi=hi, steers=steers)

    def check_size(self) -> None:
        """At submission: a grid over ``SAEJOBS_MAX_CONFIGS`` is refused (a typo of a range, not a sweep)."""
        limit = int(os.environ.get("SAEJOBS_MAX_CONFIGS") or DEFAULT_MAX_CONFIGS)
        if (n := self.size()) > limit:
            raise UsageError(f"the grid has {n:,} configurations; the limit is {limit:,} (SAEJOBS_MAX_CONFIGS): "
                             "fewer features, strengths, prompts or seeds, or split the sweep")

    def size(self) -> int:
        """How many configurations the grid has (what ``SAEJOBS_MAX_CONFIGS`` limits)."""
        return grid_size(len(self.features) + len(self.vectors), len(self.strengths),
                         len(self.prompts) + len(self.chats), len(self.seeds), self.combine, len(self.steers))

    def to_params(self) -> dict:
        """The job's ``params``: flat, JSON, the settings beside the grid (as jobs have always stored them)."""
        return {"sae": self.sae, "model": self.model, "features": list(self.features),
                "vectors": [{"path": v.path, "sha256": v.sha256} for v in self.vectors],
                "strengths": list(self.strengths), "prompts": list(self.prompts), "seeds": list(self.seeds),
                "combine": self.combine, "dtype": self.dtype, "batch_size": self.batch_size,
                **({"chats": [chat.to_json(c) for c in self.chats], "chat_template": self.chat_template}
                   if self.chats else {}),
                **({"steers": [st.to_json() for st in self.steers],
                    "steer_vectors": [{"path": v.path, "sha256": v.sha256} for v in self.steer_vectors]}
                   if self.steers else {}), **self.settings.to_json()}

    @classmethod
    def from_params(cls, p: dict) -> SweepRequest:
        """A stored job's params (older jobs: vectors as plain paths, later settings absent, no chats)."""
        names = {f.name for f in fields(Settings)}
        settings = Settings(**{k: v for k, v in p.items() if k in names and v is not None})
        vectors = tuple(Vector(v["path"], v["sha256"]) if isinstance(v, dict) else Vector.of(v)
                        for v in p.get("vectors") or [])
        return cls(sae=p["sae"], features=tuple(p.get("features") or ()), vectors=vectors,
                   strengths=tuple(p.get("strengths") or ()), prompts=tuple(p.get("prompts") or ()),
                   seeds=tuple(p.get("seeds") or (42,)), settings=settings, combine=bool(p.get("combine")),
                   model=p.get("model"), dtype=p.get("dtype") or DEFAULT_DTYPE, batch_size=p.get("batch_size"),
                   chats=tuple(chat.conversation(c, f"conversation {i + 1}")
                               for i, c in enumerate(p.get("chats") or ())),
                   chat_template=p.get("chat_template"),
                   steers=tuple(NamedSteer.from_json(st) for st in p.get("steers") or ()),
                   steer_vectors=tuple(Vector(v["path"], v["sha256"]) for v in p.get("steer_vectors") or ()))
