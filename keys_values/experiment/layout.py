"""The names of everything in an output root, in one place.

    <output root>/<tasks comma-joined>/                  a tasks folder
      <experiment folder>/                               folder_name(training identity)
        identity.json                                    written when the training starts
        experiment.json                                  written last: the run finished
        assets/                                          adapter and tokenizer (save_pretrained)
        logs/                                            TensorBoard
        checkpoint-<step>/                               Trainer checkpoints
        <trainable>_total_<all>.txt, results.pkl, results.json
        metrics/<task>_metrics_update.json, <task>_predictions.jsonl, adapter_norms.json
        metrics-<parts>/...                              another evaluation (metrics_folder)
        .lock                                            held while a process writes
      base-<model name>/metrics/...                      the base model alone
      study-logs/<experiment folder>.log, .status.json   the study's runs
      summary.md, summary.png                            the report
    <output root>/all_eval_results.json                  the original's aggregate
    <output root>/knowledge_editing/...                  knowledge editing (editing/layout.py)

The experiment folder keeps the original's name for the original's settings,
`classification-sampleFraction-{f}_epochs-{e}_rank-{r}_dropout-{d}[-{modules}]-{4bit|standard}`; the original
wrote its two lists as Python reprs (`['boolq', 'CB']`), this project comma-joined. Imports nothing heavy.
"""

import ast
import os
import re
import tempfile

from keys_values import config, identity
from utils import UserError

IDENTITY = "identity.json"
RECORD = "experiment.json"
ASSETS = "assets"
LOGS = "logs"
LOCK = ".lock"
LOCK_HELD = ".lock.held"  # where flock is not supported (NFS, Lustre): a lock file made by exclusive create
LOCKS = (LOCK, LOCK_HELD)  # the files of a lock: a folder holding nothing else is new
RESULTS_PKL = "results.pkl"
RESULTS_JSON = "results.json"
METRICS = "metrics"
NORMS = "adapter_norms.json"
METRICS_SUFFIX = "_metrics_update.json"
PREDICTIONS_SUFFIX = "_predictions.jsonl"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
STUDY_LOGS = "study-logs"
SUMMARY_MD, SUMMARY_PNG = "summary.md", "summary.png"
ALL_RESULTS = "all_eval_results.json"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
COUNTS = re.compile(r"(\d+)_total_(\d+)\.txt")
ORIGINAL_NAME = re.compile(r"classification-sampleFraction-(?P<fraction>[^_]+)_epochs-(?P<epochs>\d+)_rank-(?P<rank>\d+)"
                           r"_dropout-(?P<dropout>[0-9.e+]+)(?:-(?P<modules>.+?))?-(?P<mode>4bit|standard)$")
SEED_PART = re.compile(r"-seed\d+(?=(-h[0-9a-f]{8})?-(4bit|standard)$)")


def folder_name(ident):
    """The experiment folder's name for a training identity (identity.py: the original's name for the
    original's settings, with parts added for the settings that differ)."""
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
    if ident["seed"] != config.DEFAULT_SEED:
        name += f"-seed{ident['seed']}"
    name += identity.hashed_part(ident)[1]
    return name + ("-4bit" if ident["bnb"] else "-standard")


def without_seed(name):
    """An experiment folder's name with its -seed<N> part left out: what the runs of one setting share."""
    return SEED_PART.sub("", name)


def short_name(folder):
    """The original's short experiment name (all_eval_results.json): f, e, r, d for its fields."""
    for long, short in (("classification-sampleFraction-", "f"), ("epochs-", "e"), ("rank-", "r"), ("dropout-", "d")):
        folder = folder.replace(long, short)
    return folder


def tasks_folder(tasks):
    return ",".join(tasks)


def experiment_dir(root, ident):
    """<root>/<tasks comma-joined>/<folder_name(ident)>."""
    return os.path.join(root, tasks_folder(ident["tasks"]), folder_name(ident))


def tasks_of_folder(name):
    """The tasks a tasks folder is named after: 'boolq,CB' (this project) or "['boolq', 'CB']" (the original)."""
    if name.startswith("["):
        try:
            tasks = ast.literal_eval(name)
        except (ValueError, SyntaxError):
            return []
        return [str(t) for t in tasks] if isinstance(tasks, list) else []
    return [t for t in name.split(",") if t]


def base_dir(root, tasks, ckpt):
    """Where the base model's own (no adapter) evaluation goes: <root>/<tasks>/base-<model name>."""
    name = os.path.basename(os.path.normpath(ckpt)).replace(".gguf", "") or "model"
    return os.path.join(root, tasks_folder(tasks), f"base-{name}")


def study_logs(root, tasks):
    return os.path.join(root, tasks_folder(tasks), STUDY_LOGS)


def metrics_folder(scoring=None, max_test_samples=None, max_new_tokens=None, max_input_length=None, bnb=None,
                   dtype=None, data_root=None, base=None):
    """The folder of an evaluation's metrics inside an experiment: `metrics` (the original's place) for the
    default evaluation, `metrics-<parts>` for another, from the flags that differ from the defaults (None: the
    default; `bnb`, `dtype` and `data_root` only when given on the command line; `base`: the label of a base other
    than the adapter's own, --allow_other_base)."""
    default = config.evaluation_default
    scoring = scoring or default("scoring")
    max_test_samples = default("max_test_samples") if max_test_samples is None else max_test_samples
    max_new_tokens = default("max_new_tokens") if max_new_tokens is None else max_new_tokens
    parts = []
    if scoring != default("scoring"):
        parts.append(scoring)
    if max_test_samples != default("max_test_samples"):
        parts.append(f"n{max_test_samples}")
    if scoring == "generate" and max_new_tokens != default("max_new_tokens"):
        parts.append(f"new{max_new_tokens}")
    if max_input_length is not None:
        parts.append(f"len{max_input_length}")
    if bnb is not None:
        parts.append("4bit" if bnb else "16bit")
    if dtype is not None and dtype != "auto":
        parts.append(dtype)
    if data_root is not None:
        parts.append("data-" + identity.fingerprint(os.path.abspath(data_root), 6))
    if base is not None:
        parts.append(f"base-{base}")
    return "-".join([METRICS, *parts])


def is_metrics_folder(name):
    return name == METRICS or name.startswith(METRICS + "-")


def metrics_folders(exp):
    """The experiment's metrics folders: metrics/ first, then metrics-<parts>/."""
    names = [n for n in os.listdir(exp) if is_metrics_folder(n) and os.path.isdir(os.path.join(exp, n))]
    return sorted(names, key=lambda n: (n != METRICS, n))


def metrics_path(exp_dir, task_name, folder=METRICS):
    """A task's metrics file: the original's metrics/{task}_metrics_update.json for the default evaluation."""
    return os.path.join(exp_dir, folder, f"{task_name}{METRICS_SUFFIX}")


def predictions_path(exp_dir, task_name, folder=METRICS):
    return os.path.join(exp_dir, folder, f"{task_name}{PREDICTIONS_SUFFIX}")


def norms_path(exp_dir, folder=METRICS):
    return os.path.join(exp_dir, folder, NORMS)


def task_of_metrics_file(name):
    """The task a metrics file is of ('CB_metrics_update.json' -> 'CB'), or None for another file."""
    return name[: -len(METRICS_SUFFIX)] if name.endswith(METRICS_SUFFIX) else None


def record_path(exp_dir):
    return os.path.join(exp_dir, RECORD)


def identity_path(exp_dir):
    return os.path.join(exp_dir, IDENTITY)


def assets(exp_dir):
    return os.path.join(exp_dir, ASSETS)


def counts_file(exp_dir, trainable, total):
    return os.path.join(exp_dir, f"{trainable}_total_{total}.txt")


def counts_of(exp_dir):
    """(trainable, total) from the folder's <trainable>_total_<all>.txt, or (None, None)."""
    for name in sorted(os.listdir(exp_dir)):
        m = COUNTS.fullmatch(name)
        if m:
            return int(m[1]), int(m[2])
    return None, None


def checkpoint_name(step):
    return f"checkpoint-{step}"


def check_output_root(root, flag_name="--output_root"):
    """The output root can be created and written to: told in one line before any model loads."""
    path = os.path.abspath(root)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError(f"{flag_name} {root}: {path} is a file, not a folder")
    try:  # a real write: permissions, read-only mounts and file systems that refuse it (os.access may not know)
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=path))
    except OSError as e:
        raise UserError(f"{flag_name} {root}: {path} is not writable ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------------------------
# Knowledge editing: <output root>/knowledge_editing/<model>/<edits>/<run>/
#   identity.json (when the run starts), edits.jsonl (a record per edit, appended as each is done),
#   sequential.safetensors and sequential.json (--sequential: the weights after the edits applied so far),
#   metrics.json (written last: the run finished); <edits>/summary.md, summary.png, edit-logs/

EDITING = "knowledge_editing"
EDIT_RECORDS = "edits.jsonl"
EDIT_METRICS = "metrics.json"
SEQUENTIAL_WEIGHTS, SEQUENTIAL_STATE = "sequential.safetensors", "sequential.json"
EDIT_LOGS = "edit-logs"


def edits_dir(root, model, edits):
    """<root>/knowledge_editing/<model name>/<edits name>: every run on these edits of this model, and their
    comparison."""
    return os.path.join(root, EDITING, model, edits)


def edit_run_name(ident):
    """An editing run's folder name: <method>-<objective>-layer<L>-<arm>[-seed<N>][-sequential][-h<8 hex>], the
    hash standing for the settings that differ from the defaults (identity.editing)."""
    name = f"{ident['method']}-{ident['objective']}-layer{ident['layer']}-{ident['arm']}"
    if ident["seed"] != config.DEFAULT_SEED:
        name += f"-seed{ident['seed']}"
    if ident["sequential"]:
        name += "-sequential"
    return name + identity.editing_hashed_part(ident)[1]


def recorded_paths(exp_dir, **given):
    """{flag: {"absolute": path, "from_experiment": path relative to the experiment folder}} of the local paths
    among `given` (a hub id, or a path that does not exist, is left out): what lets an evaluation run from another
    directory, or after the output root moved with its data beside it, find them again (resolve_recorded)."""
    out = {}
    for flag, value in given.items():
        if value and os.path.exists(value):
            absolute = os.path.abspath(value)
            out[flag] = {"absolute": absolute, "from_experiment": os.path.relpath(absolute, os.path.abspath(exp_dir))}
    return out


def resolve_recorded(exp_dir, record, flag):
    """The value of a recorded flag that names a local path, found from here: as it was given, when that exists
    from the current directory; else its absolute path; else relative to the experiment folder where it is now;
    else as it was given (a hub id, or a path that is gone: its own error follows)."""
    given = record.get("args", {}).get(flag)
    where = record.get("paths", {}).get(flag) or {}
    if not given or os.path.exists(given):
        return given
    for candidate in (where.get("absolute"),
                      os.path.normpath(os.path.join(exp_dir, where["from_experiment"])) if "from_experiment" in where
                      else None):
        if candidate and os.path.exists(candidate):
            return candidate
    return given
