"""Collect: every experiment folder of an output root with its record, its evaluations (grouped into sections by
their evaluation identity), its seed and its role, and the runs grouped into settings (a setting's runs differ
only by seed)."""

import json
import math
import os
from dataclasses import dataclass, field

from keys_values import identity, norms
from keys_values.experiment import checkpoints, layout, records
from keys_values.experiment.state import state
from utils import UserError, read_json, read_jsonl

ROLE_ORDER = {"base": 0, "core": 1, "keys": 2, "values": 3, "other": 4}
SECTION_KEYS = ("scoring", "max_test_samples", "max_new_tokens", "prompt_budget", "bnb", "dtype")
RECIPE_WORDS = {"model": "base", "epochs": "epochs", "max_steps": "max steps", "learning_rate": "learning rate",
                "loss_on": "loss on", "lora_r": "rank", "lora_alpha": "alpha", "dropout": "dropout",
                "per_device_train_batch_size": "batch", "gradient_accumulation_steps": "accumulation",
                "processes": "processes", "max_seq_length": "block", "max_samples": "max samples",
                "train_sample_fraction": "sample fraction", "shorten_to_block": "shortened", "bnb": "4-bit",
                "dtype": "dtype", "data": "training rows", "model_content": "base content"}


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
            path = layout.predictions_path(self.path, self.task, self.folder)
            rows = read_jsonl(path) if os.path.isfile(path) else None
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

    @property
    def trained_tasks(self):
        """The tasks its adapter was trained on, as its record names them ([] for the base or an older record)."""
        return [] if self.role == "base" else list(self.any_run().record.get("args", {}).get("tasks") or [])


def read_metrics(path):
    """A metrics file's contents, or None (with a warning) when it cannot be read."""
    try:
        m = read_json(path, "metrics file")
    except UserError as e:
        print(f"warning: {e}; left out")
        return None
    return m if isinstance(m, dict) else None


def left_out(root, tasks_folder):
    """[line] naming each folder of a tasks folder that the report cannot show, with why: a training that did not
    finish (resume it), a finished run not evaluated yet (evaluate it)."""
    folder_path = os.path.join(root, tasks_folder)
    out = []
    for name in sorted(os.listdir(folder_path)):
        exp = os.path.join(folder_path, name)
        if not os.path.isdir(exp) or name in (layout.STUDY_LOGS,) or any(
                layout.task_of_metrics_file(f) for mf in layout.metrics_folders(exp)
                for f in os.listdir(os.path.join(exp, mf))):
            continue
        kind = state(exp)
        if kind == "partial" and (os.path.isfile(layout.identity_path(exp)) or checkpoints.checkpoints(exp)):
            out.append(f"{name}: its training did not finish (run it again with --resume)")
        elif kind == "finished":
            out.append(f"{name}: trained, not evaluated yet (llama2_classification_multi_tasks_inference.py "
                       f"--experiment_dir {exp})")
    return out


def off_task(settings):
    """[line] for each setting evaluated on a task it was not trained on (its record names the tasks)."""
    out = []
    for s in settings:
        trained = s.trained_tasks
        if not trained:
            continue
        other = sorted({t for r in s.runs.values() for evs in r.evaluations.values() for t in evs} - set(trained))
        if other:
            out.append(f"{s.name}: evaluated on {', '.join(other)}, not among the tasks it was trained on "
                       f"({', '.join(trained)}); left out of the mean")
    return out


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
            for mf in layout.metrics_folders(exp):
                for f in sorted(os.listdir(os.path.join(exp, mf))):
                    task = layout.task_of_metrics_file(f)
                    if task is not None and (m := read_metrics(os.path.join(exp, mf, f))) is not None:
                        ev = Evaluation(exp, mf, task, m)
                        evaluations.setdefault(ev.section, {}).setdefault(ev.task, ev)
            if not evaluations:
                continue
            record = records.record_or_empty(exp)
            seed = records.seed_of(record)
            tree.setdefault(tasks_folder, []).append(Run(name, exp, record, seed, evaluations))
    return tree


def group(runs):
    """The runs grouped into settings (a setting's runs differ only by seed), in reading order: base, q,v,
    keys settings, values settings, others. Two settings of one name (other recipes) are told apart by their
    folder's name."""
    by_key = {}
    for run in runs:
        ident = run.record.get("identity")
        key = json.dumps(identity.without_seed(ident), sort_keys=True) if isinstance(ident, dict) else \
            layout.without_seed(run.folder)
        by_key.setdefault(key, []).append(run)
    settings = []
    for members in by_key.values():
        record = members[0].record
        settings.append(Setting(records.setting_name(record), records.role(record), {r.seed: r for r in members},
                                records.recipe_of(record)))
    by_name = {}
    for s in settings:
        by_name.setdefault(s.name, []).append(s)
    for same in by_name.values():
        if len(same) > 1:  # told apart in words by what differs (base, learning rate, steps...), never by a hash
            words = [what_differs(s, same) for s in same]
            for s, w in zip(same, words):
                s.name = f"{s.name} [{w}]" if w and words.count(w) == 1 else \
                    f"{s.name} [{layout.short_name(layout.without_seed(s.any_run().folder))}]"
    return sorted(settings, key=lambda s: (ROLE_ORDER[s.role], s.name))


def label_recipe(setting):
    """What tells a setting's runs apart from others of its name: its recipe, and for the base model its name."""
    if setting.role == "base":
        a = setting.any_run().record
        ckpt = a.get("base_checkpoint") or a.get("args", {}).get("pretrained_ckpt")
        return {"model": identity.model_name(ckpt)} if ckpt else {}
    return setting.recipe


def what_differs(setting, same):
    """'base Llama-2-7b-hf', 'learning rate 0.001', ...: the recipe settings in which `setting` differs from the
    others of its name, in words ('' when none is recorded)."""
    mine = label_recipe(setting)
    others = [label_recipe(o) for o in same if o is not setting]
    keys = [k for k in RECIPE_WORDS if any(mine.get(k) != o.get(k) for o in others)]
    if "model_content" in keys and "model" in keys:
        keys.remove("model_content")  # the names already differ
    parts = []
    for k in keys:
        v = mine.get(k)
        if k in ("data", "model_content"):
            parts.append(f"{RECIPE_WORDS[k]} {v if v else 'unrecorded'}")
        elif k == "max_steps" and v in (None, -1):
            parts.append("max steps none")
        else:
            parts.append(f"{RECIPE_WORDS[k]} {identity.fmt(v)}")
    return ", ".join(parts)


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


def norms_of(run):
    """[{module, layer, name, role, delta_fro, [weight_fro, relative]}] of a run's adapter: written by the
    evaluation beside the metrics, or computed from the adapter's tensors (no relative norm then)."""
    for mf in layout.metrics_folders(run.path):
        path = layout.norms_path(run.path, mf)
        if os.path.isfile(path):
            data = read_metrics(path)
            if data and isinstance(data.get("modules"), list):
                return data["modules"]
    assets = layout.assets(run.path)
    if run.record.get("kind") != "lora" or not os.path.isfile(os.path.join(assets, layout.ADAPTER_CONFIG)):
        return []
    try:
        state, config = norms.read_adapter(assets)
    except UserError:
        return []
    rows = norms.delta_norms(state, config)
    module_roles = records.roles_of_record(run.record)
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


def loss_curve(run):
    """[(step, training loss)] from the run's TensorBoard logs (tensorboard's own event reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = os.path.join(run.path, layout.LOGS)
    if not os.path.isdir(logs):
        return []
    acc = EventAccumulator(logs, size_guidance={"scalars": 0})
    acc.Reload()
    if "train/loss" not in acc.Tags().get("scalars", []):
        return []
    return sorted({e.step: e.value for e in acc.Scalars("train/loss")}.items())  # a resumed run logs a step once


def all_results(tree):
    """all_eval_results.json, the original's aggregate: {tasks folder: {short experiment name: {task: metrics}}},
    an evaluation other than the default one keyed `<short name>@<its metrics folder>`."""
    out = {}
    for tf, runs in tree.items():
        for r in runs:
            for evs in r.evaluations.values():
                for t, e in evs.items():
                    key = layout.short_name(r.folder) + ("" if e.folder == layout.METRICS else "@" + e.folder)
                    out.setdefault(tf, {}).setdefault(key, {})[t] = e.metrics
    return out


def tasks_of(tasks_folder, runs):
    """The tasks a tasks folder's report shows: those its name gives, in that order, then any other evaluated."""
    present = {t for r in runs for evs in r.evaluations.values() for t in evs}
    named = [t for t in layout.tasks_of_folder(tasks_folder) if t in present]
    return named + sorted(present - set(named))
