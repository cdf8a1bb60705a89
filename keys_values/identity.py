"""What identifies a run: the one place that says which settings change a result.

A training run is identified by every setting that changes the trained adapter: the data (which rows: tasks,
sampling, and a fingerprint of the rows themselves), the recipe (epochs or steps, batch, learning rate, LoRA
rank/scale/dropout, adapted modules, loss, block length, processes), the precision, the seed and the base
model. Settings that do not change the adapter (where it is written, how often it logs or saves, gradient
checkpointing, which recomputes the same values) are not part of it.

The experiment folder keeps the original's name for the original's settings (experiment/layout.py spells it);
every other setting that differs from the original's default (config.original_default) adds to it: readable
parts for the settings users vary most (`-loss-completion`, `-shortened`, `-steps{N}`, `-seed{N}`) and one
short, stable hash of the rest (`-h{8 hex}`) that experiment.json spells out. The data fingerprint is not in
the name (the same data may live in another folder): it is checked before a finished run is reused or an
interrupted one resumed.

An evaluation is identified by its scoring, precision, prompt length, generation length and examples: metrics
of different evaluations live side by side, and the report pairs two runs only when their evaluation
identities are equal. An edit run (knowledge editing) is identified likewise (editing_identity).

Imports nothing heavy: the report and the study ask it without a model.
"""

import hashlib
import json
import os

from keys_values import config
from keys_values.editing.config import EditingConfig

# Settings in the training identity that the folder name does not spell; their original values are
# config.original_default's (per-device batch and accumulation follow --bnb, as in the original).
HASHED = ("model", "max_samples", "per_device_train_batch_size", "gradient_accumulation_steps", "processes",
          "learning_rate", "lora_alpha", "max_seq_length", "dtype", "model_content")
# Settings the folder name spells, in the original's fields or as readable parts.
NAMED = ("tasks", "train_sample_fraction", "epochs", "lora_r", "dropout", "target_modules", "bnb", "loss_on",
         "shorten_to_block", "max_steps", "seed")
TRAINING = NAMED + HASHED + ("data",)


def original_value(key, bnb):
    """The original's value of a hashed setting."""
    if key == "model":
        return model_name(config.ORIGINAL_MODEL)
    if key == "processes":
        return config.ORIGINAL_PROCESSES
    if key == "dtype":
        return config.ORIGINAL_DTYPE
    if key == "model_content":
        return None  # a hub id: the model is its name
    return config.original_default(key, bnb)


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


def training(args, target_modules, dtype, processes, data, model_content=None):
    """The identity of a training run: {setting: value} for every key in TRAINING. `args` is the training
    flags (a TrainingConfig, or a dict of them as a record holds), `target_modules` the resolved module names,
    `dtype` the resolved compute dtype ('fp32', 'bf16', 'fp16'), `processes` the number of data-parallel
    processes, `data` the data fingerprint (None when not known) and `model_content` a local base's content
    fingerprint (models.content_fingerprint; None for a hub id). A local base is known by its content: two
    different bases both saved as `model/` differ, and a renamed or moved folder is the same base (its name is
    kept in "model" for the reader, and left out of comparisons and of the folder's hash)."""
    a = args if isinstance(args, dict) else vars(args)
    return {
        "tasks": list(a["tasks"]), "train_sample_fraction": a["train_sample_fraction"], "epochs": a["epochs"],
        "lora_r": a["lora_r"], "dropout": a["dropout"], "target_modules": list(target_modules) if target_modules else None,
        "bnb": bool(a["bnb"]), "loss_on": a.get("loss_on", "all"), "shorten_to_block": bool(a.get("shorten_to_block")),
        "max_steps": a.get("max_steps", -1), "seed": a.get("seed", config.DEFAULT_SEED),
        "model": model_name(a["pretrained_ckpt"]), "max_samples": a["max_samples"],
        "per_device_train_batch_size": a["per_device_train_batch_size"],
        "gradient_accumulation_steps": a["gradient_accumulation_steps"], "processes": processes,
        "learning_rate": a["learning_rate"], "lora_alpha": a["lora_alpha"], "max_seq_length": a["max_seq_length"],
        "dtype": dtype, "data": data, "model_content": model_content,
    }


def hashed_part(ident):
    """{setting: value} of the hashed settings that differ from the original's, and the suffix that stands
    for them ('' when none differs)."""
    differ = {k: ident[k] for k in HASHED if ident.get(k) != original_value(k, ident["bnb"])}
    if ident.get("model_content"):  # a local base: its content, not its folder's name...
        differ.pop("model", None)
        if ident.get("model") == original_value("model", ident["bnb"]):  # ...but a local copy of the original's
            differ.pop("model_content", None)  # model keeps the original's folder name (its content still compared)
    return differ, ("-h" + fingerprint(differ, 8) if differ else "")


def without_seed(ident):
    """The identity with the seed left out: what the runs of one study setting share."""
    return {k: v for k, v in ident.items() if k != "seed"}


def differences(recorded, wanted, keys=TRAINING):
    """The settings whose values differ between two identities, as 'name: recorded -> wanted' texts. A key
    missing from `recorded` (an older record) is not compared."""
    out = []
    same_content = recorded.get("model_content") and recorded.get("model_content") == wanted.get("model_content")
    for k in keys:
        if k == "model" and same_content:
            continue  # the same local base under another folder name
        if k in recorded and k in wanted and recorded[k] != wanted[k]:
            r, w = recorded[k], wanted[k]
            if k == "data":
                out.append(f"the training rows (fingerprint {r} -> {w})")
            elif k == "model_content":
                out.append(f"the base model's content (fingerprint {r} -> {w})")
            else:
                out.append(f"--{k} {fmt(r)} -> {fmt(w)}")
    return out


def fmt(value):
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# ----------------------------------------------------------------------------------------------------
# Evaluations

EVALUATION = ("scoring", "max_test_samples", "max_new_tokens", "prompt_budget", "bnb", "dtype", "data", "base")


def evaluation(scoring, max_test_samples, max_new_tokens, prompt_budget, bnb, dtype, data, base=None):
    """The identity of one task's evaluation: how it was scored, on which examples (their fingerprint and
    count), in which precision, with which prompt budget (tokens), for generation how many new tokens, and the
    base model under the adapter: None for the one it was trained on (or the base model alone, whose folder
    names it), else that base's label (--allow_other_base)."""
    return {"scoring": scoring, "max_test_samples": max_test_samples,
            "max_new_tokens": max_new_tokens if scoring == "generate" else None, "prompt_budget": prompt_budget,
            "bnb": bool(bnb), "dtype": dtype, "data": data, "base": base}


def comparable(a, b):
    """Whether two evaluations of a task can be paired: the same identity (same scoring, precision, prompt
    budget, generation length and examples). Returns (bool, the keys that differ)."""
    differ = [k for k in EVALUATION if a.get(k) != b.get(k)]
    return not differ, differ


# ----------------------------------------------------------------------------------------------------
# Knowledge editing

# the settings of an editing run its folder name does not spell; their defaults are EditingConfig's (LoRA's rank
# and scale count only with --method lora)
EDITING_HASHED = ("steps", "learning_rate", "early_stop_loss", "norm_constraint", "lora_r", "lora_alpha", "max_edits",
                  "dtype", "fluency")
EDITING_NAMED = ("model", "edits", "method", "objective", "layer", "arm", "modules", "seed", "sequential", "data")


def editing(cfg, model, edits, layer, arm, modules, seed, data):
    """The identity of one editing run: the base model's name, the edit set's name and the fingerprint of the
    edits it makes (`data`), the method and objective, the layer, the arm (its name and the modules it resolves
    to), the seed, sequential or not, and every hyperparameter (LoRA's only with --method lora)."""
    lora = cfg.method == "lora"
    return {"model": model, "edits": edits, "method": cfg.method, "objective": cfg.objective, "layer": layer,
            "arm": arm, "modules": list(modules), "seed": seed, "sequential": bool(cfg.sequential), "data": data,
            "steps": cfg.steps, "learning_rate": cfg.learning_rate, "early_stop_loss": cfg.early_stop_loss,
            "norm_constraint": cfg.norm_constraint, "lora_r": cfg.lora_r if lora else None,
            "lora_alpha": cfg.lora_alpha if lora else None, "max_edits": cfg.max_edits, "dtype": cfg.dtype,
            "fluency": bool(cfg.fluency)}


def editing_hashed_part(ident):
    """{setting: value} of the editing settings that differ from their defaults, and the suffix that stands for
    them ('' when none differs)."""
    defaults = {k: None if k.startswith("lora_") else config.default_of(EditingConfig, k) for k in EDITING_HASHED}
    differ = {k: ident[k] for k in EDITING_HASHED if ident.get(k) != defaults[k]}
    return differ, ("-h" + fingerprint(differ, 8) if differ else "")


def without_arm(ident):
    """An editing identity without its arm: what two arms compared on the same edits must share."""
    return {k: v for k, v in ident.items() if k not in ("arm", "modules")}
