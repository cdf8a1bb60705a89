"""Collect every experiment's metrics and compare target-module settings (keys vs values) per task.

experiments/ -> all_eval_results.json (the original's structure: {tasks folder: {short experiment name:
{task: metrics}}}, keyed by full task names) and, in each tasks folder, summary.md (accuracy with 95%
intervals per setting and task, trainable parameters, paired McNemar tests of each keys setting against
the values setting) and summary.png (the same accuracies as grouped bars). Reads files only: no model.

    python get_eval_tasks.py --root experiments
"""

import argparse
import glob
import json
import math
import os

import utils

SUFFIX = os.path.basename(utils.metrics_path("", ""))  # "_metrics_update.json"
ROLE = {"up_proj": "keys", "gate_proj": "keys", "down_proj": "values"}


def short_name(folder):
    """The original's short experiment name."""
    for long, short in (("classification-sampleFraction-", "f"), ("epochs-", "e"), ("rank-", "r"), ("dropout-", "d")):
        folder = folder.replace(long, short)
    return folder


def setting_name(record):
    """'base', 'q,v', 'q,v+up (keys)', 'q,v+down (values)', ... from an experiment's record."""
    if record.get("kind") == "base":
        return "base (no adapter)"
    modules = record.get("target_modules") or record.get("args", {}).get("target_modules") or []
    core = [m for m in ("q_proj", "v_proj") if m in modules]
    extra = [m for m in modules if m not in core]
    name = ",".join(m.replace("_proj", "") for m in core) or "default"
    if extra:
        roles = sorted({ROLE.get(m, "other") for m in extra})
        name += "+" + ",".join(m.replace("_proj", "") for m in sorted(extra)) + f" ({','.join(roles)})"
    return name


def collect(root):
    """{tasks folder: {experiment folder: {"record": experiment.json or {}, "metrics": {task: metrics}}}}."""
    tree = {}
    for metrics_dir in sorted(glob.glob(os.path.join(root, "*", "*", "metrics"))):
        exp = os.path.dirname(metrics_dir)
        tasks_folder, name = os.path.basename(os.path.dirname(exp)), os.path.basename(exp)
        metrics = {}
        for path in sorted(glob.glob(os.path.join(metrics_dir, "*" + SUFFIX))):
            metrics[os.path.basename(path)[: -len(SUFFIX)]] = utils.read_json(path, "metrics file")
        if not metrics:
            continue
        rec_path = os.path.join(exp, "experiment.json")
        record = utils.read_json(rec_path, "experiment record") if os.path.isfile(rec_path) else {}
        tree.setdefault(tasks_folder, {})[name] = {"record": record, "metrics": metrics, "path": exp}
    return tree


def mcnemar(a_right, b_right):
    """Exact two-sided McNemar test on paired right/wrong lists: (b, c, p) where b counts examples only A
    gets right and c those only B gets right."""
    b = sum(x and not y for x, y in zip(a_right, b_right))
    c = sum(y and not x for x, y in zip(a_right, b_right))
    n = b + c
    if n == 0:
        return b, c, 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return b, c, min(1.0, 2 * tail)


def correctness(exp_path, task):
    """{example id: right?} from a task's predictions file."""
    path = utils.predictions_path(exp_path, task)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return {r["id"]: r["prediction"] == r["label"] for r in rows}


def order_key(item):
    name = item[0]
    rank = {"base (no adapter)": 0, "q,v": 1}
    return (rank.get(name, 2 if "keys" in name else 3 if "values" in name else 4), name)


def rows_of(experiments):
    """[(setting name, experiment)] in reading order: base, q,v, keys settings, values settings, others."""
    named = {}
    for folder, exp in experiments.items():
        name = setting_name(exp["record"])
        if name in named or any(n.startswith(name + " [") for n in named):
            name = f"{name} [{short_name(folder)}]"
        named[name] = exp
    return sorted(named.items(), key=order_key)


def pct(x):
    return f"{100 * x:.1f}"


def summary_md(tasks_folder, rows, tasks):
    lines = [f"# Keys vs values: {tasks_folder}", "",
             "Accuracy (%) on each task's evaluation rows, with its 95% Wilson interval; `mean` is the unweighted mean "
             "over tasks. `keys` settings add a LoRA adapter to `up_proj` or `gate_proj`, `values` to `down_proj`, both "
             "on top of `q_proj v_proj`.", ""]
    lines.append("| setting | " + " | ".join(tasks) + " | mean | trainable params | scoring |")
    lines.append("|---" * (len(tasks) + 4) + "|")
    for name, exp in rows:
        cells = []
        for t in tasks:
            m = exp["metrics"].get(t)
            cells.append("–" if m is None else f"{pct(m['accuracy'])} [{pct(m['accuracy_ci95'][0])}, "
                                                  f"{pct(m['accuracy_ci95'][1])}]")
        accs = [exp["metrics"][t]["accuracy"] for t in tasks if t in exp["metrics"]]
        mean = pct(sum(accs) / len(accs)) if len(accs) == len(tasks) else "–"
        params = exp["record"].get("trainable_params")
        scoring = ",".join(sorted({m.get("scoring", "?") for m in exp["metrics"].values()}))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} | {'–' if params is None else f'{params:,}'} "
                     f"| {scoring} |")
    first = next(iter(rows))[1]["metrics"]
    lines.append("| majority class | " + " | ".join(pct(first[t]["majority_baseline"]) if t in first else "–"
                                                  for t in tasks) + " | | | |")
    values = [(n, e) for n, e in rows if "(values)" in n]
    keys = [(n, e) for n, e in rows if "(keys)" in n]
    if values and keys:
        lines += ["", "## Keys against values, paired on the same examples", "",
                  "Difference in accuracy (points, keys minus values), then b/c: examples only the keys setting got "
                  "right / only the values setting got right, and the exact two-sided McNemar p-value.", ""]
        lines.append("| comparison | " + " | ".join(tasks) + " |")
        lines.append("|---" * (len(tasks) + 1) + "|")
        for vn, ve in values:
            for kn, ke in keys:
                cells = []
                for t in tasks:
                    a, b = correctness(ke["path"], t), correctness(ve["path"], t)
                    if a is None or b is None or a.keys() != b.keys():
                        cells.append("–")
                        continue
                    ids = sorted(a)
                    nb, nc, p = mcnemar([a[i] for i in ids], [b[i] for i in ids])
                    diff = 100 * (nb - nc) / len(ids)
                    cells.append(f"{diff:+.1f} ({nb}/{nc}, p={p:.3g})")
                lines.append(f"| {kn} vs {vn} | " + " | ".join(cells) + " |")
    recs = [e["record"] for _, e in rows if e["record"].get("kind") == "lora"]
    if recs:
        a = recs[0]["args"]
        lines += ["", f"Training: base `{a['pretrained_ckpt']}`, loss on `{a.get('loss_on', 'all')}`, learning rate "
                      f"{a['learning_rate']}, {a['epochs']} epochs (max steps {a['max_steps']}), rank {a['lora_r']}, "
                      f"dropout {a['dropout']}, {'4-bit' if a['bnb'] else 'standard'} base, seed {a['seed']}, "
                      f"data root `{a['data_root'] or '.'}`."]
    return "\n".join(lines) + "\n"


def summary_png(path, tasks_folder, rows, tasks):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = tasks + ["mean"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) * max(1, len(rows)) / 3), 4.5))
    colours = plt.get_cmap("tab10")
    for k, (name, exp) in enumerate(rows):
        xs, ys, lo, hi = [], [], [], []
        for g, t in enumerate(groups):
            if t == "mean":
                accs = [exp["metrics"][x]["accuracy"] for x in tasks if x in exp["metrics"]]
                if len(accs) != len(tasks):
                    continue
                y, err = sum(accs) / len(accs), (math.nan, math.nan)  # no interval drawn for the mean
            elif t in exp["metrics"]:
                m = exp["metrics"][t]
                y, err = m["accuracy"], (m["accuracy"] - m["accuracy_ci95"][0], m["accuracy_ci95"][1] - m["accuracy"])
            else:
                continue
            xs.append(g - 0.4 + width * (k + 0.5))
            ys.append(100 * y)
            lo.append(100 * err[0])
            hi.append(100 * err[1])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name, color=colours(k % 10))
    first = rows[0][1]["metrics"]
    for g, t in enumerate(tasks):
        if t in first:
            y = 100 * first[t]["majority_baseline"]
            ax.hlines(y, g - 0.45, g + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label="majority class" if g == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy (%), 95% interval")
    ax.set_ylim(0, 105)
    ax.set_title(f"Keys vs values: {tasks_folder}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="experiments", help="the experiments folder")
    p.add_argument("--no_plot", action="store_true", help="skip summary.png")
    args = p.parse_args(argv)
    if not os.path.isdir(args.root):
        raise utils.UserError(f"--root {args.root} does not exist")
    tree = collect(args.root)
    if not tree:
        raise utils.UserError(f"no metrics under {args.root}/<tasks>/<experiment>/metrics/: evaluate an experiment first")
    all_results = {tf: {short_name(name): exp["metrics"] for name, exp in exps.items()} for tf, exps in tree.items()}
    utils.write_json(os.path.join(args.root, "all_eval_results.json"), all_results)
    for tasks_folder, exps in tree.items():
        rows = rows_of(exps)
        tasks = [t for t in tasks_folder.split(",") if any(t in e["metrics"] for _, e in rows)]
        tasks += sorted({t for _, e in rows for t in e["metrics"]} - set(tasks))
        folder = os.path.join(args.root, tasks_folder)
        utils.atomic_write(os.path.join(folder, "summary.md"), summary_md(tasks_folder, rows, tasks))
        if not args.no_plot:
            summary_png(os.path.join(folder, "summary.png"), tasks_folder, rows, tasks)
        print(f"{folder}/summary.md ({len(rows)} settings, {len(tasks)} tasks)")
    print(f"{args.root}/all_eval_results.json")


if __name__ == "__main__":
    utils.run_main(main)
