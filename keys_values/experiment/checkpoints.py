"""The `checkpoint-<step>` folders the Trainer writes: a resumed run uses the newest whole one and says, one
line each, why it skipped the others."""

import json
import os

from keys_values.experiment.layout import ADAPTER_WEIGHTS, CHECKPOINT

TRAINER_STATE = "trainer_state.json"


def step_of(path):
    """The step of a checkpoint folder (checkpoint-<step>)."""
    return int(CHECKPOINT.fullmatch(os.path.basename(os.path.normpath(path)))[1])


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
    state_file = os.path.join(path, TRAINER_STATE)
    try:
        with open(state_file, encoding="utf-8") as f:
            st = json.load(f)
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError) as e:
        return f"trainer_state.json unreadable ({str(e).splitlines()[0][:80]})"
    if not isinstance(st, dict) or st.get("global_step") != step:
        return f"trainer_state.json says step {st.get('global_step') if isinstance(st, dict) else None}, not {step}"
    weights = [f for f in (ADAPTER_WEIGHTS, "adapter_model.bin") if os.path.isfile(os.path.join(path, f))]
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
