"""One syntax for lists and ranges in every numeric option (issue 31, item 3): ``a,b,c``, repeated options,
and the inclusive range ``LO:HI:STEP`` (``--strength 0:400:50``; integers may leave the step out:
``--feature 0:7``), added as decimals; bad ranges are refused with what was wrong."""

from __future__ import annotations

import click
import pytest

from saejobs.cli.submit_cmd import _floats, _ints


def test_ranges_lists_and_repeats_expand_in_order():
    assert _floats(None, None, ("0:400:50",)) == [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0]
    assert _floats(None, None, ("0:1:0.1", "5")) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 5.0]
    assert _floats(None, None, ("-2:2:1.5", "7,8")) == [-2.0, -0.5, 1.0, 7.0, 8.0]  # HI only when a step lands on it
    assert _ints(None, None, ("0:7", "10:20:5", "3")) == [0, 1, 2, 3, 4, 5, 6, 7, 10, 15, 20, 3]
    assert _floats(None, None, ("3:3:1",)) == [3.0]


@pytest.mark.parametrize("parse, value, says", [
    (_floats, "0:400:0", "'0:400:0' is not a range LO:HI:STEP with LO <= HI and STEP > 0"),
    (_floats, "400:0:50", "'400:0:50' is not a range LO:HI:STEP with LO <= HI and STEP > 0"),
    (_floats, "0:inf:1", "'0:inf:1' is not a range LO:HI:STEP with LO <= HI and STEP > 0"),
    (_floats, "0:1e9:0.001", "'0:1e9:0.001' holds 1000000000001 values; the limit is 100000"),
    (_floats, "a:b:c", "'a:b:c' is not a range LO:HI:STEP of numbers"),
    (_floats, "0:4", "'0:4' is not a range LO:HI:STEP of numbers"),
    (_floats, "0:1:2:3", "'0:1:2:3' is not a range LO:HI:STEP of numbers"),
    (_floats, "1,,x", "'x' is not a number"),
    (_ints, "0:2.5", "'0:2.5' is not a range of integers"),
    (_ints, "0:7:0", "'0:7:0' is not a range LO:HI:STEP with LO <= HI and STEP > 0"),
    (_ints, "x", "'x' is not an integer"),
])
def test_a_bad_list_or_range_says_what_is_wrong(parse, value, says):
    with pytest.raises(click.BadParameter) as e:
        parse(None, None, (value,))
    assert e.value.message == says
