"""Is this SAE folder intact and the one the registry names? Evidence, not a printout of shapes.

Structural checks need no model: the files' checksums against those recorded at download, the arrays'
keys, shapes, dtypes and values (``engine.formats``), thresholds non-negative, and the folder's
config.json against the registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from engine.download import sha256_file
from engine.errors import SaejobsError
from engine.formats import gemma_scope_2
from engine.registry.entry import SaeEntry
from engine.sae import load_sae

HF_HOOK_POINTS = {
    "res": "model.layers.{L}.output",
    "mlp": "model.layers.{L}.post_feedforward_layernorm.output",
    "att": "model.layers.{L}.self_attn.o_proj.input",
}


@dataclass
class Report:
    verdict: str = "PASS"  # PASS | WARN | FAIL
    reasons: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.verdict = "FAIL"
        self.reasons.append(f"FAIL: {reason}")

    def warn(self, reason: str) -> None:
        if self.verdict == "PASS":
            self.verdict = "WARN"
        self.reasons.append(f"WARN: {reason}")


def structural(entry: SaeEntry, folder: Path, recorded: dict | None, progress: Callable[[float, str], None]) -> Report:
    report = Report()
    folder = Path(folder)
    names = list(entry.files)
    for i, name in enumerate(names):
        path = folder / name
        if not path.is_file():
            report.fail(f"{name}: missing")
            continue
        progress(i / (len(names) + 1), f"sha256 {name}")
        digest = sha256_file(path)
        report.metrics.setdefault("sha256", {})[name] = digest
        expected = (recorded or {}).get(name, {}).get("sha256")
        if expected is None:
            report.warn(f"{name}: no checksum recorded at download to compare with")
        elif digest != expected:
            report.fail(f"{name}: sha256 {digest[:12]}… differs from the {expected[:12]}… recorded at download")
    if report.verdict == "FAIL":
        return report
    progress(len(names) / (len(names) + 1), "checking arrays")
    try:
        sae = load_sae(entry, folder)
    except SaejobsError as e:
        report.fail(str(e))
        return report
    negative = int((sae.threshold < 0).sum())
    if negative:
        report.fail(f"threshold has {negative} negative values (JumpReLU thresholds are >= 0)")
    report.metrics["threshold_mean"] = float(sae.threshold.mean())
    report.metrics["decoder_norm_mean"] = float(torch.linalg.vector_norm(sae.W_dec, dim=1).mean())
    if entry.format == "gemma-scope-2":
        _check_config(entry, folder, report)
    return report


def _check_config(entry: SaeEntry, folder: Path, report: Report) -> None:
    try:
        config = gemma_scope_2.read_config(folder)
    except SaejobsError as e:
        report.fail(str(e))
        return
    if config is None:
        report.warn("config.json missing (SAELens infers it from the folder name)")
        return
    expected = HF_HOOK_POINTS[entry.site].format(L=entry.layer)
    if config.get("hf_hook_point_in") not in (None, expected):
        report.fail(f"config.json hf_hook_point_in is '{config['hf_hook_point_in']}', registry expects '{expected}'")
    size = entry.model_hf.removeprefix("google/gemma-3-").split("-")[0]
    model_name = str(config.get("model_name", ""))
    if model_name and size not in model_name:
        report.fail(f"config.json model_name '{model_name}' is not {entry.model_hf}")
