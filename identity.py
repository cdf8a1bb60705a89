"""What identifies a run: the one place that says which settings change a result.

A training run is identified by every setting that changes the trained adapter: the data (which rows: tasks,
sampling, and a fingerprint of the rows themselves), the recipe (epochs or steps, batch, learning rate, LoRA
rank/scale/dropout, adapted modules, loss, block length, processes), the precision, the seed and the base
model. Settings that do not change the adapter (where it is written, how often it logs or saves, gradient
checkpointing, which recomputes the same values) are not part of it.

The experiment folder keeps the original's name for the original's settings
(`classification-sampleFraction-{f}_epochs-{e}_rank-{r}_dropout-{d}[-{modules}]-{4bit|standard}`); every other
setting that differs from the original's default adds to it: readable parts for the settings users vary most
(`-loss-completion`, `-shortened`, `-steps{N}`, `-seed{N}`) and one short, stable hash of the rest (`-h{8 hex}`)
that experiment.json spells out. The data fingerprint is not in the name (the same data may live in
another folder): it is checked before a finished run is reused or an interrupted one resumed.

An evaluation is identified by its scoring, precision, prompt length, generation length and examples: metrics
of different evaluations live side by side (`metrics/` for the default evaluation, `metrics-<parts>/` for the
others), and the report pairs two runs only when their evaluation identities are equal.

Imports nothing heavy: the report and the study ask it without a model.
"""

import hashlib
import json
import os

DEFAULT_SEED = 42  # the original's runs; another seed adds -seed<N> to the experiment folder's name
ORIGINAL_MODEL = "NousResearch/Llama-2-7b-hf"

# Settings in the training identity that the folder name does not spell, with the original's value
# (per-device batch and accumulation depend on --bnb, as in the original: 32 x 2 with it, 4 x 16 without).
HASHED = {
    "model": os.path.basename(ORIGINAL_MODEL),
    "max_samples": 5000,
    "per_device_train_batch_size": None,
    "gradient_accumulation_steps": None,
    "processes": 1,
    "learning_rate": 2e-4,
    "lora_alpha": 16,
    "max_seq_length": 512,
    "dtype": "bf16",  # the original trained under bf16 (its 4-bit layers computed in bf16)
}
# Settings the folder name spells, in the original's fields or as readable parts.
NAMED = ("tasks", "train_sample_fraction", "epochs", "lora_r", "dropout", "target_modules", "bnb", "loss_on",
         "shorten_to_block", "max_steps", "seed")
TRAINING = NAMED + tuple(HASHED) + ("data",)


def original_default(key, bnb):
    """The original's value of a hashed setting (the batch and accumulation follow --bnb)."""
    if key == "per_device_train_batch_size":
        return 32 if bnb else 4
    if key == "gradient_accumulation_steps":
        return 2 if bnb else 16
    return HASHED[key]


def model_name(ckpt):
    """A base model's name in the identity: the last part of a hub id or folder ('Llama-2-7b-hf'), so that
    the hub id and a local copy of the same model are one model."""
    return os.path.basename(os.path.normpath(str(ckpt))).removesuffix(".gguf") or str(ckpt)


def fingerprint(obj, length=12):
    """A short, stable hash of a JSON-serialisable value (hex digits of its SHA-256)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:length]


def data_fingerprint(per_task):
    """Fingerprint of the rows a run trains on or an evaluation scores: {task: [Example]} in task order,
    each example's fields and label."""
    return fingerprint([[name, [[e.fields, e.label] for e in examples]] for name, examples in per_task.items()])


def training(args, target_modules, dtype, processes, data):
    """The identity of a training run: {setting: value} for every key in TRAINING. `args` is the training
    script's parsed flags (a Namespace or dict), `target_modules` the resolved module names, `dtype` the
    resolved compute dtype ('fp32', 'bf16', 'fp16'), `processes` the number of data-parallel processes and
    `data` the data fingerprint (None when not known)."""
    a = args if isinstance(args, dict) else vars(args)
    return {
        "tasks": list(a["tasks"]), "train_sample_fraction": a["train_sample_fraction"], "epochs": a["epochs"],
        "lora_r": a["lora_r"], "dropout": a["dropout"], "target_modules": list(target_modules) if target_modules else None,
        "bnb": bool(a["bnb"]), "loss_on": a.get("loss_on", "all"), "shorten_to_block": bool(a.get("shorten_to_block")),
        "max_steps": a.get("max_steps", -1), "seed": a.get("seed", DEFAULT_SEED),
        "model": model_name(a["pretrained_ckpt"]), "max_samples": a["max_samples"],
        "per_device_train_batch_size": a["per_device_train_batch_size"],
        "gradient_accumulation_steps": a["gradient_accumulation_steps"], "processes": processes,
        "learning_rate": a["learning_rate"], "lora_alpha": a["lora_alpha"], "max_seq_length": a["max_seq_length"],
        "dtype": dtype, "data": data,
    }


def hashed_part(ident):
    """{setting: value} of the hashed settings that differ from the original's, and the suffix that stands
    for them ('' when none differs)."""
    differ = {k: ident[k] for k in HASHED if ident.get(k) != original_default(k, ident["bnb"])}
    return differ, ("-h" + fingerprint(differ, 8) if differ else "")


def folder_name(ident):
    """The experiment folder's name for a training identity (see the module's docstring)."""
    name = (f"classification-sampleFraction-{ident['train_sample_fraction']}_epochs-{ident['epochs']}_rank-"
            f"{ident['lora_r']}_dropout-{ident['dropout']}")
    if ident["target_modules"]:
        name += "-" + ",".join(ident["target_modules"])
    if ident["loss_on"] != "all":
        name += f"-loss-{ident['loss_on']}"
    if ident["shorten_to_block"]:
        name += "-shortened"
    if ident["max_steps"] and ident["max_steps"] > 0:
        name += f"-steps{ident['max_steps']}"
    if ident["seed"] != DEFAULT_SEED:
        name += f"-seed{ident['seed']}"
    name += hashed_part(ident)[1]
    return name + ("-4bit" if ident["bnb"] else "-standard")


def without_seed(ident):
    """The identity with the seed left out: what the runs of one study setting share."""
    return {k: v for k, v in ident.items() if k != "seed"}


def differences(recorded, wanted, keys=TRAINING):
    """The settings whose values differ between two identities, as 'name: recorded -> wanted' texts. A key
    missing from `recorded` (an older record) is not compared."""
    out = []
    for k in keys:
        if k in recorded and k in wanted and recorded[k] != wanted[k]:
            r, w = recorded[k], wanted[k]
            if k == "data":
                out.append(f"the training rows (fingerprint {r} -> {w})")
            else:
                out.append(f"--{k} {fmt(r)} -> {fmt(w)}")
    return out


def fmt(value):
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# ----------------------------------------------------------------------------------------------------
# Evaluations

EVALUATION = ("scoring", "max_test_samples", "max_new_tokens", "prompt_budget", "bnb", "dtype", "data")
EVAL_DEFAULTS = {"scoring": "generate", "max_test_samples": 1000, "max_new_tokens": 20}


def evaluation(scoring, max_test_samples, max_new_tokens, prompt_budget, bnb, dtype, data):
    """The identity of one task's evaluation: how it was scored, on which examples (their fingerprint and
    count), in which precision, with which prompt budget (tokens) and, for generation, how many new tokens."""
    return {"scoring": scoring, "max_test_samples": max_test_samples,
            "max_new_tokens": max_new_tokens if scoring == "generate" else None, "prompt_budget": prompt_budget,
            "bnb": bool(bnb), "dtype": dtype, "data": data}


def metrics_folder(scoring="generate", max_test_samples=1000, max_new_tokens=20, max_input_length=None, bnb=None,
                   dtype=None, data_root=None):
    """The folder of an evaluation's metrics inside an experiment: `metrics` (the original's place) for the
    default evaluation, `metrics-<parts>` for another, from the flags that differ from the defaults (`bnb`,
    `dtype` and `data_root` only when given on the command line, i.e. not None)."""
    parts = []
    if scoring != "generate":
        parts.append(scoring)
    if max_test_samples != EVAL_DEFAULTS["max_test_samples"]:
        parts.append(f"n{max_test_samples}")
    if scoring == "generate" and max_new_tokens != EVAL_DEFAULTS["max_new_tokens"]:
        parts.append(f"new{max_new_tokens}")
    if max_input_length is not None:
        parts.append(f"len{max_input_length}")
    if bnb is not None:
        parts.append("4bit" if bnb else "16bit")
    if dtype is not None and dtype != "auto":
        parts.append(dtype)
    if data_root is not None:
        parts.append("data-" + fingerprint(os.path.abspath(data_root), 6))
    return "-".join(["metrics", *parts])


def comparable(a, b):
    """Whether two evaluations of a task can be paired: the same identity (same scoring, precision, prompt
    budget, generation length and examples). Returns (bool, the keys that differ)."""
    differ = [k for k in EVALUATION if a.get(k) != b.get(k)]
    return not differ, differ
