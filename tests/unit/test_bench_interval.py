"""The bench's 95% interval of a median ratio (`convnets bench model`'s `ratio_ci95`)."""

from __future__ import annotations

import random
import statistics

from convnets.platform.bench.report import median_ci95


def _plain_bootstrap(values: list[float], n: int = 20_000) -> tuple[float, float]:
    """The same percentile bootstrap written independently (the random module, sorted list)."""
    rng = random.Random(1)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return medians[int(0.025 * n)], medians[int(0.975 * n) - 1]


def test_interval_matches_an_independent_bootstrap_and_brackets_the_median():
    # The 21 per-round ratios of a real LeNet-5 run on the 2-core VM (2026-11-27, median 0.955).
    ratios = [
        0.898,
        0.915,
        1.072,
        1.005,
        0.810,
        0.878,
        0.941,
        1.321,
        1.094,
        0.881,
        1.036,
        0.999,
        0.947,
        0.952,
        0.964,
        0.845,
        0.812,
        1.021,
        0.955,
        1.189,
        0.991,
    ]
    lo, hi = median_ci95(ratios)
    ref_lo, ref_hi = _plain_bootstrap(ratios)
    assert abs(lo - ref_lo) < 0.02 and abs(hi - ref_hi) < 0.02
    assert lo < statistics.median(ratios) < hi and hi - lo > 0.05  # this noise cannot tell 0.955 from 0.97


def test_agreeing_rounds_give_a_narrow_interval_and_few_rounds_none():
    lo, hi = median_ci95([0.97, 0.971, 0.969, 0.970, 0.972, 0.968, 0.970])
    assert 0.968 <= lo <= 0.970 <= hi <= 0.972
    assert median_ci95([0.9, 1.0]) is None
