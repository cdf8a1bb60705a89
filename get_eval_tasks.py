"""Collect every experiment's metrics and compare target-module settings (keys vs values) per task.

experiments/ -> all_eval_results.json (the original's structure: {tasks folder: {short experiment name:
{task: metrics}}}, keyed by full task names) and, in each tasks folder, summary.md (accuracy with 95% intervals
per setting and task, trainable parameters, paired tests of each keys setting against each values setting,
pooled over seeds when there are several) and summary.png (the accuracies as grouped bars, and the training
loss over steps of each setting). Reads files only: no model. Folders written by the original code (list
reprs in their names, no experiment.json) are read too. Three steps: collect, compare, render.

    python get_eval_tasks.py --root experiments
"""

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, field

import utils
from common import ArgumentParser, UserError, run_main

SUFFIX = os.path.basename(utils.metrics_path("", ""))  # "_metrics_update.json"
CORE = ["q_proj", "v_proj"]  # the standard LoRA targets every setting of the study starts from
ROLES = {"up_proj": "keys", "gate_proj": "keys", "down_proj": "values"}  # the feed-forward memories' parts
SETTINGS = [CORE] + [CORE + [m] for m in ROLES]  # the study's settings: q,v alone, then with each of them added
ROLE_ORDER = {"base": 0, "core": 1, "keys": 2, "values": 3, "other": 4}
BOOTSTRAP = 2000  # replicates of the interval of a mean over seeds


# ----------------------------------------------------------------------------------------------------
# Collect: every experiment folder with its record, metrics, seed and role


@dataclass
class Run:
    folder: str  # the experiment folder's name
    path: str
    record: dict
    metrics: dict  # task -> metrics
    seed: int
    _right: dict = field(default_factory=dict)

    def right(self, task):
        """{example id: right?} from the task's predictions file (read once), or None without one."""
        if task not in self._right:
            path = utils.predictions_path(self.path, task)
            rows = None
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    rows = [json.loads(line) for line in f if line.strip()]
            self._right[task] = None if rows is None else {r["id"]: r["prediction"] == r["label"] for r in rows}
        return self._right[task]


@dataclass
class Setting:
    name: str  # 'q,v+up (keys)'
    role: str  # base, core (q,v alone), keys, values or other
    runs: dict  # seed -> Run

    @property
    def seeds(self):
        return sorted(self.runs)

    def any_run(self):
        return self.runs[self.seeds[0]]


def modules_of(record):
    return record.get("target_modules") or record.get("args", {}).get("target_modules") or []


def role(record):
    """base (no adapter), core (q,v alone), keys (up or gate added), values (down added) or other."""
    if record.get("kind") == "base":
        return "base"
    extra = [m for m in modules_of(record) if m not in CORE]
    roles = {ROLES.get(m, "other") for m in extra}
    if not extra:
        return "core" if modules_of(record) else "other"
    return roles.pop() if len(roles) == 1 else "other"


def setting_name(record):
    """'base (no adapter)', 'q,v', 'q,v+up (keys)', 'q,v+down (values)', ... from an experiment's record."""
    if record.get("kind") == "base":
        return "base (no adapter)"
    modules = modules_of(record)
    core = [m for m in CORE if m in modules]
    extra = [m for m in modules if m not in core]
    name = ",".join(m.replace("_proj", "") for m in core) or "default"
    if extra:
        roles = sorted({ROLES.get(m, "other") for m in extra})
        name += "+" + ",".join(m.replace("_proj", "") for m in sorted(extra)) + f" ({','.join(roles)})"
    return name


def short_name(folder):
    """The original's short experiment name."""
    for long, short in (("classification-sampleFraction-", "f"), ("epochs-", "e"), ("rank-", "r"), ("dropout-", "d")):
        folder = folder.replace(long, short)
    return folder


def read_metrics(path):
    """A metrics file's contents, or None (with a warning) when it cannot be read."""
    try:
        m = utils.read_json(path, "metrics file")
    except UserError as e:
        print(f"warning: {e}; left out")
        return None
    return m if isinstance(m, dict) else None


def record_of(exp):
    """An experiment's record: experiment.json, or what a folder of the original code says; {} if neither."""
    try:
        return utils.read_experiment(exp)
    except UserError:
        return {}


def collect(root):
    """{tasks folder: [Run]} for every <root>/<tasks>/<experiment>/metrics/ holding a metrics file."""
    tree = {}
    for tasks_folder in sorted(os.listdir(root)):
        folder_path = os.path.join(root, tasks_folder)
        if not os.path.isdir(folder_path):
            continue
        for name in sorted(os.listdir(folder_path)):
            exp = os.path.join(folder_path, name)
            metrics_dir = os.path.join(exp, "metrics")
            if not os.path.isdir(metrics_dir):
                continue
            metrics = {f[: -len(SUFFIX)]: read_metrics(os.path.join(metrics_dir, f))
                       for f in sorted(os.listdir(metrics_dir)) if f.endswith(SUFFIX)}
            metrics = {k: v for k, v in metrics.items() if v is not None}
            if not metrics:
                continue
            record = record_of(exp)
            if not record and os.path.isfile(os.path.join(exp, "experiment.json")):
                record = read_metrics(os.path.join(exp, "experiment.json")) or {}
            seed = record.get("args", {}).get("seed") or utils.DEFAULT_SEED
            tree.setdefault(tasks_folder, []).append(Run(name, exp, record, metrics, seed))
    return tree


def group(runs):
    """The runs grouped into settings (a setting's runs differ only by seed), in reading order: base, q,v,
    keys settings, values settings, others."""
    by_key = {}
    for run in runs:
        by_key.setdefault(re.sub(r"-seed\d+(?=-(4bit|standard)$)", "", run.folder), []).append(run)
    settings, names = [], set()
    for key, members in by_key.items():
        record = members[0].record
        name = setting_name(record)
        if name in names:
            name = f"{name} [{short_name(key)}]"
        names.add(name)
        settings.append(Setting(name, role(record), {r.seed: r for r in members}))
    return sorted(settings, key=lambda s: (ROLE_ORDER[s.role], s.name))


# ----------------------------------------------------------------------------------------------------
# Compare: paired tests of keys against values, pooled over seeds


def mcnemar(a_right, b_right):
    """Exact two-sided McNemar test on paired right/wrong lists: (b, c, p) where b counts examples only A
    gets right and c those only B gets right."""
    b = sum(x and not y for x, y in zip(a_right, b_right))
    c = sum(y and not x for x, y in zip(a_right, b_right))
    return b, c, binomial_p(b, c)


def binomial_p(b, c):
    """Two-sided exact p-value of b successes in b + c fair coin flips."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def stratified_mcnemar(strata):
    """The exact stratified McNemar test over seeds: `strata` is one (b, c) per seed. Under no difference
    every discordant pair, within its seed, is equally likely to favour either setting, so the summed b is
    Binomial(sum of b + c, 1/2) (the Mantel-Haenszel test for matched pairs, each seed's pair of runs on one
    example a stratum). Returns (b, c, p)."""
    b, c = sum(s[0] for s in strata), sum(s[1] for s in strata)
    return b, c, binomial_p(b, c)


def paired_difference(b, c, n, z=1.959964):
    """Difference in accuracy (A minus B) over n pairs with b / c discordant, and its 95% Wald interval for
    paired proportions: se = sqrt(b + c - (b - c)^2 / n) / n."""
    diff = (b - c) / n
    se = math.sqrt(max(0.0, b + c - (b - c) ** 2 / n)) / n
    return diff, diff - z * se, diff + z * se


def seed_interval(runs, task):
    """The 95% interval of a mean accuracy over seeds: a two-level bootstrap (the seeds drawn with replacement,
    then the examples, the same examples for every drawn seed). None without every seed's predictions."""
    import numpy as np

    rights = [r.right(task) for r in runs]
    if any(x is None for x in rights) or len({tuple(sorted(x)) for x in rights}) != 1:
        return None
    ids = sorted(rights[0])
    table = np.array([[x[i] for i in ids] for x in rights], dtype=float)  # seeds x examples
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, len(runs), size=(BOOTSTRAP, len(runs)))
    examples = rng.integers(0, len(ids), size=(BOOTSTRAP, len(ids)))
    means = np.array([table[s][:, e].mean() for s, e in zip(seeds, examples)])
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def compare(settings, tasks):
    """[(keys setting, values setting, {task: cell or None})]: each keys setting against each values setting
    on the seeds both have. A cell: b, c, p, n (pairs) and the difference with its interval."""
    out = []
    for v in (s for s in settings if s.role == "values"):
        for k in (s for s in settings if s.role == "keys"):
            seeds = [s for s in k.seeds if s in v.runs]
            cells = {}
            for t in tasks:
                strata, n = [], 0
                for s in seeds:
                    a, b = k.runs[s].right(t), v.runs[s].right(t)
                    if a is None or b is None or a.keys() != b.keys():
                        break
                    ids = sorted(a)
                    strata.append(mcnemar([a[i] for i in ids], [b[i] for i in ids])[:2])
                    n += len(ids)
                else:
                    if strata:
                        nb, nc, p = stratified_mcnemar(strata)
                        cells[t] = {"b": nb, "c": nc, "p": p, "n": n, "diff": paired_difference(nb, nc, n)}
                        continue
                cells[t] = None
            out.append((k, v, seeds, cells))
    return out


# ----------------------------------------------------------------------------------------------------
# Render: summary.md and summary.png


def pct(x):
    return f"{100 * x:.1f}"


def interval(lo_hi):
    return "[–]" if not lo_hi else f"[{pct(lo_hi[0])}, {pct(lo_hi[1])}]"


def accuracy_of(setting, task):
    """(mean accuracy over the setting's seeds that have the task, their accuracies), or (None, [])."""
    accs = [r.metrics[task]["accuracy"] for r in setting.runs.values()
            if task in r.metrics and isinstance(r.metrics[task].get("accuracy"), (int, float))]
    return (sum(accs) / len(accs), accs) if accs else (None, [])


def cell(setting, task):
    mean, accs = accuracy_of(setting, task)
    if mean is None:
        return "–"
    if len(setting.runs) == 1:
        return f"{pct(mean)} {interval(setting.any_run().metrics[task].get('accuracy_ci95'))}"
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
    return f"{pct(mean)} {interval(seed_interval(list(setting.runs.values()), task))} ±{pct(sd)}"


def majority(settings, task):
    for s in settings:
        for r in s.runs.values():
            m = r.metrics.get(task, {}).get("majority_baseline")
            if isinstance(m, (int, float)):
                return pct(m)
    return "–"


def accuracy_table(settings, tasks, several, seeds):
    if several:
        intro = (f"Accuracy (%) on each task's evaluation rows: the mean over seeds {', '.join(map(str, seeds))} with its "
                 "95% interval (a two-level bootstrap: the seeds, then the examples) and ± the standard deviation over "
                 "seeds; `mean` is the unweighted mean over tasks.")
    else:
        intro = "Accuracy (%) on each task's evaluation rows, with its 95% Wilson interval; `mean` is the unweighted mean over tasks."
    lines = [intro + " `keys` settings add a LoRA adapter to `up_proj` or `gate_proj`, `values` to `down_proj`, both on "
                     "top of `q_proj v_proj`.", "",
             "| setting | " + " | ".join(tasks) + " | mean | trainable params | scoring |" + (" seeds |" if several else ""),
             "|---" * (len(tasks) + 4 + several) + "|"]
    for s in settings:
        means = [accuracy_of(s, t)[0] for t in tasks]
        mean = pct(sum(means) / len(means)) if None not in means else "–"
        params = s.any_run().record.get("trainable_params")
        scoring = ",".join(sorted({m.get("scoring", "?") for r in s.runs.values() for m in r.metrics.values()}))
        seed_cell = f" {','.join(map(str, s.seeds)) if s.role != 'base' else '–'} |" if several else ""
        lines.append(f"| {s.name} | " + " | ".join(cell(s, t) for t in tasks) + f" | {mean} | "
                     f"{'–' if params is None else f'{params:,}'} | {scoring} |" + seed_cell)
    lines.append("| majority class | " + " | ".join(majority(settings, t) for t in tasks) + " | | | |" + (" |" if several else ""))
    return lines


def seed_table(settings, tasks):
    lines = ["", "## Each seed", "", "| setting | seed | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 2) + "|"]
    for s in settings:
        for seed in s.seeds:
            m = s.runs[seed].metrics
            lines.append(f"| {s.name} | {seed if s.role != 'base' else '–'} | " + " | ".join(
                pct(m[t]["accuracy"]) if isinstance(m.get(t, {}).get("accuracy"), (int, float)) else "–"
                for t in tasks) + " |")
    return lines


def comparison_cell(c, several):
    if c is None:
        return "–"
    if several:
        d, lo, hi = c["diff"]
        return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({c['b']}/{c['c']}, p={c['p']:.3g})"
    return f"{100 * c['diff'][0]:+.1f} ({c['b']}/{c['c']}, p={c['p']:.3g})"


def comparison_table(comparisons, tasks, several):
    if several:
        intro = ("Difference in accuracy (points, keys minus values, mean over the seeds both settings have) with its "
                 "95% interval (Wald, for paired proportions), then b/c: (seed, example) pairs only the keys setting got "
                 "right / only the values setting got right, summed over seeds, and the p-value of the exact stratified "
                 "McNemar test: within each seed every discordant pair is, under no difference, equally likely to "
                 "favour either setting, so the summed b is Binomial(b + c, 1/2) (a Mantel–Haenszel test with each "
                 "seed's pair of runs on one example as a stratum).")
    else:
        intro = ("Difference in accuracy (points, keys minus values), then b/c: examples only the keys setting got right "
                 "/ only the values setting got right, and the exact two-sided McNemar p-value.")
    lines = ["", "## Keys against values, paired on the same examples", "", intro, "",
             "| comparison | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {k.name} vs {v.name} | " + " | ".join(comparison_cell(cells[t], several) for t in tasks) + " |"
              for k, v, _, cells in comparisons]
    return lines


def training_line(settings, several, seeds):
    lora = [s.any_run().record for s in settings if s.any_run().record.get("kind") == "lora"]
    if not lora:
        return []
    a = lora[0]["args"]
    seed = f"seeds {', '.join(map(str, seeds))}" if several else f"seed {a.get('seed')}"
    return ["", f"Training: base `{a.get('pretrained_ckpt')}`, loss on `{a.get('loss_on', 'all')}`, learning rate "
                f"{a.get('learning_rate', 2e-4)}, {a.get('epochs')} epochs (max steps {a.get('max_steps', -1)}), rank "
                f"{a.get('lora_r')}, dropout {a.get('dropout')}, {'4-bit' if a.get('bnb') else 'standard'} base, {seed}, "
                f"data root `{a.get('data_root') or '.'}`."]


def summary_md(tasks_folder, settings, tasks, comparisons):
    """The report: one seed as before; several seeds add their spread, a table of each seed, pooled tests."""
    seeds = sorted({s for st in settings if st.role != "base" for s in st.seeds})
    several = any(len(s.runs) > 1 for s in settings)
    lines = [f"# Keys vs values: {tasks_folder}", "", *accuracy_table(settings, tasks, several, seeds)]
    if several:
        lines += seed_table(settings, tasks)
    if comparisons:
        lines += comparison_table(comparisons, tasks, several)
    return "\n".join(lines + training_line(settings, several, seeds)) + "\n"


def loss_curve(run):
    """[(step, training loss)] from the run's TensorBoard logs (tensorboard's own event reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = os.path.join(run.path, "logs")
    if not os.path.isdir(logs):
        return []
    acc = EventAccumulator(logs, size_guidance={"scalars": 0})
    acc.Reload()
    if "train/loss" not in acc.Tags().get("scalars", []):
        return []
    return sorted({e.step: e.value for e in acc.Scalars("train/loss")}.items())  # a resumed run logs a step once


def summary_png(path, tasks_folder, settings, tasks):
    """Left: accuracy per task as grouped bars (with intervals) and the majority class; right: the training
    loss over steps of each setting, the mean over its seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = tasks + ["mean"]
    width = 0.8 / max(1, len(settings))
    fig, (ax, lx) = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(groups) * max(1, len(settings)) / 3) + 5, 4.5),
                                 gridspec_kw={"width_ratios": [max(2, len(groups)), 2]})
    colours = plt.get_cmap("tab10")
    for k, s in enumerate(settings):
        xs, ys, lo, hi = [], [], [], []
        for g, t in enumerate(groups):
            if t == "mean":
                means = [accuracy_of(s, x)[0] for x in tasks]
                if None in means:
                    continue
                y, ci = sum(means) / len(means), None  # no interval drawn for the mean
            else:
                y, _ = accuracy_of(s, t)
                if y is None:
                    continue
                ci = (s.any_run().metrics[t].get("accuracy_ci95") if len(s.runs) == 1
                      else seed_interval(list(s.runs.values()), t))
            xs.append(g - 0.4 + width * (k + 0.5))
            ys.append(100 * y)
            lo.append(100 * (y - ci[0]) if ci else math.nan)
            hi.append(100 * (ci[1] - y) if ci else math.nan)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=s.name, color=colours(k % 10))
        curves = [loss_curve(r) for r in s.runs.values()]
        steps = sorted(set.intersection(*[{st for st, _ in c} for c in curves])) if all(curves) else []
        if steps:
            mean_loss = [sum(dict(c)[st] for c in curves) / len(curves) for st in steps]
            lx.plot(steps, mean_loss, marker=".", color=colours(k % 10), label=s.name)
    for g, t in enumerate(tasks):
        m = majority(settings, t)
        if m != "–":
            ax.hlines(float(m), g - 0.45, g + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label="majority class" if g == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy (%), 95% interval")
    ax.set_ylim(0, 105)
    ax.set_title(f"Keys vs values: {tasks_folder}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    lx.set_title("training loss (mean over seeds)")
    lx.set_xlabel("optimizer step")
    if not lx.lines:
        lx.text(0.5, 0.5, "no training loss logged\n(--logging_steps above the runs' steps?)", ha="center",
                va="center", transform=lx.transAxes)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--root", default="experiments", help="the experiments folder")
    p.add_argument("--no_plot", action="store_true", help="skip summary.png")
    args = p.parse_args(argv)
    if not os.path.isdir(args.root):
        raise UserError(f"--root {args.root} does not exist")
    tree = collect(args.root)
    if not tree:
        raise UserError(f"no metrics under {args.root}/<tasks>/<experiment>/metrics/: evaluate an experiment first")
    all_results = {tf: {short_name(r.folder): r.metrics for r in runs} for tf, runs in tree.items()}
    utils.write_json(os.path.join(args.root, "all_eval_results.json"), all_results)
    for tasks_folder, runs in tree.items():
        settings = group(runs)
        named = [t for t in utils.tasks_of_folder(tasks_folder) if any(t in r.metrics for r in runs)]
        tasks = named + sorted({t for r in runs for t in r.metrics} - set(named))
        folder = os.path.join(args.root, tasks_folder)
        utils.atomic_write(os.path.join(folder, "summary.md"),
                           summary_md(tasks_folder, settings, tasks, compare(settings, tasks)))
        if not args.no_plot:
            summary_png(os.path.join(folder, "summary.png"), tasks_folder, settings, tasks)
        print(f"{folder}/summary.md ({len(settings)} settings, {len(tasks)} tasks)")
    print(f"{args.root}/all_eval_results.json")


if __name__ == "__main__":
    run_main(main)
