"""The history a forecaster gets: short gaps filled, long gaps cut, stale history refused."""

from __future__ import annotations

import math

import pytest

from aifixer.scaling.scaler import trailing_finite, usable_history

nan = math.nan


@pytest.mark.parametrize(
    ("values", "max_gap", "want"),
    [
        ([1.0, 2.0, 3.0], 2, [1.0, 2.0, 3.0]),
        ([1.0, nan, 3.0], 1, [1.0, 2.0, 3.0]),  # a missed scrape: a straight line over it
        ([0.0, nan, nan, 3.0, 4.0], 2, [0.0, 1.0, 2.0, 3.0, 4.0]),
        ([0.0, nan, nan, nan, 3.0, 4.0], 2, [3.0, 4.0]),  # too long: cut there
        ([nan, nan, 1.0, 2.0], 5, [1.0, 2.0]),  # nothing before the first sample
        ([1.0, 2.0, nan], 1, [1.0, 2.0]),  # the last scrape missing: the last known
        ([1.0, 2.0, nan, nan], 1, []),  # stale
        ([nan, nan], 3, []),
        ([], 3, []),
        (
            [5.0, nan, nan, nan, 1.0, nan, 3.0, nan],
            1,
            [1.0, 2.0, 3.0],
        ),  # the last long gap counts, short ones after it are filled
    ],
)
def test_usable_history(values, max_gap, want):
    assert usable_history(values, max_gap) == want


def test_trailing_finite_allows_no_gap():
    assert trailing_finite([1.0, nan, 2.0, 3.0]) == [2.0, 3.0]
    assert trailing_finite([1.0, 2.0, nan]) == []
