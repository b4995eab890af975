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

from saejobs.engine.download import sha256_file
from saejobs.engine.errors import SaejobsError, UsageError
from saejobs.engine.formats import gemma_scope_2
from saejobs.engine.hook_names import parse_hook, site_width
from saejobs.engine.job_requests import EVAL_WINDOW
from saejobs.engine.registry.entry import SaeEntry, SaeFormat, SaeSite
from saejobs.engine.sae import load_sae


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
    if entry.format == SaeFormat.GEMMA_SCOPE_2:
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
    expected = SaeSite(entry.site).hf_point(entry.layer)
    if config.get("hf_hook_point_in") not in (None, expected):
        report.fail(f"config.json hf_hook_point_in is '{config['hf_hook_point_in']}', registry expects '{expected}'")
    size = entry.model_hf.removeprefix("google/gemma-3-").split("-")[0]
    model_name = str(config.get("model_name", ""))
    if model_name and size not in model_name:
        report.fail(f"config.json model_name '{model_name}' is not {entry.model_hf}")


# Verdict bounds for the functional checks. Heuristic, chosen to be wide: the registry's L0 was measured
# by Google on The Pile with 1024-token contexts, ours on a short public-domain text in 128-token windows.
L0_PASS, L0_WARN = 2.0, 3.0  # measured/expected L0 within ×÷2 passes, within ×÷3 warns, else fails
FVU_WARN, FVU_FAIL = 0.5, 1.0  # 1.0 = no better than predicting the mean activation
DELTA_LOSS_WARN, DELTA_LOSS_FAIL = 1.0, 2.5  # nats per token
RECOVERED_WARN, RECOVERED_FAIL = 0.8, 0.5  # share of the zero-ablation loss gap the SAE recovers


def check_pairing(entry: SaeEntry, sae, config, model_id: str) -> None:
    """Refuse an SAE on a model that has no layer at its hook or another activation width there: before any
    compute, and before the model's weights load where its config is on disk (``models.local_config``).
    ``config``: the model's text config."""
    layer, layers = parse_hook(entry.hook_name).layer, config.num_hidden_layers
    if layer >= layers:
        raise UsageError(f"SAE {entry.id} reads layer {layer} but {model_id} has layers 0..{layers - 1}: "
                         "wrong model for this SAE?")
    width = site_width(config, entry.site)
    if sae.d_model != width:
        raise UsageError(f"SAE {entry.id} has d_in {sae.d_model} but {model_id} has width {width} at "
                         f"{entry.hook_name}: wrong model for this SAE?")


def functional(report: Report, entry: SaeEntry, sae, lm, *, max_tokens: int, context: int = EVAL_WINDOW,
               progress: Callable[[float, str], None] = lambda f, m: None) -> Report:
    """Measure the SAE on the bundled text at its hook and judge the numbers against the expectation
    (``max_tokens``: the job's ``VerifyRequest.max_tokens``, whose default is the one place it is written)."""
    from saejobs.engine import evaluate

    ids = evaluate.windows(lm.tokenizer, context=context)[: max(1, max_tokens // context)]
    m = evaluate.evaluate(lm, sae, entry.hook_name, ids, progress=progress)
    report.metrics["functional"] = {**m.as_dict(), "hook": entry.hook_name, "model": lm.model_id,
                                    "text": evaluate.EVAL_SOURCE, "context": context,
                                    "expected_l0": entry.l0}
    if entry.l0:
        ratio = m.l0 / entry.l0
        said = f"L0 {m.l0:.1f} vs {entry.l0:g} expected (×{ratio:.2f})"
        if not 1 / L0_WARN <= ratio <= L0_WARN:
            report.fail(f"{said}: outside ×÷{L0_WARN:g}; wrong layer or model?")
        elif not 1 / L0_PASS <= ratio <= L0_PASS:
            report.warn(f"{said}: outside ×÷{L0_PASS:g}")
    else:
        report.warn(f"no expected L0 in the registry; measured {m.l0:.1f}")
    _bound(report, "FVU", m.fvu, FVU_WARN, FVU_FAIL, "{:.3f}")
    _bound(report, "delta loss", m.delta_loss, DELTA_LOSS_WARN, DELTA_LOSS_FAIL, "{:.3f} nats")
    if m.loss_recovered < RECOVERED_FAIL:
        report.fail(f"loss recovered {m.loss_recovered:.2f} < {RECOVERED_FAIL} (zero ablation would be nearly as good)")
    elif m.loss_recovered < RECOVERED_WARN:
        report.warn(f"loss recovered {m.loss_recovered:.2f} < {RECOVERED_WARN}")
    return report


def _bound(report: Report, name: str, value: float, warn: float, fail: float, fmt: str) -> None:
    if not value <= fail:  # NaN fails too
        report.fail(f"{name} {fmt.format(value)} > {fail}")
    elif value > warn:
        report.warn(f"{name} {fmt.format(value)} > {warn}")
