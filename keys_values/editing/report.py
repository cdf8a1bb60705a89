"""The comparison of the arms of an edit set: summary.md and summary.png beside the runs' folders, from their files
alone (metrics.json, edits.jsonl).

Like with like only: two arms are paired when their runs differ in the arm alone (same model, edits, method,
objective, layer and hyperparameters), on the seeds both have, edit by edit (the same case ids). Per pair:
- each success metric: the exact McNemar test on the prompts (the rewrite prompt, each paraphrase, each
  neighbour of each edit: one binary outcome each), stratified over seeds (statistics.stratified_mcnemar);
- each magnitude: Wilcoxon's signed-rank test on the edits' values;
- the Score (the harmonic mean of the three success rates): the difference with its 95% paired bootstrap interval,
  the edits resampled;
all of it over every edit and over the edits the model knew before (the true target more likely than the new one).
Intervals of an arm's rates: 95% bootstrap over its edits."""

import json
import math
import os
from dataclasses import dataclass

from keys_values import identity, statistics
from keys_values.editing.metrics import MAGNITUDE, SUCCESS
from keys_values.experiment import layout
from utils import UserError, atomic_write, read_json, read_jsonl

GROUPS = {"efficacy_success": "rewrite", "paraphrase_success": "paraphrase", "neighborhood_success": "neighbour"}
SHORT = {"efficacy_success": "ES", "paraphrase_success": "PS", "neighborhood_success": "NS", "score": "Score",
         "efficacy_magnitude": "EM", "paraphrase_magnitude": "PM", "neighborhood_magnitude": "NM",
         "rewrite_acc": "rewrite acc", "rephrase_acc": "rephrase acc", "locality": "locality",
         "neighborhood_acc": "neighbour acc"}


@dataclass
class ArmRun:
    folder: str
    metrics: dict
    records: list

    @property
    def identity(self):
        return self.metrics["identity"]

    @property
    def role(self):
        found = {r for r in self.metrics["roles"].values()}
        if found and all(r.startswith("keys") for r in found):
            return "keys"
        return "values" if found == {"values"} else "other"


def collect(folder):
    """Every finished run under an edit set's folder."""
    runs = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        m = os.path.join(path, layout.EDIT_METRICS)
        if os.path.isfile(m):
            runs.append(ArmRun(path, read_json(m, "editing metrics"), read_jsonl(os.path.join(path, layout.EDIT_RECORDS))))
    return runs


def recipe_key(ident):
    return json.dumps({k: v for k, v in identity.without_arm(ident).items() if k not in ("seed", "data")},
                      sort_keys=True)


def outcomes(run, metric, known_only=False):
    """{(seed, case id, prompt index): success} of one success metric, after the edit."""
    group = GROUPS[metric]
    out = {}
    for r in run.records:
        if known_only and not r["known"]:
            continue
        nll = {}
        for p in r["probes"]:
            if p["group"] == group:
                nll.setdefault(p["index"], {})[p["role"]] = p["nll_post"]
        for i, v in nll.items():
            out[(run.metrics["seed"], str(r["case_id"]), i)] = v["true"] < v["new"] if group == "neighbour" \
                else v["new"] < v["true"]
    return out


def per_edit(run, key, known_only=False, when="post"):
    return {(run.metrics["seed"], str(r["case_id"])): r[when].get(key) for r in run.records
            if not known_only or r["known"]}


def rates(runs, known_only=False, when="post"):
    """[[ES, PS, NS] per edit] over the runs (seeds) of an arm; a metric an edit has no prompt for is left out of
    that metric's mean (NaN here)."""
    rows = []
    for run in runs:
        for r in run.records:
            if known_only and not r["known"]:
                continue
            rows.append([math.nan if r[when].get(k) is None else r[when][k] for k in SUCCESS])
    return rows


def score_of(rows):
    import numpy as np

    a = np.asarray(rows, dtype=float)
    if not len(a):
        return math.nan
    means = [m for m in np.nanmean(a, axis=0) if not math.isnan(m)] if a.size else []
    return statistics.harmonic_mean(means) if means else math.nan


def mean_interval(values):
    """(mean, [2.5%, 97.5%] bootstrap interval over the values)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return None, None
    rng = np.random.default_rng(0)
    boots = v[rng.integers(0, len(v), size=(statistics.BOOTSTRAP, len(v)))].mean(axis=1)
    return float(v.mean()), [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]


def score_interval(rows):
    import numpy as np

    a = np.asarray(rows, dtype=float)
    if not len(a):
        return None, None
    rng = np.random.default_rng(0)
    boots = [score_of(a[d]) for d in rng.integers(0, len(a), size=(statistics.BOOTSTRAP, len(a)))]
    return score_of(a), [float(np.nanquantile(boots, 0.025)), float(np.nanquantile(boots, 0.975))]


def pair(keys, values, known_only=False):
    """The paired comparison of two arms (each {seed: ArmRun}) on their common seeds and edits."""
    seeds = sorted(set(keys) & set(values))
    out = {"seeds": seeds}
    for metric in SUCCESS:
        strata, n = [], 0
        for s in seeds:
            a, b = outcomes(keys[s], metric, known_only), outcomes(values[s], metric, known_only)
            common = sorted(set(a) & set(b))
            strata.append(statistics.mcnemar([a[k] for k in common], [b[k] for k in common])[:2])
            n += len(common)
        bb, cc, p = statistics.stratified_mcnemar(strata)
        out[metric] = {"b": bb, "c": cc, "p": p, "n": n}
    for metric in MAGNITUDE:
        x, y = [], []
        for s in seeds:
            a, b = per_edit(keys[s], metric, known_only), per_edit(values[s], metric, known_only)
            for k in sorted(set(a) & set(b)):
                if a[k] is not None and b[k] is not None:
                    x.append(a[k])
                    y.append(b[k])
        median, p = statistics.wilcoxon(x, y)
        out[metric] = {"median_difference": median, "p": p, "n": len(x)}
    ka, va = [], []

    def row(r):
        return [math.nan if r["post"].get(m) is None else r["post"][m] for m in SUCCESS]

    for s in seeds:
        kr = {str(r["case_id"]): r for r in keys[s].records if not known_only or r["known"]}
        vr = {str(r["case_id"]): r for r in values[s].records if not known_only or r["known"]}
        for cid in sorted(set(kr) & set(vr)):
            ka.append(row(kr[cid]))
            va.append(row(vr[cid]))
    out["n_edits"] = len(ka)
    if ka:
        diff = score_of(ka) - score_of(va)
        out["score"] = {"difference": diff, "interval": statistics.paired_bootstrap(ka, va, score_of)}
    else:
        out["score"] = {"difference": None, "interval": None}
    return out


def pct(x):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def cell(mean, interval):
    if mean is None:
        return "–"
    return f"{pct(mean)} [{pct(interval[0])}, {pct(interval[1])}]" if interval else pct(mean)


def arm_row(name, runs, known_only, when="post", updated=None):
    rows = rates(runs, known_only, when)
    cells = [cell(*mean_interval([r[i] for r in rows])) for i in range(3)]
    cells.append(cell(*score_interval(rows)))
    recs = [r for run in runs for r in run.records if not known_only or r["known"]]

    def m(key):
        vals = [r[when].get(key) for r in recs if r[when].get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    extra = [pct(m(k)) for k in ("efficacy_magnitude", "neighborhood_magnitude", "rewrite_acc", "rephrase_acc",
                                 "locality")]
    steps = [r["steps"] for r in recs] if when == "post" else []
    deltas = [v for r in recs for v in r["delta"].values()] if when == "post" else []
    tail = [f"{sum(steps) / len(steps):.1f}" if steps else "–",
            f"{sum(deltas) / len(deltas):.2e}" if deltas else "–"]
    return (f"| {name} | {'–' if updated is None else f'{updated:,}'} | {len(recs)} | " + " | ".join(cells + extra + tail)
            + " |")


def summary_md(folder, runs):
    groups = {}
    for run in runs:
        groups.setdefault(recipe_key(run.identity), {}).setdefault(run.metrics["arm"], {})[run.metrics["seed"]] = run
    lines = [f"# Keys vs values, knowledge editing: {os.path.basename(os.path.dirname(folder))} / "
             f"{os.path.basename(folder)}", "",
             "ROME's metrics after each edit, the mean over edits with its 95% bootstrap interval (points): ES efficacy "
             "(the new target more likely than the true one after the rewrite prompt), PS paraphrase (the same after "
             "its paraphrases), NS neighbourhood (each neighbour's own answer still more likely than the new target), "
             "Score their harmonic mean; EM, NM the probability margins; EasyEdit's teacher-forced token accuracy of "
             "the new target (rewrite, rephrase) and locality (the neighbours' argmax tokens unchanged); steps taken "
             "and ||dW||_F / ||W||_F of each edited matrix. `updated` is how many numbers an edit may change: in a "
             "gated feed-forward keys_up against values is the equal-budget comparison (keys = up + gate is twice "
             "values)."]
    header = ("| arm | updated | n | ES | PS | NS | Score | EM | NM | rewrite acc | rephrase acc | locality | steps | "
              "rel. dW |")
    rule = "|---" * 14 + "|"
    unpaired = []
    for key, arms in groups.items():
        recipe = json.loads(key)
        lines += ["", f"## Layer {recipe['layer']}: {recipe['method']}, objective {recipe['objective']}, "
                      f"{recipe['steps']} steps, learning rate {recipe['learning_rate']:g}"
                      + (f", norm constraint {recipe['norm_constraint']:g}" if recipe["norm_constraint"] else "")
                      + (", sequential" if recipe["sequential"] else "")]
        for title, known in (("All edits", False), ("Edits the model knew before (true target more likely)", True)):
            lines += ["", f"### {title}", "", header, rule]
            first = next(iter(arms.values()))
            lines.append(arm_row("unedited", list(first.values()), known, "pre"))
            for name, by_seed in arms.items():
                run0 = next(iter(by_seed.values()))
                lines.append(arm_row(f"{name} ({run0.role})", list(by_seed.values()), known,
                                     updated=run0.metrics["updated_parameters"]))
        keys = {n: a for n, a in arms.items() if next(iter(a.values())).role == "keys"}
        values = {n: a for n, a in arms.items() if next(iter(a.values())).role == "values"}
        if keys and values:
            lines += ["", "### Keys against values, paired on the same edits", "",
                      "Each success rate: the difference (points, keys minus values), b/c (prompts only the keys arm / "
                      "only the values arm got right) and the exact McNemar p, stratified over seeds; magnitudes: the "
                      "median difference and Wilcoxon's signed-rank p; Score: the difference with its 95% paired "
                      "bootstrap interval.", "",
                      "| comparison | edits | ES | PS | NS | EM | NM | Score |", "|---" * 8 + "|"]
            for kn, k in keys.items():
                for vn, v in values.items():
                    for known in (False, True):
                        c = pair(k, v, known)
                        kr, vr = rates(list(k.values()), known), rates(list(v.values()), known)
                        cells = []
                        for i, metric in enumerate(SUCCESS):
                            d = c[metric]
                            km = mean_interval([r[i] for r in kr])[0]
                            vm = mean_interval([r[i] for r in vr])[0]
                            diff = "–" if km is None or vm is None else f"{100 * (km - vm):+.1f}"
                            cells.append(f"{diff} ({d['b']}/{d['c']}, p={d['p']:.3g})")
                        for metric in ("efficacy_magnitude", "neighborhood_magnitude"):
                            d = c[metric]
                            cells.append("–" if d["p"] is None else f"{100 * d['median_difference']:+.1f} "
                                                                    f"(p={d['p']:.3g})")
                        s = c["score"]
                        cells.append("–" if s["difference"] is None or math.isnan(s["difference"]) else
                                     f"{100 * s['difference']:+.1f} [{100 * s['interval'][0]:+.1f}, "
                                     f"{100 * s['interval'][1]:+.1f}]")
                        label = f"{kn} vs {vn}" + (" (known)" if known else "")
                        lines.append(f"| {label} | {c['n_edits']} | " + " | ".join(cells) + " |")
        elif arms:
            unpaired.append(f"layer {recipe['layer']}: no keys arm and values arm trained alike to pair")
    layers = sorted({json.loads(k)["layer"] for k in groups})
    if len(layers) > 1:
        lines += ["", "## Layer sweep", "", "ES and NS after the edits (all edits), per layer and arm.", "",
                  "| arm | " + " | ".join(f"layer {x}" for x in layers) + " |", "|---" * (len(layers) + 1) + "|"]
        for name in sorted({r.metrics["arm"] for r in runs}):
            cells = []
            for x in layers:
                rs = [r for r in runs if r.metrics["arm"] == name and r.metrics["layer"] == x]
                rows = rates(rs)
                es = mean_interval([r[0] for r in rows])[0]
                ns = mean_interval([r[2] for r in rows])[0]
                cells.append(f"{pct(es)} / {pct(ns)}" if rs else "–")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if unpaired:
        lines += ["", "Not paired:"] + [f"- {u}" for u in unpaired]
    return "\n".join(lines) + "\n"


def summary_png(path, folder, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({r.metrics["layer"] for r in runs})
    arms = sorted({r.metrics["arm"] for r in runs})
    fig, axes = plt.subplots(1, 2 if len(layers) > 1 else 1, figsize=(13 if len(layers) > 1 else 8, 4.6),
                             squeeze=False)
    ax = axes[0][0]
    names = ["ES", "PS", "NS", "Score"]
    width = 0.8 / max(1, len(arms))
    colours = plt.get_cmap("tab10")
    first = layers[0]
    for k, arm in enumerate(arms):
        rs = [r for r in runs if r.metrics["arm"] == arm and r.metrics["layer"] == first]
        rows = rates(rs)
        stats = [mean_interval([r[i] for r in rows]) for i in range(3)] + [score_interval(rows)]
        xs = [i - 0.4 + width * (k + 0.5) for i in range(4)]
        ys = [100 * (m or 0) for m, _ in stats]
        err = [[100 * ((m or 0) - ci[0]) if ci else 0 for m, ci in stats], [100 * (ci[1] - (m or 0)) if ci else 0
                                                                            for m, ci in stats]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=f"{arm} ({rs[0].role})" if rs else arm, color=colours(k % 10))
    ax.set_xticks(range(4), names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of edits (95% bootstrap interval)")
    ax.set_title(f"after the edit, layer {first}", fontsize=9)
    ax.legend(fontsize=8)
    if len(layers) > 1:
        lx = axes[0][1]
        for k, arm in enumerate(arms):
            es, ns = [], []
            for x in layers:
                rows = rates([r for r in runs if r.metrics["arm"] == arm and r.metrics["layer"] == x])
                es.append(100 * (mean_interval([r[0] for r in rows])[0] or math.nan))
                ns.append(100 * (mean_interval([r[2] for r in rows])[0] or math.nan))
            lx.plot(layers, es, "-o", color=colours(k % 10), label=f"{arm} efficacy")
            lx.plot(layers, ns, "--s", color=colours(k % 10), label=f"{arm} specificity (NS)")
        lx.set_xlabel("layer edited")
        lx.set_xticks(layers)
        lx.set_ylim(0, 105)
        lx.set_title("layer sweep: efficacy — and specificity --", fontsize=9)
        lx.legend(fontsize=7, loc="best")
    fig.suptitle(f"Keys vs values, knowledge editing: {os.path.basename(folder)}", fontsize=10)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write(folder, plot=True):
    """summary.md (and summary.png) of an edit set's folder; UserError when no run there has finished."""
    runs = collect(folder) if os.path.isdir(folder) else []
    if not runs:
        raise UserError(f"no finished editing run in {folder} yet")
    atomic_write(os.path.join(folder, layout.SUMMARY_MD), summary_md(folder, runs))
    if plot:
        summary_png(os.path.join(folder, layout.SUMMARY_PNG), folder, runs)
    return os.path.join(folder, layout.SUMMARY_MD)
