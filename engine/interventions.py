"""Steers as Neuronpedia composes them: an ordered list of interventions across SAEs and hooks of one model.

An ``Intervention`` is a feature of an SAE (registry id + index) or a raw vector at a hook, with its
operation (``SteerMethod``; the sweep's ``--method`` when it names none), its strength and its
operation's parameters, validated once at construction. A ``NamedSteer`` is a list of them, applied
as interp-engine's ``steer()`` applies a list of specs: per hook in list order, each term reading what
the one before wrote; hooks in the order the forward pass reaches them. In a sweep each named steer is
run at every ``--strength``, which multiplies each intervention's own strength as Neuronpedia's
``strength_multiplier`` does (``coeff = multiplier * strength``).

Steer files (``saejobs sweep --steers FILE``) are JSON or YAML: ``{name: [intervention, ...], ...}``;
an intervention is ``{"sae": ID, "index": N}`` or ``{"vector": FILE, "hook": HOOK}`` plus
``strength``, ``method`` and the method's parameters (``min``/``max``, ``max_fraction``, ``target``:
``{"sae", "index"}`` or ``{"vector": FILE}``). The command line's ``--feature SAE_ID:INDEX@STRENGTH``
makes one steer of its terms. torch-free.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from saejobs.engine.errors import UsageError
from saejobs.engine.hook_names import parse_hook
from saejobs.engine.steering import SteerMethod, steer_method

KEYS = ("sae", "index", "vector", "hook", "strength", "method", "min", "max", "max_fraction", "target")
MAX_INTERVENTIONS = 256  # per steer: more is a file that went wrong, not a steer


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Direction:
    """Where a direction comes from: a feature (SAE id + index) or a vector label; a swap's target too."""

    sae: str | None = None  # None: the sweep's SAE
    index: int | None = None
    vector: str | None = None  # a vector's label (file name @ sha256 prefix)

    def __post_init__(self) -> None:
        if (self.index is None) == (self.vector is None):
            raise UsageError("an intervention names a feature ('sae' and 'index') or a 'vector', exactly one")
        if self.index is not None and (isinstance(self.index, bool) or not isinstance(self.index, int)
                                       or self.index < 0):
            raise UsageError(f"feature index must be an integer >= 0, not {self.index!r}")
        if self.vector is not None and self.sae is not None:
            raise UsageError("a vector intervention names a 'hook', not an 'sae'")

    def to_json(self) -> dict:
        return {k: v for k, v in (("sae", self.sae), ("index", self.index), ("vector", self.vector)) if v is not None}


@dataclass(frozen=True)
class Intervention:
    """One term of a steer; ``to_json`` is what a configuration stores (keys left out at their defaults,
    so a single-SAE sweep's configurations keep the keys they always had)."""

    direction: Direction
    strength: float = 0.0
    method: SteerMethod | None = None  # None: the sweep's --method
    hook: str | None = None  # a vector's hook (None: the sweep's SAE's)
    min: float | None = None  # PROJECTION_CAP
    max: float | None = None
    max_fraction: float | None = None  # NORM_SCALED_ADD (None: 1.0)
    target: Direction | None = None  # SWAP

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "strength", _number(self.strength, "strength"))
        if self.method is not None:
            s(self, "method", steer_method(self.method))
        if self.hook is not None:
            if self.direction.vector is None:
                raise UsageError("a feature steers at its SAE's hook; 'hook' goes with a 'vector'")
            parse_hook(self.hook)
        m = self.method
        for name in ("min", "max", "max_fraction"):
            if getattr(self, name) is not None:
                s(self, name, _number(getattr(self, name), name))
        if (self.min is not None or self.max is not None) and m is not SteerMethod.PROJECTION_CAP:
            raise UsageError("'min' and 'max' are PROJECTION_CAP's bounds; give \"method\": \"PROJECTION_CAP\"")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise UsageError(f"projection cap min {self.min} is above its max {self.max}")
        if self.max_fraction is not None and m is not SteerMethod.NORM_SCALED_ADD:
            raise UsageError("'max_fraction' is NORM_SCALED_ADD's cap; give \"method\": \"NORM_SCALED_ADD\"")
        if self.max_fraction is not None and self.max_fraction <= 0:
            raise UsageError(f"max_fraction must be above 0, not {self.max_fraction}")
        if (self.target is not None) != (m is SteerMethod.SWAP):
            raise UsageError("SWAP needs a 'target' ({\"sae\", \"index\"} or {\"vector\"}) to move the component "
                             "onto" if m is SteerMethod.SWAP else "'target' is SWAP's; give \"method\": \"SWAP\"")

    def to_json(self) -> dict:
        out = {**self.direction.to_json(), "strength": self.strength}
        for k in ("method", "hook", "min", "max", "max_fraction"):
            if (v := getattr(self, k)) is not None:
                out[k] = str(v) if k == "method" else v
        if self.target is not None:
            out["target"] = self.target.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict, where: str = "intervention") -> Intervention:
        """From a stored configuration or a steer file (vectors already named by label)."""
        if not isinstance(d, dict):
            raise UsageError(f"{where}: expected an object with 'sae'/'index' or 'vector', not {d!r}")
        if unknown := sorted(set(d) - set(KEYS)):
            raise UsageError(f"{where}: unknown key '{unknown[0]}'; expected some of {', '.join(KEYS)}")
        try:
            t = d.get("target")
            return cls(Direction(d.get("sae"), d.get("index"), d.get("vector")), d.get("strength", 0.0),
                       d.get("method"), d.get("hook"), d.get("min"), d.get("max"), d.get("max_fraction"),
                       None if t is None else Direction(**_target(t, where)))
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None

    def saes(self) -> set[str]:
        """The SAE ids it reads (its feature's and its swap target's)."""
        return {x.sae for x in (self.direction, self.target) if x is not None and x.sae is not None}


def _target(t, where: str) -> dict:
    if not isinstance(t, dict) or set(t) - {"sae", "index", "vector"}:
        raise UsageError(f"{where}: 'target' is {{\"sae\", \"index\"}} or {{\"vector\"}}, not {t!r}")
    return t


@dataclass(frozen=True)
class NamedSteer:
    name: str
    interventions: tuple[Intervention, ...]

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise UsageError(f"a steer needs a name, not {self.name!r}")
        if not self.interventions:
            raise UsageError(f"steer '{self.name}' has no interventions")
        if len(self.interventions) > MAX_INTERVENTIONS:
            raise UsageError(f"steer '{self.name}' has {len(self.interventions)} interventions; "
                             f"the limit is {MAX_INTERVENTIONS}")

    def to_json(self) -> dict:
        return {"name": self.name, "interventions": [i.to_json() for i in self.interventions]}

    @classmethod
    def from_json(cls, d: dict) -> NamedSteer:
        return cls(d["name"], tuple(Intervention.from_json(i, f"steer '{d['name']}'") for i in d["interventions"]))

    def saes(self) -> set[str]:
        return {s for i in self.interventions for s in i.saes()}


def parse_feature(text: str, default_method: SteerMethod | None = None) -> Intervention:
    """``SAE_ID:INDEX@STRENGTH`` (the command line's form; an SAE id may hold ':' only before the last)."""
    head, at, strength = text.rpartition("@")
    sae, colon, index = head.rpartition(":")
    if not at or not colon or not sae:
        raise UsageError(f"'{text}' is not SAE_ID:INDEX@STRENGTH (e.g. gemma-2-2b/20-gemmascope-res-16k:1234@40)")
    try:
        return Intervention(Direction(sae.strip(), int(index)), float(strength), default_method)
    except ValueError:
        raise UsageError(f"'{text}': INDEX must be an integer and STRENGTH a number") from None


def load_steers(path: Path, vector_label) -> list[NamedSteer]:
    """Named steers from a JSON or YAML file: ``{name: [intervention, ...]}``. ``vector_label(path)``
    names a vector file (relative paths are the steer file's folder's) and records it for the sweep."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the file's, said in one line
        raise UsageError(f"{path}: not readable as {'YAML' if Path(path).suffix.lower() in ('.yaml', '.yml') else 'JSON'}"
                         f" ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path}: expected named steers, {{\"name\": [intervention, ...], ...}}")
    steers = []
    for name, items in data.items():
        if not isinstance(items, list):
            raise UsageError(f"{path}: steer '{name}' must be a list of interventions")
        fixed = []
        for it in items:
            if isinstance(it, dict):
                it = dict(it)
                if isinstance(it.get("vector"), str):
                    it["vector"] = vector_label(Path(path).parent / it["vector"])
                if isinstance(it.get("target"), dict) and isinstance(it["target"].get("vector"), str):
                    it["target"] = {**it["target"], "vector": vector_label(Path(path).parent / it["target"]["vector"])}
            fixed.append(Intervention.from_json(it, f"{path}: steer '{name}'"))
        steers.append(NamedSteer(str(name), tuple(fixed)))
    return steers
