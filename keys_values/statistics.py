"""The statistics the reports use, each hand-checked in tests/test_statistics.py: Wilson intervals, exact
(stratified) McNemar tests, the paired difference of two accuracies (Newcombe's interval; over seeds, a bootstrap
over the examples with the seeds inside), bootstrap intervals, and Wilcoxon's signed-rank test. Numbers in, numbers out: nothing here reads a file."""

import math

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
BOOTSTRAP = 2000  # replicates of a bootstrap interval


def wilson_interval(k, n, z=Z95):
    """95% Wilson score interval for k successes in n trials ([0, 0] for n = 0)."""
    if n == 0:
        return [0.0, 0.0]
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, centre - half), min(1.0, centre + half)]


def binomial_p(b, c):
    """Two-sided exact p-value of b successes in b + c fair coin flips."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar(a_right, b_right):
    """Exact two-sided McNemar test on paired right/wrong lists: (b, c, p) where b counts examples only A
    gets right and c those only B gets right."""
    b = sum(bool(x) and not y for x, y in zip(a_right, b_right))
    c = sum(bool(y) and not x for x, y in zip(a_right, b_right))
    return b, c, binomial_p(b, c)


def stratified_mcnemar(strata):
    """The exact stratified McNemar test over seeds: `strata` is one (b, c) per seed. Under no difference
    every discordant pair, within its seed, is equally likely to favour either setting, so the summed b is
    Binomial(sum of b + c, 1/2) (the Mantel-Haenszel test for matched pairs, each seed's pair of runs on one
    example a stratum). Returns (b, c, p)."""
    b, c = sum(s[0] for s in strata), sum(s[1] for s in strata)
    return b, c, binomial_p(b, c)


def newcombe_paired(a, b, c, d, z=Z95):
    """(difference, low, high): the difference of two paired proportions, (b - c) / n, with Newcombe's
    score interval (Newcombe 1998, Statistics in Medicine 17:2635, method 10), from the 2x2 table of the pairs: a
    both right, b only A right, c only B right, d both wrong (counts; fractional counts allowed, as the mean over
    seeds). Built on the Wilson intervals of the two proportions, it stays inside [-1, 1] and is never a point:
    with no discordant pair it still spans what n pairs cannot rule out. n = 0: (0, -1, 1)."""
    n = a + b + c + d
    if n == 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    den = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c  # phi with Newcombe's continuity adjustment: ad - bc - n/2 above n/2, 0 in [0, n/2]
    adjusted = cross - n / 2 if cross > n / 2 else cross if cross < 0 else 0.0
    phi = adjusted / math.sqrt(den) if den > 0 else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = (b - c) / n
    return diff, max(-1.0, diff - delta), min(1.0, diff + eps)


def clustered_paired_difference(a, b, replicates=BOOTSTRAP, seed=0):
    """(difference, low, high) of two settings' accuracies pooled over seeds, paired on the same examples: `a`
    and `b` are seeds x examples of right (1) / wrong (0), the same examples in the same order in every row. The
    (seed, example) pairs are not independent (the same examples come back under every seed), so the interval
    is a bootstrap over the examples with the seeds inside (each draw keeps every seed's runs on the drawn
    examples), never narrower than Newcombe's interval of the per-example mean counts over the n examples
    (newcombe_paired): it never claims what n examples cannot give. One seed: Newcombe's alone."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    seeds, n = a.shape
    cells = [float(x) / seeds for x in ((a * b).sum(), (a * (1 - b)).sum(), ((1 - a) * b).sum(),
                                        ((1 - a) * (1 - b)).sum())]
    diff, lo, hi = newcombe_paired(*cells)
    if seeds == 1 or n == 0:
        return diff, lo, hi
    per_example = (a - b).mean(axis=0)  # the seeds inside: each example's difference averaged over them
    rng = np.random.default_rng(seed)
    draws = per_example[rng.integers(0, n, size=(replicates, n))].mean(axis=1)
    return diff, min(lo, float(np.quantile(draws, 0.025))), max(hi, float(np.quantile(draws, 0.975)))


def seed_bootstrap(table, replicates=BOOTSTRAP, seed=0):
    """The 95% interval of a mean over seeds of per-example scores: a two-level bootstrap (the seeds drawn
    with replacement, then the examples, the same examples for every drawn seed). `table` is seeds x examples
    (right = 1.0, or any per-example score)."""
    import numpy as np

    table = np.asarray(table, dtype=float)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, table.shape[0], size=(replicates, table.shape[0]))
    examples = rng.integers(0, table.shape[1], size=(replicates, table.shape[1]))
    means = np.array([table[s][:, e].mean() for s, e in zip(seeds, examples)])
    lo, hi = float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))
    # never narrower than the Wilson interval of the mean on the n examples: all seeds at 0/10 is not certainty
    w_lo, w_hi = wilson_interval(float(table.mean()) * table.shape[1], table.shape[1])
    return [min(lo, w_lo), max(hi, w_hi)]


def paired_bootstrap(a, b, statistic, replicates=BOOTSTRAP, seed=0):
    """The 95% percentile interval of statistic(a[sample]) - statistic(b[sample]) over `replicates` resamples
    of the pairs (one index drawn for both): a and b are per-pair score arrays (n x k, or n), statistic maps
    such an array to one number."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(replicates, len(a)))
    diffs = np.array([statistic(a[d]) - statistic(b[d]) for d in draws])
    return [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]


def wilcoxon(x, y):
    """Wilcoxon's signed-rank test of paired samples x, y (two-sided; scipy, zero differences dropped as
    Wilcoxon's own rule): (median of x - y, p). p = 1 when every difference is zero; (None, None) without pairs."""
    import numpy as np
    from scipy.stats import wilcoxon as scipy_wilcoxon

    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(d) == 0:
        return None, None
    if not np.any(d != 0):
        return 0.0, 1.0
    return float(np.median(d)), float(scipy_wilcoxon(d, zero_method="wilcox").pvalue)


def harmonic_mean(values):
    """The harmonic mean of non-negative numbers (0 when one of them is 0): ROME's Score."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)
