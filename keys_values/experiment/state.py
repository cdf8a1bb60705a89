"""What state an experiment folder is in, and what a folder is when it is not an experiment.

- state: `new` (absent or empty), `partial` (a training started and did not finish), `finished` (it holds
  experiment.json, written last).
- not_an_experiment: a file, an adapter folder, a metrics/logs/checkpoint folder, a model folder, a base model's
  evaluation, a tasks folder or an output root, each named for what it is with what to give instead.
"""

import json
import os

from keys_values.experiment.layout import ASSETS, CHECKPOINT, IDENTITY, LOCKS, LOGS, RECORD, is_metrics_folder


def state(folder):
    """'new', 'partial' or 'finished' (see the module's docstring); the lock file alone leaves a folder new."""
    if not os.path.isdir(folder) or not [f for f in os.listdir(folder) if f not in LOCKS]:
        return "new"
    return "finished" if os.path.isfile(os.path.join(folder, RECORD)) else "partial"


def not_an_experiment(path):
    """Why `path` is not an experiment folder, in words that say what to give instead, or None when it may be
    one: a file, an adapter folder (assets/), a metrics, logs or checkpoint folder, a model folder, a base
    model's evaluation folder, a tasks folder holding experiments or an output root holding tasks folders."""
    path = os.path.normpath(path)
    name, parent = os.path.basename(path), os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file, not an experiment folder"
    if name == ASSETS and os.path.isfile(os.path.join(path, "adapter_config.json")):
        return f"{path} is the adapter folder of an experiment: give its experiment folder {parent}"
    if is_metrics_folder(name) or CHECKPOINT.fullmatch(name) or (name == LOGS and trained_here(parent)):
        return f"{path} is inside an experiment: give its experiment folder {parent}"
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, ASSETS)):
        return None
    record = os.path.join(path, RECORD)
    if os.path.isfile(record):
        try:
            with open(record, encoding="utf-8") as f:
                kind = json.load(f).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind == "base":
            return (f"{path} holds the base model's evaluation, not a trained adapter: its metrics are already "
                    "there (evaluate the base model with --pretrained_ckpt and --tasks)")
    if os.path.isfile(os.path.join(path, "config.json")) and not trained_here(path):
        return f"{path} is a model folder, not an experiment: give it as --pretrained_ckpt"
    inside = experiments_in(path)
    if inside:
        more = f" and {len(inside) - 3} more" if len(inside) > 3 else ""
        return (f"{path} is a tasks folder holding experiments, not an experiment: give one of them, e.g. "
                f"{os.path.join(path, inside[0])} ({', '.join(inside[:3])}{more})")
    tasks = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and experiments_in(os.path.join(path, d)))
    if tasks:
        first = os.path.join(path, tasks[0])
        return (f"{path} is an output root holding tasks folders ({', '.join(tasks[:3])}), not an experiment: give "
                f"an experiment folder, e.g. {os.path.join(first, experiments_in(first)[0])}")
    return None


def experiments_in(folder):
    """The names of the experiment folders (with assets/ or experiment.json) directly inside `folder`, those
    with a trained adapter first."""
    names = [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d, ASSETS)) or
             os.path.isfile(os.path.join(folder, d, RECORD))]
    return sorted(names, key=lambda d: (not os.path.isdir(os.path.join(folder, d, ASSETS)), d))


def trained_here(folder):
    """Whether a training wrote into `folder`: its identity.json, a checkpoint, its adapter or its record."""
    if not os.path.isdir(folder):
        return False
    return any(n in (IDENTITY, ASSETS, RECORD) or CHECKPOINT.fullmatch(n) for n in os.listdir(folder))
