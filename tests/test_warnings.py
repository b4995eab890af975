"""Deprecations said about saejobs code fail the suite (issue 25.5): a warning attributed to a saejobs module
is an error (pyproject's filterwarnings), and transformers' deprecation log lines for our calls are caught."""

from __future__ import annotations

import warnings

import pytest

from tests.conftest import DEPRECATIONS


def from_module(name: str, code: str) -> None:
    exec(code, {"__name__": name, "warnings": warnings})


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning])
def test_a_deprecation_attributed_to_saejobs_is_an_error(category):
    with pytest.raises(category):
        from_module("saejobs.engine.fake", f"warnings.warn('old', {category.__name__})")


def test_a_library_deprecation_about_our_call_is_an_error():
    """A library warns with stacklevel=2: the warning is attributed to its caller, here saejobs."""
    def library():
        warnings.warn("use cache instead", FutureWarning, stacklevel=2)

    with pytest.raises(FutureWarning):
        exec("library()", {"__name__": "saejobs.engine.generate", "library": library})
    with warnings.catch_warnings(record=True) as seen:  # a test's own (reference) call is not ours
        warnings.simplefilter("always")
        exec("library()", {"__name__": "tests.fidelity.reference", "library": library})
    assert len(seen) == 1


def test_a_transformers_deprecation_line_for_our_call_is_recorded():
    from transformers.utils import logging as hf_logging

    log = hf_logging.get_logger("transformers.modeling_utils")
    exec("log.warning('`torch_dtype` is deprecated! Use `dtype` instead!')",
         {"__name__": "saejobs.engine.models", "log": log})
    exec("log.warning('`foo` is deprecated')", {"__name__": "tests.reference", "log": log})
    said, DEPRECATIONS.said[:] = list(DEPRECATIONS.said), []  # taken here, so this test itself passes
    assert said == ["transformers.modeling_utils: `torch_dtype` is deprecated! Use `dtype` instead! "
                    "(called from saejobs.engine.models)"]
