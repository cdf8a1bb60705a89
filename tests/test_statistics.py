"""keys_values/statistics.py, hand-checked: the exact McNemar test, its stratified form over seeds, the paired
difference and its interval."""


import pytest

from keys_values import statistics


def test_mcnemar_hand_checked():
    # b=1, c=6: two-sided exact p = 2 * (C(7,0) + C(7,1)) / 2**7 = 0.125
    a = [True] + [False] * 6 + [True, False]
    b = [False] + [True] * 6 + [True, False]
    assert statistics.mcnemar(a, b) == (1, 6, 0.125)
    assert statistics.mcnemar([True] * 3, [True] * 3) == (0, 0, 1.0)
    # b=c=5: the two-sided p is capped at 1
    assert statistics.mcnemar([True] * 5 + [False] * 5, [False] * 5 + [True] * 5)[2] == 1.0


def test_stratified_mcnemar_and_paired_difference_hand_checked():
    # seed 1: b=3, c=1; seed 2: b=4, c=0 -> 7 of 8 discordant pairs favour A:
    # p = 2 * (C(8,0) + C(8,1)) / 2**8 = 18 / 256
    assert statistics.stratified_mcnemar([(3, 1), (4, 0)]) == (7, 1, 18 / 256)



def test_newcombes_paired_interval_hand_checked():
    """Newcombe 1998, method 10. a=3 b=3 c=1 d=3: p1 = 0.6, p2 = 0.4, their Wilson intervals [0.3127, 0.8318] and
    [0.1682, 0.6873]; ad - bc = 6 > n/2 = 5, so phi = (6 - 5) / sqrt(6 * 4 * 4 * 6) = 1/24;
    delta = sqrt(0.2873^2 - 2 phi 0.2873 * 0.2873 + 0.2873^2) = 0.39775, eps = sqrt(0.2318^2 - 2 phi 0.2318^2
    + 0.2318^2) = 0.32090: 0.2 [-0.1978, 0.5209]."""
    diff, lo, hi = statistics.newcombe_paired(3, 3, 1, 3)
    assert diff == pytest.approx(0.2) and lo == pytest.approx(-0.19778, abs=2e-4) and hi == pytest.approx(0.52094, abs=2e-4)
    # no discordant pair, 10 of 10 right in both: not a point, but as wide as 10 examples leave (Wilson's 1 - 0.7225)
    diff, lo, hi = statistics.newcombe_paired(10, 0, 0, 0)
    assert diff == 0 and lo == pytest.approx(-0.27753, abs=1e-4) and hi == pytest.approx(0.27753, abs=1e-4)
    assert statistics.newcombe_paired(0, 0, 0, 0) == (0.0, -1.0, 1.0)


def test_the_pooled_paired_difference_respects_the_examples_shared_by_the_seeds():
    """Two seeds on the same 10 examples: keys right on 0-5 and 0-7, values on 0-2, 9 and 0-3. The difference is
    (7 - 1) / 20 = +0.3; the interval is not that of 20 independent pairs: it is at least Newcombe's on the
    per-example mean counts (a = 3.5, b = 3.5, c = 0.5, d = 2.5 over 10 examples), and the bootstrap resamples
    examples with both seeds inside."""
    keys = [[1] * 6 + [0] * 4, [1] * 8 + [0] * 2]
    values = [[1, 1, 1, 0, 0, 0, 0, 0, 0, 1], [1] * 4 + [0] * 6]
    diff, lo, hi = statistics.clustered_paired_difference(keys, values)
    _, n_lo, n_hi = statistics.newcombe_paired(3.5, 3.5, 0.5, 2.5)
    assert diff == pytest.approx(0.3) and lo <= n_lo and hi >= n_hi
    # wider than the interval that treats the 20 (seed, example) pairs as independent
    _, w_lo, w_hi = statistics.newcombe_paired(7, 7, 1, 5)
    assert hi - lo > w_hi - w_lo
    # the same examples doubled up under two identical seeds: the same evidence as one seed, not twice as much
    one = statistics.clustered_paired_difference(keys[:1], values[:1])
    twice = statistics.clustered_paired_difference(keys[:1] * 2, values[:1] * 2)
    assert twice[1] <= one[1] + 1e-9 and twice[2] >= one[2] - 1e-9


def test_a_mean_over_seeds_is_never_narrower_than_what_its_examples_allow():
    """Two seeds at 0/10: not [0, 0] (the bootstrap collapses) but Wilson's [0, 27.8] of 0/10, as one seed."""
    lo, hi = statistics.seed_bootstrap([[0] * 10, [0] * 10])
    assert lo == 0 and hi == pytest.approx(statistics.wilson_interval(0, 10)[1]) and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = statistics.seed_bootstrap([[1] * 10, [1] * 10])
    assert hi == 1 and lo == pytest.approx(0.7225, abs=1e-4)
