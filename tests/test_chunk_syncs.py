"""A chunk looks at the device a fixed number of times, however many configurations it holds (issue 27
item 2): on a GPU every ``bool(tensor)``/``.item()`` waits for all queued kernels, and checking each
steering vector as it was prepared made one to three such waits per configuration. Counted on the CPU as
``aten._local_scalar_dense`` calls (what every tensor-to-Python conversion dispatches), with a dispatch
mode around the whole chunk: the same count for 2 and 16 configurations. A bad vector is still refused
with the message it had."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from saejobs.engine.errors import UsageError
from saejobs.engine.request import Settings, SweepConfig
from saejobs.engine.sae import load_sae
from saejobs.engine.sweep import SweepGenerator
from tests.dbfixtures import home  # noqa: F401
from tests.synthetic_saes import make
from tests.test_sampling_batched import Ops


class Reads(TorchDispatchMode):
    """Counts the operators that bring a tensor's value to the host."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten._local_scalar_dense:
            self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def runner(home, tiny_gemma2_dir):  # noqa: F811
    from saejobs.engine.models import load_model

    a, b = make(home, d_model=64, d_sae=256, layer=1), make(home, d_model=64, d_sae=256, layer=3, seed=1)
    saes = {s.id: (load_sae(s.entry, s.mirror_folder), s.entry.hook_name) for s in (a, b)}
    lm = load_model(str(tiny_gemma2_dir))
    settings = Settings(n_tokens=3, normalize=True, temperature=0.7, sampling_semantics="interp-engine")
    return SweepGenerator(lm, saes[a.id][0], a.entry.hook_name, settings, saes=saes), a.id, b.id


def configs(n: int, a: str, b: str, seed: int | None = None) -> list[SweepConfig]:
    """``n`` configurations (seeds 0 to n - 1, or all ``seed``), each a two-SAE steer with a direction-reading
    operation (units computed); configuration i steers features k, k + 1 and k + 2 with k = i mod 250 (the SAEs
    are 256 wide)."""
    return [SweepConfig("STEERED", ({"sae": a, "index": k, "strength": 5.0},
                                    {"sae": b, "index": k + 1, "strength": 2.0, "method": "ORTHOGONAL_DECOMP"},
                                    {"sae": b, "index": k + 2, "method": "SWAP", "target": {"sae": a, "index": k}}),
                        "Hello there", i if seed is None else seed) for i, k in ((i, i % 250) for i in range(n))]


def reads(r: SweepGenerator, cfgs: list[SweepConfig]) -> int:
    with Reads() as mode:
        r.run(cfgs)
    return mode.n


def test_a_chunk_reads_the_device_as_often_for_2_configurations_as_for_16(runner):
    r, a, b = runner
    reads(r, configs(2, a, b))  # warm: one-time checks (the sampling draw's self-check) are not per chunk
    two, sixteen = reads(r, configs(2, a, b)), reads(r, configs(16, a, b))
    assert two == sixteen, (two, sixteen)
    assert two <= 3 * 4  # one for the vectors, then per step the stop check (and nothing per row)


def test_a_zero_vector_in_a_chunk_is_refused_with_its_own_message(runner):
    r, a, b = runner
    r.saes[b][0].W_dec[7].zero_()
    with pytest.raises(UsageError) as e:
        r.run(configs(6, a, b))  # rows 5 and 6 name feature 7 of b
    assert str(e.value) == (f"feature 7 of {b} has zero norm (or a non-finite one): it has no direction to normalise")


def test_a_decode_step_runs_as_many_operators_for_256_rows_as_for_1(runner):
    """Issue 27 item 1 over a whole chunk (two SAEs, three operations, interp-engine sampling, one seed as a
    sweep's default): the operators of one more decode step — the model, the steering hooks, sampling with each
    row's real mt19937 draw — are as many for 256 rows as for 1 (rows of one seed draw one noise; distinct seeds
    cost one draw each on this CPU: tests/test_sampling_batched.py counts that apart)."""
    from dataclasses import replace

    r, a, b = runner
    rows = {n: configs(n, a, b, seed=42) for n in (1, 256)}

    def ops(n_rows: int, n_tokens: int) -> int:
        r.settings = replace(r.settings, n_tokens=n_tokens)
        with Ops() as mode:
            out = r.run(rows[n_rows])
        assert max(len(g.token_ids) for _, g, _ in out) == n_tokens  # the chunk ran every step (a row may stop)
        return mode.n

    ops(1, 3)  # warm: one-time checks
    step = {n: ops(n, 5) - ops(n, 4) for n in (1, 256)}
    assert step[1] == step[256], step
