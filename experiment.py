"""An experiment folder as a place: what state it is in, who is writing to it, and which checkpoint a resumed
run continues from. Both scripts ask it before they load a model.

- state: `new` (absent or empty), `partial` (a training started and did not finish), `finished` (it holds
  experiment.json, written last).
- lock: a folder in use holds an advisory lock (`fcntl.flock` on `<folder>/.lock`, which the kernel releases
  when the process ends, crash included); a second training or evaluation of the same folder is refused in
  one line naming who holds it.
- checkpoints: `checkpoint-<step>` folders the Trainer writes; a resumed run uses the newest whole one and
  says, one line each, why it skipped the others.
"""

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager

from common import UserError

LOCK = ".lock"
RECORD = "experiment.json"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def state(folder):
    """'new', 'partial' or 'finished' (see the module's docstring); the lock file alone leaves a folder new."""
    if not os.path.isdir(folder) or not [f for f in os.listdir(folder) if f != LOCK]:
        return "new"
    return "finished" if os.path.isfile(os.path.join(folder, RECORD)) else "partial"


# ----------------------------------------------------------------------------------------------------
# Who is writing to a folder


def holder(folder):
    """A description of the process holding the folder's lock ('training (pid 123, since 14:02)'), or None
    when nobody holds it."""
    path = os.path.join(folder, LOCK)
    if not os.path.isfile(path):
        return None
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


@contextmanager
def lock(folder, what):
    """Hold the folder's advisory lock while the block runs: a second writer (training or evaluation) is
    refused with a UserError naming the holder. `what` says who we are ('training', 'evaluation'). A folder
    left holding nothing but the lock is removed again, with the parents made for it."""
    created, path = [], os.path.abspath(folder)
    while not os.path.exists(path):  # the folders made here, removed again if left empty
        created.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        f = open(os.path.join(folder, LOCK), "a+", encoding="utf-8")
    except OSError as e:  # read-only, not permitted, a file on the way, a name too long: before any model loads
        raise UserError(f"cannot write in {folder}: {e.strerror or e} (choose a folder you can write to)") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{folder} is in use by {who}: wait for it to end (or stop it) and run again") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{what} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        yield
    finally:
        if os.path.isdir(folder) and [n for n in os.listdir(folder) if n != LOCK] == []:
            os.unlink(os.path.join(folder, LOCK))  # nothing was written: leave no empty folder behind
            for path in created:
                try:
                    os.rmdir(path)
                except OSError:  # not empty: something else was written there meanwhile
                    break
        f.close()  # closing the file releases the lock


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoints(folder):
    """[(step, path)] of the `checkpoint-<step>` folders, oldest first; other names are ignored."""
    out = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            m = CHECKPOINT.fullmatch(name)
            if m and os.path.isdir(os.path.join(folder, name)):
                out.append((int(m[1]), os.path.join(folder, name)))
    return sorted(out)


def not_checkpoint_folders(folder):
    """Paths named `checkpoint-<step>` that are not folders (a file, a broken link): the Trainer cannot write
    its checkpoint of that step there, so a resumed run refuses to start while one is in the way."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if CHECKPOINT.fullmatch(n) and not os.path.isdir(os.path.join(folder, n)))


def checkpoint_problem(path, step):
    """Why a checkpoint folder cannot be resumed from, or None when it is whole: its trainer_state.json reads
    and names its step, its adapter weights, optimizer and scheduler states are there and not empty, and the
    adapter's safetensors header reads."""
    state_file = os.path.join(path, "trainer_state.json")
    try:
        with open(state_file, encoding="utf-8") as f:
            st = json.load(f)
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError) as e:
        return f"trainer_state.json unreadable ({str(e).splitlines()[0][:80]})"
    if not isinstance(st, dict) or st.get("global_step") != step:
        return f"trainer_state.json says step {st.get('global_step') if isinstance(st, dict) else None}, not {step}"
    weights = [f for f in ("adapter_model.safetensors", "adapter_model.bin") if os.path.isfile(os.path.join(path, f))]
    sharded = [f for f in os.listdir(path) if f.startswith("pytorch_model_fsdp")]
    if not weights and not sharded:
        return "no adapter weights"
    if weights and weights[0].endswith(".safetensors"):
        try:
            from safetensors import safe_open

            with safe_open(os.path.join(path, weights[0]), "pt") as f:
                if not list(f.keys()):
                    return "adapter weights hold no tensors"
        except Exception as e:  # noqa: BLE001 - any unreadable file is a reason to skip it
            return f"adapter weights unreadable ({str(e).splitlines()[0][:80]})"
    for name, alternatives in (("optimizer", ("optimizer.pt", "optimizer_0")), ("scheduler", ("scheduler.pt",))):
        present = [a for a in alternatives if os.path.exists(os.path.join(path, a))]
        if not present:
            return f"no {name} state"
    # every file the Trainer reads back with torch.load when it resumes must load (a file cut off while it was
    # written, or overwritten, fails there with a traceback after the model has loaded)
    saved = sorted(f for f in os.listdir(path) if f in ("optimizer.pt", "scheduler.pt", "scaler.pt", "adapter_model.bin")
                   or (f.startswith("rng_state") and f.endswith(".pth")))
    for name in saved:
        problem = torch_file_problem(os.path.join(path, name))
        if problem:
            return f"{name} {problem}"
    return None


def torch_file_problem(path):
    """Why a file written by torch.save cannot be read back as the Trainer reads it (weights_only, with the
    Trainer's allowed numpy types), or None.
    Memory-mapped, so that the check reads the file's index, not its tensors."""
    if os.path.getsize(path) == 0:
        return "is empty"
    import torch
    from transformers.trainer_pt_utils import safe_globals  # the numpy types the Trainer allows in rng_state.pth

    try:
        with safe_globals():
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                torch.load(path, map_location="cpu", weights_only=True)  # an old-format file cannot be mapped
    except Exception as e:  # noqa: BLE001 - any unreadable file is a reason to skip its checkpoint
        return f"is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else 'cut off'})"
    return None


def newest_whole_checkpoint(folder, report=print):
    """(step, path) of the newest whole checkpoint, or None; each newer one that is not whole is reported in
    one line saying why it is skipped."""
    for step, path in reversed(checkpoints(folder)):
        problem = checkpoint_problem(path, step)
        if problem is None:
            return step, path
        report(f"--resume: skipping {path}: {problem}")
    return None


# ----------------------------------------------------------------------------------------------------
# A folder given where an experiment folder was expected


def not_an_experiment(path):
    """Why `path` is not an experiment folder, in words that say what to give instead, or None when it may be
    one: a file, an adapter folder (assets/), a metrics, logs or checkpoint folder, a model folder, a base
    model's evaluation folder, a tasks folder holding experiments or an output root holding tasks folders."""
    path = os.path.normpath(path)
    name, parent = os.path.basename(path), os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file, not an experiment folder"
    if name == "assets" and os.path.isfile(os.path.join(path, "adapter_config.json")):
        return f"{path} is the adapter folder of an experiment: give its experiment folder {parent}"
    if name.startswith("metrics") or CHECKPOINT.fullmatch(name) or (name == "logs" and trained_here(parent)):
        return f"{path} is inside an experiment: give its experiment folder {parent}"
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "assets")):
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
    names = [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d, "assets")) or
             os.path.isfile(os.path.join(folder, d, RECORD))]
    return sorted(names, key=lambda d: (not os.path.isdir(os.path.join(folder, d, "assets")), d))


def trained_here(folder):
    """Whether a training wrote into `folder`: its identity.json, a checkpoint, its adapter or its record."""
    if not os.path.isdir(folder):
        return False
    return any(n in ("identity.json", "assets", RECORD) or CHECKPOINT.fullmatch(n) for n in os.listdir(folder))
