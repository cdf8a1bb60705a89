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
    # 20 pairs, b=7, c=1: difference 6/20 = 0.3, se = sqrt(7 + 1 - 6**2 / 20) / 20 = sqrt(6.2) / 20
    diff, lo, hi = statistics.paired_difference(7, 1, 20)
    se = 6.2 ** 0.5 / 20
    assert diff == pytest.approx(0.3) and lo == pytest.approx(0.3 - 1.959964 * se) and hi == pytest.approx(0.3 + 1.959964 * se)
