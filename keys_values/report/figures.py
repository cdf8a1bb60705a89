"""Figures: summary.png, three panels: accuracy per task as grouped bars with their intervals and the majority
class; the training loss over steps of each setting (the mean over its seeds); ||dW||_F per layer of each
setting's adapted modules (keys solid, values dashed, attention dotted)."""

import math
import os
import textwrap

from keys_values.report.collect import describe_section, loss_curve, norm_profiles
from keys_values.report.compare import accuracy_of, evaluations_of, own_tasks, seed_interval
from keys_values.report.tables import majority


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
                means = [accuracy_of(s, section, x)[0] for x in own_tasks(s, tasks)]
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
    subtitle = textwrap.fill(describe_section(section), 70)  # wrapped: never clipped at the panel's edge
    ax.set_title(f"Keys vs values: {tasks_folder}\n{subtitle}", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    loss_panel(lx, settings, colour)
    norms_panel(nx, settings, colour)
    from matplotlib.ticker import MaxNLocator

    for axis in (lx, nx):  # optimizer steps and layers are whole numbers
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")  # the legends below the panels included
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
        lx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
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
    if nx.lines:  # below the panel: a legend inside would cover the lines
        nx.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    else:
        nx.text(0.5, 0.5, "no adapter norms", ha="center", va="center", transform=nx.transAxes)
