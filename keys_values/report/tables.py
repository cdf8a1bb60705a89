"""Tables: summary.md, one block per evaluation section (usually one): accuracy per setting and task with its
interval and the majority class, the answers that name no label, each seed, keys against values paired on the
same examples; then what each adapter changed and the training recipes."""

import json
import math

from keys_values import identity
from keys_values.report.collect import RECIPE_WORDS, SECTION_KEYS, describe_section, norm_profiles, off_task
from keys_values.report.compare import accuracy_of, compare, evaluations_of, n_of, own_tasks, seed_interval


def pct(x):
    return f"{100 * x:.1f}"


def interval(lo_hi):
    return "[–]" if not lo_hi else f"[{pct(lo_hi[0])}, {pct(lo_hi[1])}]"


CONSTANT, AT_MAJORITY = "†", "‡"
MARKS = (f"{CONSTANT} one answer to every row (a constant predictor); {AT_MAJORITY} the interval holds the majority "
         "class's accuracy: no better than always answering the most frequent label.")


def flags(evs, lo_hi):
    """The marks of a cell: CONSTANT when every evaluation gave one answer to all its rows, AT_MAJORITY when the
    accuracy's interval holds the majority class's share (or the accuracy is at most that share)."""
    marks = ""
    counts = [e.metrics.get("prediction_counts") for e in evs]
    if counts and all(isinstance(c, dict) and len(c) == 1 for c in counts):
        marks += CONSTANT
    majority = [e.metrics.get("majority_baseline") for e in evs]
    accs = [e.metrics.get("accuracy") for e in evs]
    if majority and all(isinstance(m, (int, float)) for m in majority) and all(isinstance(a, float) for a in accs):
        share, mean = sum(majority) / len(majority), sum(accs) / len(accs)
        if mean <= share + 1e-12 or (lo_hi and lo_hi[0] <= share + 1e-12):
            marks += AT_MAJORITY
    return marks


def cell(setting, section, task, show_n):
    mean, accs = accuracy_of(setting, section, task)
    if mean is None:
        return "–"
    evs = evaluations_of(setting, section, task)
    ns = sorted(n_of(setting, section, task))
    n = f" n={'/'.join(map(str, ns))}" if show_n and ns else ""
    if len(evs) == 1:
        lo_hi = evs[0].metrics.get("accuracy_ci95")
        return f"{pct(mean)} {interval(lo_hi)}{flags(evs, lo_hi)}{n}"
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
    lo_hi = seed_interval(evs)
    return f"{pct(mean)} {interval(lo_hi)}{flags(evs, lo_hi)} ±{pct(sd)}{n}"


def majority(settings, section, task):
    for s in settings:
        for e in evaluations_of(s, section, task):
            if isinstance(e.metrics.get("majority_baseline"), (int, float)):
                return pct(e.metrics["majority_baseline"])
    return "–"


def column_n(settings, section, task):
    """The number of examples every row of a task's column was scored on; None when the rows differ (each cell
    then says its own), "" when no row recorded it."""
    ns = set().union(*(n_of(s, section, task) for s in settings))
    return "" if not ns else ns.pop() if len(ns) == 1 else None


def accuracy_table(settings, section, tasks, several, seeds):
    if several:
        intro = (f"Accuracy (%) on each task's evaluation rows: the mean over seeds {', '.join(map(str, seeds))} with its "
                 "95% interval (a two-level bootstrap: the seeds, then the examples) and ± the standard deviation over "
                 "seeds; `mean` is the unweighted mean over the tasks each row was trained on.")
    else:
        intro = ("Accuracy (%) on each task's evaluation rows, with its 95% Wilson interval; `mean` is the unweighted "
                 "mean over the tasks each row was trained on.")
    ns = {t: column_n(settings, section, t) for t in tasks}
    head = [t if ns[t] in (None, "") else f"{t} (n={ns[t]})" for t in tasks]
    lines = [intro + " `keys` settings add a LoRA adapter to the feed-forward's first layer (`up_proj` or `gate_proj` on "
                     "Llama, `c_fc` on GPT-2), `values` to its second (`down_proj`, `mlp.c_proj`), both on top of the "
                     "attention's query and value projections; n: the examples scored.", "",
             "| setting | " + " | ".join(head) + " | mean | trainable params |" + (" seeds |" if several else ""),
             "|---" * (len(tasks) + 3 + several) + "|"]
    for s in settings:
        means = [accuracy_of(s, section, t)[0] for t in own_tasks(s, tasks)]  # over the tasks it was trained on
        mean = pct(sum(means) / len(means)) if None not in means else "–"
        params = s.any_run().record.get("trainable_params")
        seed_cell = f" {','.join(map(str, s.seeds)) if s.role != 'base' else '–'} |" if several else ""
        lines.append(f"| {s.name} | " + " | ".join(cell(s, section, t, ns[t] is None) for t in tasks) + f" | {mean} | "
                     f"{'–' if params is None else f'{params:,}'} |" + seed_cell)
    lines.append("| majority class | " + " | ".join(majority(settings, section, t) for t in tasks) + " | | |"
                 + (" |" if several else ""))
    if any(CONSTANT in line or AT_MAJORITY in line for line in lines[4:]):
        lines += ["", MARKS]
    return lines


def invalid_table(settings, section, tasks, several):
    """The share of answers that name no label (generation only; the mean over seeds)."""
    if dict(zip(SECTION_KEYS, section))["scoring"] != "generate":
        return []
    lines = ["", f"Answers that name no label (%{', mean over seeds' if several else ''}): an answer counts as the "
                 "label it starts with, case and punctuation forgiven (`False. The passage...` is `false`).", "",
             "| setting | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for s in settings:
        vals = []
        for t in tasks:
            rates = [e.metrics["invalid_rate"] for e in evaluations_of(s, section, t)
                     if isinstance(e.metrics.get("invalid_rate"), (int, float))]
            vals.append(pct(sum(rates) / len(rates)) if rates else "–")
        lines.append(f"| {s.name} | " + " | ".join(vals) + " |")
    return lines


def seed_table(settings, section, tasks):
    lines = ["", "### Each seed", "", "| setting | seed | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 2) + "|"]
    for s in settings:
        for seed in s.seeds:
            cells = []
            for t in tasks:
                e = s.evaluation(seed, section, t)
                cells.append(pct(e.metrics["accuracy"]) if e and isinstance(e.metrics.get("accuracy"), (int, float))
                             else "–")
            lines.append(f"| {s.name} | {seed if s.role != 'base' else '–'} | " + " | ".join(cells) + " |")
    return lines


def comparison_cell(c, several):
    if c is None:
        return "–"
    if several:
        d, lo, hi = c["diff"]
        return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({c['b']}/{c['c']}, p={c['p']:.3g})"
    d, lo, hi = c["diff"]
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({c['b']}/{c['c']}, p={c['p']:.3g})"


def comparison_table(comparisons, unpaired, tasks, several):
    if several:
        intro = ("Difference in accuracy (points, keys minus values, mean over the seeds both settings have) with its "
                 "95% interval (a bootstrap over the examples with the seeds inside, as the same examples come back under "
                 "every seed, never narrower than Newcombe's paired interval on the examples), then b/c: (seed, example) pairs only the keys setting got "
                 "right / only the values setting got right, summed over seeds, and the p-value of the exact stratified "
                 "McNemar test: within each seed every discordant pair is, under no difference, equally likely to "
                 "favour either setting, so the summed b is Binomial(b + c, 1/2) (a Mantel–Haenszel test with each "
                 "seed's pair of runs on one example as a stratum).")
    else:
        intro = ("Difference in accuracy (points, keys minus values) with its 95% interval (Newcombe's, for paired "
                 "proportions), then b/c: examples only the keys setting got right / only the values setting got "
                 "right, and the exact two-sided McNemar p-value.")
    lines = ["", "### Keys against values, paired on the same examples", "",
             intro + " Two settings are paired only when they were trained alike (they differ in their modules alone) "
                     "and evaluated alike on the same examples.", "",
             "| comparison | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {k.name} vs {v.name} | " + " | ".join(comparison_cell(cells[t], several) for t in tasks) + " |"
              for k, v, cells in comparisons]
    if unpaired:
        lines += ["", "Not paired (–):"] + [f"- {u}" for u in unpaired]
    return lines


def recipe_words(recipe, keys):
    words = []
    for k in keys:
        v = recipe.get(k)
        if k == "max_steps" and v in (None, -1):
            continue
        if k == "data":
            words.append(f"training rows {v}" if v else "training rows unrecorded")
            continue
        words.append(f"{RECIPE_WORDS.get(k, k)} {identity.fmt(v)}")
    return ", ".join(words)


def training_lines(settings):
    """The recipe the rows share, then each row's own where the rows differ, and the epochs each trained."""
    lora = [s for s in settings if s.recipe]
    if not lora:
        return []
    keys = [k for k in RECIPE_WORDS if any(k in s.recipe for s in lora)]
    common = [k for k in keys if len({json.dumps(s.recipe.get(k), sort_keys=True) for s in lora}) == 1]
    lines = ["", f"Training (every row): {recipe_words(lora[0].recipe, common)}."]
    differ = [k for k in keys if k not in common]
    if differ:
        lines += ["", "Where the rows differ (they are not paired with each other):"]
        lines += [f"- {s.name}: {recipe_words(s.recipe, differ)}" for s in lora]
    trained = {s.name: sorted({r.record.get("epochs_trained") for r in s.runs.values()}, key=str) for s in lora}
    if any(v != [None] for v in trained.values()):
        lines += ["", "Epochs actually trained: " + "; ".join(
            f"{name} {'/'.join('?' if e is None else f'{e:g}' for e in v)}" for name, v in trained.items())]
    return lines


def norms_table(settings):
    profiles, relative = norm_profiles(settings)
    if not profiles:
        return []
    lines = ["", "## What each adapter changed", "",
             "||dW||_F = (alpha / r) ||B A||_F of each adapted module, from the adapter's weights: the mean over layers "
             "(modules of one role in one layer combined) and over seeds; in brackets, the mean of ||dW||_F / ||W||_F "
             "against the base weight (written by the evaluation). summary.png draws it layer by layer.", "",
             "| setting | attention | keys | values |", "|---|---|---|---|"]
    for name, groups in profiles.items():
        cells = []
        for g in ("attention", "keys", "values"):
            if g not in groups:
                cells.append("–")
                continue
            vals = list(groups[g].values())
            rel = relative.get(name, {}).get(g)
            cells.append(f"{sum(vals) / len(vals):.3g}" + (f" ({rel:.2e})" if rel is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def summary_md(tasks_folder, settings, tasks, sections, left_out=()):
    """The report: one block per evaluation section (usually one), the adapters' norms, the training recipes,
    then what it could not show (`left_out`: collect.left_out's lines) and what was evaluated off its tasks."""
    seeds = sorted({s for st in settings if st.role != "base" for s in st.seeds})
    several = any(len(s.runs) > 1 for s in settings)
    lines = [f"# Keys vs values: {tasks_folder}"]
    for i, section in enumerate(sections):
        members = [s for s in settings if any(section in r.evaluations for r in s.runs.values())]
        if len(sections) > 1:
            lines += ["", f"## Evaluation {i + 1} of {len(sections)}: {describe_section(section)}"]
        else:
            lines += ["", f"Evaluation: {describe_section(section)}."]
        lines += ["", *accuracy_table(members, section, tasks, several, seeds), *invalid_table(members, section, tasks, several)]
        if several:
            lines += seed_table(members, section, tasks)
        comparisons, unpaired = compare(settings, section, tasks)
        if comparisons:
            lines += comparison_table(comparisons, unpaired, tasks, several)
    notes = []
    if left_out:
        notes += ["", "## Not in this report", ""] + [f"- {line}" for line in left_out]
    other = off_task(settings)
    if other:
        notes += ["", "Evaluated on tasks they were not trained on:", ""] + [f"- {line}" for line in other]
    return "\n".join(lines + norms_table(settings) + training_lines(settings) + notes) + "\n"
