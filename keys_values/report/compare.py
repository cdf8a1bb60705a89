"""Compare: keys settings against values settings on each task of one evaluation section, paired on the same
examples and pooled over the seeds both have (the exact stratified McNemar test), like with like only: two
settings are paired only when they were trained alike (they differ in their modules alone) and evaluated alike
on the same examples; every pair that cannot be made is listed with the reason."""

from keys_values import identity, statistics
from keys_values.report.collect import RECIPE_WORDS


def seed_interval(evaluations):
    """The 95% interval of a mean accuracy over seeds: a two-level bootstrap (the seeds drawn with replacement,
    then the examples, the same examples for every drawn seed). None without every seed's predictions on the
    same examples."""
    rights = [e.right() for e in evaluations]
    if any(x is None for x in rights) or len({tuple(sorted(x)) for x in rights}) != 1:
        return None
    ids = sorted(rights[0])
    return statistics.seed_bootstrap([[x[i] for i in ids] for x in rights])  # seeds x examples


def recipe_differences(a, b):
    """The training settings two settings differ in (their modules and seeds aside), in words."""
    return [f"{RECIPE_WORDS.get(k, k)} {identity.fmt(a.get(k))} vs {identity.fmt(b.get(k))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not (k == "data" and None in (a.get(k), b.get(k)))]


def pair(k, v, section, task):
    """(cell, reason): the pooled paired comparison of keys setting k against values setting v on one task of
    one section, or None and why it cannot be made."""
    differ = recipe_differences(k.recipe, v.recipe)
    if differ:
        return None, f"trained with other settings ({'; '.join(differ)})"
    seeds = [s for s in k.seeds if s in v.runs]
    if not seeds:
        return None, "no seed in common"
    strata, n, table_a, table_b, examples = [], 0, [], [], None
    for s in seeds:
        a, b = k.evaluation(s, section, task), v.evaluation(s, section, task)
        if a is None or b is None:
            missing = k if a is None else v
            return None, f"{missing.name} seed {s} has no {task} evaluation of this kind"
        same, differ = identity.comparable(a.identity, b.identity)
        if not same:
            return None, f"seed {s} evaluated with another {', '.join(differ)}"
        ra, rb = a.right(), b.right()
        if ra is None or rb is None:
            return None, f"seed {s} has no predictions file"
        if ra.keys() != rb.keys():
            return None, f"seed {s} scored other examples"
        ids = sorted(ra)
        if table_a and ids != examples:
            return None, f"seed {s} scored other examples than seed {seeds[0]}"
        examples = ids
        strata.append(statistics.mcnemar([ra[i] for i in ids], [rb[i] for i in ids])[:2])
        table_a.append([float(ra[i]) for i in ids])
        table_b.append([float(rb[i]) for i in ids])
        n += len(ids)
    nb, nc, p = statistics.stratified_mcnemar(strata)
    return {"b": nb, "c": nc, "p": p, "n": n, "seeds": seeds,
            "diff": statistics.clustered_paired_difference(table_a, table_b)}, None


def compare(settings, section, tasks):
    """([(keys setting, values setting, {task: cell or None})], [reason a pair was not made]): each keys setting
    against each values setting, on the seeds both have, like with like only; a pair of which one setting has an
    evaluation in this section is listed, with why it cannot be made when the other has none."""
    out, unpaired = [], []

    def here(s):
        return any(section in r.evaluations for r in s.runs.values())

    for v in (s for s in settings if s.role == "values"):
        for k in (s for s in settings if s.role == "keys"):
            if not (here(k) or here(v)):
                continue
            cells = {}
            for t in tasks:
                cells[t], why = pair(k, v, section, t)
                if why:
                    unpaired.append(f"{k.name} vs {v.name} on {t}: {why}")
            out.append((k, v, cells))
    return out, unpaired




def evaluations_of(setting, section, task):
    return [e for s in setting.seeds if (e := setting.evaluation(s, section, task)) is not None
            and isinstance(e.metrics.get("accuracy"), (int, float))]


def accuracy_of(setting, section, task):
    """(mean accuracy over the setting's seeds that have the task in this section, their accuracies)."""
    accs = [e.metrics["accuracy"] for e in evaluations_of(setting, section, task)]
    return (sum(accs) / len(accs), accs) if accs else (None, [])


def n_of(setting, section, task):
    """The numbers of examples the setting's seeds were scored on (unrecorded in the original's files)."""
    return {e.metrics["n"] for e in evaluations_of(setting, section, task) if isinstance(e.metrics.get("n"), int)}


def own_tasks(setting, tasks):
    """The tasks of `tasks` a setting's mean is over: those it was trained on (its record names them), else all."""
    trained = setting.trained_tasks
    return [t for t in tasks if t in trained] if any(t in trained for t in tasks) else tasks
