"""The statistics the reports use, each hand-checked in tests/test_statistics.py: Wilson intervals, exact
(stratified) McNemar tests, the paired difference of two accuracies, bootstrap intervals, and Wilcoxon's
signed-rank test. Numbers in, numbers out: nothing here reads a file."""

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


def paired_difference(b, c, n, z=Z95):
    """Difference in accuracy (A minus B) over n pairs with b / c discordant, and its 95% Wald interval for
    paired proportions: se = sqrt(b + c - (b - c)^2 / n) / n."""
    diff = (b - c) / n
    se = math.sqrt(max(0.0, b + c - (b - c) ** 2 / n)) / n
    return diff, diff - z * se, diff + z * se


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
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


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
