"""The records an experiment folder holds, read back: experiment.json (written by training.plan.RunPlan.record
when a run finishes, or by an evaluation of the base model), identity.json (written when a training starts),
and what a folder written by the original code says about its run (no record: its names, its
`<trainable>_total_<all>.txt` and assets/adapter_config.json). The report and the evaluation read them here."""

import os

from keys_values import config, identity, roles
from keys_values.arms import setting_label, setting_role
from keys_values.experiment import layout, lock, state
from utils import UserError, read_json


def read_experiment(exp_dir):
    """The record of a trained experiment, after checking its adapter is there and readable: its
    experiment.json, or, for a folder the original code wrote (no experiment.json), original_record."""
    wrong = state.not_an_experiment(exp_dir)
    if wrong is None and not os.path.isdir(exp_dir):
        wrong = f"experiment folder {exp_dir} does not exist"
    if wrong:
        raise UserError(wrong)
    assets = layout.assets(exp_dir)
    if not os.path.isdir(assets):
        who = lock.holder(exp_dir)
        if who:
            raise UserError(f"{exp_dir} is still being trained ({who}): evaluate it when the training has finished")
        if state.state(exp_dir) == "new":
            raise UserError(f"{exp_dir} holds no training run (no assets/ folder): train it first")
        if not state.trained_here(exp_dir):
            held = sorted(os.listdir(exp_dir))
            more = f" and {len(held) - 4} more" if len(held) > 4 else ""
            raise UserError(f"{exp_dir} is not an experiment folder: no assets/, no experiment.json, no checkpoint "
                            f"(it holds {', '.join(held[:4])}{more}); give a folder a training wrote")
        raise UserError(f"{exp_dir} has no assets/ folder: its training did not finish (run the training command "
                        "again with --resume to finish it)")
    cfg = read_json(os.path.join(assets, layout.ADAPTER_CONFIG), "adapter config")
    if not isinstance(cfg, dict) or "target_modules" not in cfg:
        raise UserError(f"adapter config {assets}/{layout.ADAPTER_CONFIG} is corrupt (no target_modules)")
    path = layout.record_path(exp_dir)
    if os.path.isfile(path):
        exp = read_json(path, "experiment record")
        if not isinstance(exp, dict) or "args" not in exp:
            raise UserError(f"experiment record {path} is corrupt (no args)")
        return exp
    return original_record(exp_dir, cfg)


def original_record(exp_dir, adapter_config):
    """What a folder written by the original code says about its run: tasks from the parent folder's name,
    4-bit from the -4bit suffix, the base model from the adapter config."""
    name = os.path.basename(os.path.normpath(exp_dir))
    m = layout.ORIGINAL_NAME.match(name)
    if m is None:
        raise UserError(f"{exp_dir} has no experiment.json and its name is not the original's "
                        "classification-sampleFraction-..._epochs-..._rank-..._dropout-...-4bit|standard")
    trainable, total = layout.counts_of(exp_dir)
    modules = adapter_config["target_modules"]
    args = {"tasks": layout.tasks_of_folder(os.path.basename(os.path.dirname(os.path.abspath(exp_dir)))) or None,
            "pretrained_ckpt": adapter_config.get("base_model_name_or_path"), "bnb": m["mode"] == "4bit",
            "train_sample_fraction": float(m["fraction"]), "epochs": int(m["epochs"]), "lora_r": int(m["rank"]),
            "dropout": float(m["dropout"]), "target_modules": sorted(modules) if isinstance(modules, list) else modules,
            "data_root": "", "dtype": "auto", "trust_remote_code": False, "seed": config.DEFAULT_SEED,
            "loss_on": "all"}
    return {"kind": "lora", "layout": "original", "args": args, "base_checkpoint": args["pretrained_ckpt"],
            "target_modules": args["target_modules"], "trainable_params": trainable, "total_params": total}


def recorded_identity(record):
    """The identity a record was made with; reconstructed (without the data) for an older record."""
    if "identity" in record:
        return record["identity"]
    a = record.get("args", {})
    try:
        ident = identity.training(a, record.get("target_modules"), record.get("precision", {}).get("dtype"), 1, None)
    except KeyError:
        return {}
    return {k: v for k, v in ident.items() if k != "data"}


def started_identity(exp_dir):
    """The identity an interrupted run was started with (identity.json), or None where there is none."""
    path = layout.identity_path(exp_dir)
    return read_json(path, "run identity").get("identity", {}) if os.path.isfile(path) else None


def finished_identity(exp_dir):
    """The identity of the finished run in a folder (its experiment.json)."""
    return recorded_identity(read_json(layout.record_path(exp_dir), "experiment record"))


# ----------------------------------------------------------------------------------------------------
# What a record says, in the report's words


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
    return setting_role(roles_of_record(record)) if modules_of(record) else "other"


def setting_name(record):
    """'base (no adapter)', 'q,v', 'q,v+up (keys)', 'q,v+down (values)', ... from an experiment's record."""
    if record.get("kind") == "base":
        return "base (no adapter)"
    modules = modules_of(record)
    return setting_label(modules, roles_of_record(record)) if modules else "default"


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


def seed_of(record):
    return record.get("args", {}).get("seed") or config.DEFAULT_SEED


def record_or_empty(exp):
    """An experiment's record: experiment.json, or what a folder of the original code says; {} if neither."""
    try:
        return read_experiment(exp)
    except UserError:
        path = layout.record_path(exp)
        if os.path.isfile(path):
            try:
                record = read_json(path, "experiment record")
            except UserError as e:
                print(f"warning: {e}; left out")
                return {}
            return record if isinstance(record, dict) else {}
        return {}
