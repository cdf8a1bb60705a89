"""Collect every experiment's metrics and compare target-module settings (keys vs values) per task.

experiments/ -> all_eval_results.json (the original's structure: {tasks folder: {short experiment name:
{task: metrics}}}, keyed by full task names; an evaluation other than the default one is keyed
`<short name>@<its metrics folder>`) and, in each tasks folder, summary.md and summary.png. Reads files only: no
model. Folders written by the original code (list reprs in their names, no experiment.json) are read too.

Only like is compared with like. Runs are grouped into settings by their training identity (everything that
changes the adapter, the seed aside); evaluations into sections by their evaluation identity (scoring, precision,
rows, prompt budget, generation length). Within a section, a keys setting is paired with a values setting on a
task only when both were trained with the same recipe (they differ in their modules and nothing else), and
both seeds' evaluations have the same identity and the same examples; every pair that cannot be made is listed
with the reason. Three steps: collect, compare, render.

    python get_eval_tasks.py --root experiments
"""

import json
import math
import os
import re
from dataclasses import dataclass, field

import identity
import norms
import roles
import utils
from common import ArgumentParser, UserError, run_main

SUFFIX = os.path.basename(utils.metrics_path("", ""))  # "_metrics_update.json"
ROLE_ORDER = {"base": 0, "core": 1, "keys": 2, "values": 3, "other": 4}
BOOTSTRAP = 2000  # replicates of the interval of a mean over seeds
SECTION_KEYS = ("scoring", "max_test_samples", "max_new_tokens", "prompt_budget", "bnb", "dtype")
RECIPE_WORDS = {"model": "base", "epochs": "epochs", "max_steps": "max steps", "learning_rate": "learning rate",
                "loss_on": "loss on", "lora_r": "rank", "lora_alpha": "alpha", "dropout": "dropout",
                "per_device_train_batch_size": "batch", "gradient_accumulation_steps": "accumulation",
                "processes": "processes", "max_seq_length": "block", "max_samples": "max samples",
                "train_sample_fraction": "sample fraction", "shorten_to_block": "shortened", "bnb": "4-bit",
                "dtype": "dtype", "data": "training rows"}


# ----------------------------------------------------------------------------------------------------
# Collect: every experiment folder with its record, its evaluations, seed and role


@dataclass
class Evaluation:
    """One task's metrics from one metrics folder of one run."""
    path: str  # the experiment folder
    folder: str  # its metrics folder's name
    task: str
    metrics: dict
    _right: object = field(default=None, repr=False)

    @property
    def identity(self):
        """The evaluation identity recorded with the metrics; for older files, what their settings say
        (prompt budget and examples unknown); for the original's files, scoring 'original' (sampled)."""
        m = self.metrics
        if isinstance(m.get("identity"), dict):
            return m["identity"]
        return identity.evaluation(m.get("scoring", "original"), m.get("max_test_samples"), m.get("max_new_tokens"),
                                   None, m.get("bnb"), m.get("dtype"), None)

    @property
    def section(self):
        return tuple(self.identity.get(k) for k in SECTION_KEYS)

    def right(self):
        """{example id: right?} from the task's predictions file (read once; skipped rows left out), or None."""
        if self._right is None:
            path = utils.predictions_path(self.path, self.task, self.folder)
            rows = None
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    rows = [json.loads(line) for line in f if line.strip()]
            self._right = False if rows is None else \
                {r["id"]: r["prediction"] == r["label"] for r in rows if not r.get("skipped")}
        return self._right or None


@dataclass
class Run:
    folder: str  # the experiment folder's name
    path: str
    record: dict
    seed: int
    evaluations: dict  # section -> {task: Evaluation}

    def metrics(self, section):
        return {t: e.metrics for t, e in self.evaluations.get(section, {}).items()}


@dataclass
class Setting:
    name: str  # 'q,v+up (keys)'
    role: str  # base, core (attention alone), keys, values or other
    runs: dict  # seed -> Run
    recipe: dict  # the training identity without seed and modules ({} for the base or unknown)

    @property
    def seeds(self):
        return sorted(self.runs)

    def any_run(self):
        return self.runs[self.seeds[0]]

    def evaluation(self, seed, section, task):
        return self.runs[seed].evaluations.get(section, {}).get(task) if seed in self.runs else None


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
        path = os.path.join(exp, "experiment.json")
        return (read_metrics(path) or {}) if os.path.isfile(path) else {}


def metrics_folders(exp):
    """The experiment's metrics folders: metrics/ first, then metrics-<parts>/."""
    names = [n for n in os.listdir(exp) if (n == "metrics" or n.startswith("metrics-"))
             and os.path.isdir(os.path.join(exp, n))]
    return sorted(names, key=lambda n: (n != "metrics", n))


def collect(root):
    """{tasks folder: [Run]} for every <root>/<tasks>/<experiment>/metrics*/ holding a metrics file."""
    tree = {}
    for tasks_folder in sorted(os.listdir(root)):
        folder_path = os.path.join(root, tasks_folder)
        if not os.path.isdir(folder_path):
            continue
        for name in sorted(os.listdir(folder_path)):
            exp = os.path.join(folder_path, name)
            if not os.path.isdir(exp):
                continue
            evaluations = {}
            for mf in metrics_folders(exp):
                for f in sorted(os.listdir(os.path.join(exp, mf))):
                    if f.endswith(SUFFIX) and (m := read_metrics(os.path.join(exp, mf, f))) is not None:
                        ev = Evaluation(exp, mf, f[: -len(SUFFIX)], m)
                        evaluations.setdefault(ev.section, {}).setdefault(ev.task, ev)
            if not evaluations:
                continue
            record = record_of(exp)
            seed = record.get("args", {}).get("seed") or utils.DEFAULT_SEED
            tree.setdefault(tasks_folder, []).append(Run(name, exp, record, seed, evaluations))
    return tree


def modules_of(record):
    return record.get("target_modules") or record.get("args", {}).get("target_modules") or []


def roles_of_record(record):
    """{adapted module: role}: as recorded, else from the module names (the Llama names of older records and
    of the original's folders)."""
    if record.get("module_roles"):
        return dict(record["module_roles"])
    return roles.roles_of(modules_of(record), record.get("model_type"))


def role(record):
    """base (no adapter), core (attention alone), keys, values or other."""
    if record.get("kind") == "base":
        return "base"
    return roles.setting_role(roles_of_record(record)) if modules_of(record) else "other"


def setting_name(record):
    """'base (no adapter)', 'q,v', 'q,v+up (keys)', 'q,v+down (values)', ... from an experiment's record."""
    if record.get("kind") == "base":
        return "base (no adapter)"
    modules = modules_of(record)
    return roles.setting_label(modules, roles_of_record(record)) if modules else "default"


def recipe_of(record):
    """The training identity without the seed and the adapted modules: what two settings must share to be
    compared (the base and records without one: {})."""
    if record.get("kind") != "lora":
        return {}
    ident = record.get("identity")
    if not isinstance(ident, dict):
        a = record.get("args", {})
        ident = {k: a.get(k) for k in ("epochs", "max_steps", "learning_rate", "loss_on", "lora_r", "lora_alpha",
                                       "dropout", "per_device_train_batch_size", "gradient_accumulation_steps",
                                       "max_seq_length", "max_samples", "train_sample_fraction", "bnb")}
        ident["model"] = identity.model_name(a["pretrained_ckpt"]) if a.get("pretrained_ckpt") else None
    return {k: v for k, v in ident.items() if k not in ("seed", "target_modules", "tasks")}


def short_name(folder):
    """The original's short experiment name."""
    for long, short in (("classification-sampleFraction-", "f"), ("epochs-", "e"), ("rank-", "r"), ("dropout-", "d")):
        folder = folder.replace(long, short)
    return folder


def group(runs):
    """The runs grouped into settings (a setting's runs differ only by seed), in reading order: base, q,v,
    keys settings, values settings, others. Two settings of one name (other recipes) are told apart by their
    folder's name."""
    by_key = {}
    for run in runs:
        ident = run.record.get("identity")
        key = json.dumps(identity.without_seed(ident), sort_keys=True) if isinstance(ident, dict) else \
            re.sub(r"-seed\d+(?=(-h[0-9a-f]{8})?-(4bit|standard)$)", "", run.folder)
        by_key.setdefault(key, []).append(run)
    settings = []
    for members in by_key.values():
        record = members[0].record
        settings.append(Setting(setting_name(record), role(record), {r.seed: r for r in members}, recipe_of(record)))
    counts = {}
    for s in settings:
        counts[s.name] = counts.get(s.name, 0) + 1
    for s in settings:
        if counts[s.name] > 1:
            folder = re.sub(r"-seed\d+", "", s.any_run().folder)
            s.name = f"{s.name} [{short_name(folder)}]"
    return sorted(settings, key=lambda s: (ROLE_ORDER[s.role], s.name))


def sections_of(settings):
    """Every evaluation section of the settings' runs, the one with the most adapter runs first."""
    count = {}
    for s in settings:
        for r in s.runs.values():
            for sec in r.evaluations:
                count[sec] = count.get(sec, 0) + (s.role != "base")
    return sorted(count, key=lambda sec: (-count[sec], json.dumps(sec)))


def describe_section(section):
    """An evaluation section in words: 'generate, at most 1000 rows, 20 new tokens, prompts of at most 8172
    tokens, fp32'."""
    s = dict(zip(SECTION_KEYS, section))
    words = [str(s["scoring"])]
    if s["max_test_samples"] is not None:
        words.append(f"at most {s['max_test_samples']} rows")
    if s["scoring"] == "generate" and s["max_new_tokens"] is not None:
        words.append(f"{s['max_new_tokens']} new tokens")
    if s["prompt_budget"] is not None:
        words.append(f"prompts of at most {s['prompt_budget']} tokens")
    if s["dtype"] is not None:
        words.append(("4-bit base computing in " if s["bnb"] else "") + str(s["dtype"]))
    return ", ".join(words)


# ----------------------------------------------------------------------------------------------------
# Compare: paired tests of keys against values, pooled over seeds, like with like only


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


def seed_interval(evaluations):
    """The 95% interval of a mean accuracy over seeds: a two-level bootstrap (the seeds drawn with replacement,
    then the examples, the same examples for every drawn seed). None without every seed's predictions on the
    same examples."""
    import numpy as np

    rights = [e.right() for e in evaluations]
    if any(x is None for x in rights) or len({tuple(sorted(x)) for x in rights}) != 1:
        return None
    ids = sorted(rights[0])
    table = np.array([[x[i] for i in ids] for x in rights], dtype=float)  # seeds x examples
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, len(evaluations), size=(BOOTSTRAP, len(evaluations)))
    examples = rng.integers(0, len(ids), size=(BOOTSTRAP, len(ids)))
    means = np.array([table[s][:, e].mean() for s, e in zip(seeds, examples)])
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


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
    strata, n = [], 0
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
        strata.append(mcnemar([ra[i] for i in ids], [rb[i] for i in ids])[:2])
        n += len(ids)
    nb, nc, p = stratified_mcnemar(strata)
    return {"b": nb, "c": nc, "p": p, "n": n, "seeds": seeds, "diff": paired_difference(nb, nc, n)}, None


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


# ----------------------------------------------------------------------------------------------------
# Render: summary.md and summary.png


def pct(x):
    return f"{100 * x:.1f}"


def interval(lo_hi):
    return "[–]" if not lo_hi else f"[{pct(lo_hi[0])}, {pct(lo_hi[1])}]"


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


def cell(setting, section, task, show_n):
    mean, accs = accuracy_of(setting, section, task)
    if mean is None:
        return "–"
    evs = evaluations_of(setting, section, task)
    ns = sorted(n_of(setting, section, task))
    n = f" n={'/'.join(map(str, ns))}" if show_n and ns else ""
    if len(evs) == 1:
        return f"{pct(mean)} {interval(evs[0].metrics.get('accuracy_ci95'))}{n}"
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
    return f"{pct(mean)} {interval(seed_interval(evs))} ±{pct(sd)}{n}"


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
                 "seeds; `mean` is the unweighted mean over tasks.")
    else:
        intro = ("Accuracy (%) on each task's evaluation rows, with its 95% Wilson interval; `mean` is the unweighted "
                 "mean over tasks.")
    ns = {t: column_n(settings, section, t) for t in tasks}
    head = [t if ns[t] in (None, "") else f"{t} (n={ns[t]})" for t in tasks]
    lines = [intro + " `keys` settings add a LoRA adapter to the feed-forward's first layer (`up_proj` or `gate_proj` on "
                     "Llama, `c_fc` on GPT-2), `values` to its second (`down_proj`, `mlp.c_proj`), both on top of the "
                     "attention's query and value projections; n: the examples scored.", "",
             "| setting | " + " | ".join(head) + " | mean | trainable params |" + (" seeds |" if several else ""),
             "|---" * (len(tasks) + 3 + several) + "|"]
    for s in settings:
        means = [accuracy_of(s, section, t)[0] for t in tasks]
        mean = pct(sum(means) / len(means)) if None not in means else "–"
        params = s.any_run().record.get("trainable_params")
        seed_cell = f" {','.join(map(str, s.seeds)) if s.role != 'base' else '–'} |" if several else ""
        lines.append(f"| {s.name} | " + " | ".join(cell(s, section, t, ns[t] is None) for t in tasks) + f" | {mean} | "
                     f"{'–' if params is None else f'{params:,}'} |" + seed_cell)
    lines.append("| majority class | " + " | ".join(majority(settings, section, t) for t in tasks) + " | | |"
                 + (" |" if several else ""))
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
    return f"{100 * c['diff'][0]:+.1f} ({c['b']}/{c['c']}, p={c['p']:.3g})"


def comparison_table(comparisons, unpaired, tasks, several):
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


def norms_of(run):
    """[{module, layer, name, role, delta_fro, [weight_fro, relative]}] of a run's adapter: written by the
    evaluation beside the metrics, or computed from the adapter's tensors (no relative norm then)."""
    for mf in metrics_folders(run.path):
        path = os.path.join(run.path, mf, "adapter_norms.json")
        if os.path.isfile(path):
            data = read_metrics(path)
            if data and isinstance(data.get("modules"), list):
                return data["modules"]
    assets = os.path.join(run.path, "assets")
    if run.record.get("kind") != "lora" or not os.path.isfile(os.path.join(assets, "adapter_config.json")):
        return []
    try:
        state, config = norms.read_adapter(assets)
    except UserError:
        return []
    rows = norms.delta_norms(state, config)
    module_roles = roles_of_record(run.record)
    for r in rows:
        r["role"] = module_roles.get(r["name"], "other")
    return rows


def norm_profiles(settings):
    """{setting name: {role group: {layer: mean ||dW||_F over seeds}}}, role groups 'keys', 'values',
    'attention', with the modules of a group in one layer combined (the square root of their summed squares),
    and {setting name: {role group: mean relative norm}}."""
    profiles, relative = {}, {}
    for s in settings:
        if s.role == "base":
            continue
        per_seed = []
        for r in s.runs.values():
            layers, rel = {}, {}
            for m in norms_of(r):
                g = role_group(m.get("role", "other"))
                if m.get("layer") is None:
                    continue
                layers.setdefault(g, {}).setdefault(m["layer"], 0.0)
                layers[g][m["layer"]] += m["delta_fro"] ** 2
                if isinstance(m.get("relative"), (int, float)):
                    rel.setdefault(g, []).append(m["relative"])
            if layers:
                per_seed.append(({g: {k: math.sqrt(v) for k, v in ls.items()} for g, ls in layers.items()}, rel))
        if not per_seed:
            continue
        groups = set().union(*(p[0] for p in per_seed))
        profiles[s.name] = {g: {layer: sum(p[0].get(g, {}).get(layer, 0.0) for p in per_seed) / len(per_seed)
                                for layer in sorted(set().union(*(p[0].get(g, {}) for p in per_seed)))} for g in groups}
        rels = {g: [x for p in per_seed for x in p[1].get(g, [])] for g in groups}
        relative[s.name] = {g: sum(v) / len(v) for g, v in rels.items() if v}
    return profiles, relative


def role_group(r):
    return "keys" if r.startswith("keys") else "values" if r == "values" else \
        "attention" if r.startswith("attention") else "other"


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


def summary_md(tasks_folder, settings, tasks, sections):
    """The report: one block per evaluation section (usually one), the adapters' norms, the training recipes."""
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
    return "\n".join(lines + norms_table(settings) + training_lines(settings)) + "\n"


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


def summary_png(path, tasks_folder, settings, tasks, section):
    """Left: accuracy per task as grouped bars (with intervals) and the majority class; middle: the training
    loss over steps of each setting, the mean over its seeds; right: ||dW|| of each setting's adapted modules
    per layer (keys solid, values dashed, attention dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = tasks + ["mean"]
    width = 0.8 / max(1, len(settings))
    fig, (ax, lx, nx) = plt.subplots(1, 3, figsize=(max(6, 1.6 * len(groups) * max(1, len(settings)) / 3) + 10, 4.8),
                                     gridspec_kw={"width_ratios": [max(2, len(groups)), 2, 2]})
    colours = plt.get_cmap("tab10")
    colour = {s.name: colours(k % 10) for k, s in enumerate(settings)}
    for k, s in enumerate(settings):
        xs, ys, lo, hi = [], [], [], []
        for g, t in enumerate(groups):
            if t == "mean":
                means = [accuracy_of(s, section, x)[0] for x in tasks]
                if None in means:
                    continue
                y, ci = sum(means) / len(means), None  # no interval drawn for the mean
            else:
                y, _ = accuracy_of(s, section, t)
                if y is None:
                    continue
                evs = evaluations_of(s, section, t)
                ci = evs[0].metrics.get("accuracy_ci95") if len(evs) == 1 else seed_interval(evs)
            xs.append(g - 0.4 + width * (k + 0.5))
            ys.append(100 * y)
            lo.append(100 * (y - ci[0]) if ci else math.nan)
            hi.append(100 * (ci[1] - y) if ci else math.nan)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=s.name, color=colour[s.name])
    for g, t in enumerate(tasks):
        m = majority(settings, section, t)
        if m != "–":
            ax.hlines(float(m), g - 0.45, g + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label="majority class" if g == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy (%), 95% interval")
    ax.set_ylim(0, 105)
    ax.set_title(f"Keys vs values: {tasks_folder}\n{describe_section(section)}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    loss_panel(lx, settings, colour)
    norms_panel(nx, settings, colour)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def loss_panel(lx, settings, colour):
    """The training loss of every adapter setting (the mean over its seeds at the steps they all logged), with a
    legend; a setting without a logged loss is named in the panel."""
    missing, seed_counts = [], set()
    for s in settings:
        if s.role == "base":
            continue
        curves = [loss_curve(r) for r in s.runs.values()]
        steps = sorted(set.intersection(*[{st for st, _ in c} for c in curves])) if all(curves) else []
        if not steps:
            missing.append(s.name)
            continue
        seed_counts.add(len(curves))
        lx.plot(steps, [sum(dict(c)[st] for c in curves) / len(curves) for st in steps], marker=".",
                color=colour[s.name], label=s.name)
    if seed_counts == {1}:
        lx.set_title("training loss (one seed)", fontsize=9)
    elif seed_counts:
        lx.set_title(f"training loss (mean over {'/'.join(map(str, sorted(seed_counts)))} seeds)", fontsize=9)
    else:
        lx.set_title("training loss", fontsize=9)
    lx.set_xlabel("optimizer step")
    if lx.lines:
        lx.legend(fontsize=7)
    if missing:
        lx.text(0.5, 0.02, "no loss logged: " + ", ".join(missing), ha="center", va="bottom", fontsize=7,
                transform=lx.transAxes, wrap=True)


def norms_panel(nx, settings, colour):
    """||dW||_F per layer of each setting's adapted modules: keys solid, values dashed, attention dotted."""
    profiles, _ = norm_profiles(settings)
    styles = {"keys": "-", "values": "--", "attention": ":", "other": "-."}
    for name, groups in profiles.items():
        for g, layers in sorted(groups.items()):
            if layers:
                nx.plot(list(layers), list(layers.values()), styles[g], color=colour[name], label=f"{name}: {g}")
    nx.set_title("||dW||_F per layer (keys —, values --, attention ··)", fontsize=9)
    nx.set_xlabel("layer")
    if nx.lines:
        nx.legend(fontsize=6)
    else:
        nx.text(0.5, 0.5, "no adapter norms", ha="center", va="center", transform=nx.transAxes)


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--root", default="experiments", help="the experiments folder to read (its tasks folders)")
    p.add_argument("--no_plot", action="store_true", help="write summary.md only, not summary.png")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.root):
        raise UserError(f"--root {args.root} does not exist")
    tree = collect(args.root)
    if not tree:
        raise UserError(f"no metrics under {args.root}/<tasks>/<experiment>/metrics/: evaluate an experiment first")
    all_results = {}
    for tf, runs in tree.items():
        for r in runs:
            for evs in r.evaluations.values():
                for t, e in evs.items():
                    key = short_name(r.folder) + ("" if e.folder == "metrics" else "@" + e.folder)
                    all_results.setdefault(tf, {}).setdefault(key, {})[t] = e.metrics
    utils.write_json(os.path.join(args.root, "all_eval_results.json"), all_results)
    for tasks_folder, runs in tree.items():
        settings = group(runs)
        present = {t for r in runs for evs in r.evaluations.values() for t in evs}
        named = [t for t in utils.tasks_of_folder(tasks_folder) if t in present]
        tasks = named + sorted(present - set(named))
        sections = sections_of(settings)
        folder = os.path.join(args.root, tasks_folder)
        utils.atomic_write(os.path.join(folder, "summary.md"), summary_md(tasks_folder, settings, tasks, sections))
        if not args.no_plot:
            summary_png(os.path.join(folder, "summary.png"), tasks_folder, settings, tasks, sections[0])
        print(f"{folder}/summary.md ({len(settings)} setting{'s' if len(settings) != 1 else ''}, {len(tasks)} "
              f"task{'s' if len(tasks) != 1 else ''}, {len(sections)} evaluation{'s' if len(sections) != 1 else ''})")
    print(f"{args.root}/all_eval_results.json")


if __name__ == "__main__":
    run_main(main)
