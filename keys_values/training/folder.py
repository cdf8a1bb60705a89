"""The experiment folder a training may write, decided before any model loads: a new run; a finished run with
the same identity, left as it is (Finished); an interrupted one resumed from its newest whole checkpoint, only
with the flags it was started with; anything else one line naming the flags that differ."""

import os
from contextlib import contextmanager

from keys_values import identity
from keys_values.experiment import checkpoints, layout, lock, records
from keys_values.experiment.state import state as folder_state
from utils import UserError, read_json


class Finished(Exception):
    """The folder holds a finished run with the same identity: --resume leaves it as it is."""


def check_folder(out, args, ident):
    """Refuse to mix two runs in one folder; decide whether to resume, and from which checkpoint. A finished run
    is reused only with the same identity (Finished), an interrupted one resumed only with the flags it was
    started with; otherwise a one-line error names the flags that differ."""
    state = folder_state(out)
    if state == "new":
        if args.resume:
            resume_elsewhere(out, args, ident)
            print(f"--resume: nothing to resume in {out}; starting a new run")
        return None
    if args.overwrite:
        return None
    if state == "finished":
        record = read_json(layout.record_path(out), "experiment record")
        differ = identity.differences(records.recorded_identity(record), ident)
        if differ:
            raise UserError(f"{out} holds a finished run made with other settings ({'; '.join(differ)}): "
                            "--overwrite replaces it, or choose another --output_root")
        if args.resume:
            raise Finished(f"{out} holds a finished run with these settings ({record.get('global_step')} steps, train "
                           f"loss {record.get('train_loss')}): nothing to do (--overwrite trains it again)")
        raise UserError(f"{out} already holds a finished run: --overwrite replaces it")
    who = lock.holder(out)
    if who is not None:  # a run still writing it: not a partial run to resume
        raise UserError(f"{out} is in use by {who}: wait for it to end (or stop it) and run again")
    started = records.started_identity(out)
    if started is not None:
        differ = identity.differences(started, ident)
        if differ:
            raise UserError(f"{out} holds an interrupted run started with other settings ({'; '.join(differ)}): "
                            "resume it with the flags it was started with, or --overwrite to start again")
    if not args.resume:
        raise UserError(f"{out} already holds a partial run: pass --resume to continue it or --overwrite to replace it")
    blocking = checkpoints.not_checkpoint_folders(out)
    if blocking:
        raise UserError(f"{blocking[0]} is not a checkpoint folder, and the Trainer would write its checkpoint there: "
                        "move it out of the experiment folder, then --resume")
    found = checkpoints.newest_whole_checkpoint(out)
    if found is None:
        print(f"--resume: {out} holds no whole checkpoint yet; starting from the first step")
        return None
    print(f"--resume: continuing from {found[1]} (step {found[0]})")
    return found[1]


def resume_elsewhere(out, args, ident):
    """--resume into a new folder: when an interrupted run of the same tasks, modules and seed was started with
    other flags, say which differ instead of silently starting a new run."""
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        return
    best = None
    for name in os.listdir(parent):
        folder = os.path.join(parent, name)
        if folder_state(folder) != "partial":
            continue
        try:
            other = records.started_identity(folder)
        except UserError:
            continue
        if other is None:
            continue
        if any(other.get(k) != ident.get(k) for k in ("target_modules", "seed", "tasks")):
            continue
        differ = identity.differences(other, ident)
        if differ and (best is None or len(differ) < len(best[1])):
            best = (os.path.join(parent, name), differ)
    if best:
        raise UserError(f"--resume: no run with these settings in {out}; {best[0]} holds an interrupted run that "
                        f"differs ({'; '.join(best[1])}): resume it with its own flags, or drop --resume to start a "
                        "new run")


def empty(out):
    """--overwrite: everything in the folder removed but the lock this process holds."""
    import shutil

    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name not in layout.LOCKS:
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def kept(out):
    """'checkpoint-<step> kept', or that there is none yet: what an interrupted run leaves to resume from."""
    found = checkpoints.newest_whole_checkpoint(out, report=lambda line: None)
    return f"{layout.checkpoint_name(found[0])} kept" if found else "no checkpoint yet (the run will start again)"


def step_of(out):
    found = checkpoints.checkpoints(out)
    return f"after {layout.checkpoint_name(found[-1][0])}" if found else "before the first checkpoint"


DISK_FULL = ("No space left on device", "file write failed", "unexpected pos", "Disk quota exceeded")


def disk_full(error):
    """Whether an error raised while a checkpoint or the run was written means the disk is full: ENOSPC or
    EDQUOT from Python's files, or torch.save's own words for a write that did not complete."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, (OSError, RuntimeError)) and any(w in str(error) for w in DISK_FULL)


@contextmanager
def disk_full_in_one_line(out, trainable):
    """A full disk while the block writes the run (its checkpoints, its record) is one line (disk_full_message);
    any other error passes as it is."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not disk_full(e):
            raise
        raise UserError(disk_full_message(out, trainable)) from None


def disk_full_message(out, trainable):
    """One line: the folder, the space free there, what a checkpoint of this run needs, and how to go on."""
    import shutil

    found = checkpoints.newest_whole_checkpoint(out, report=lambda line: None)
    if found:
        need = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(found[1]) for f in fs)
        how = f"the size of {os.path.basename(found[1])}"
    else:  # the adapter and Adam's two moments in fp32, with the Trainer's small files
        need, how = 12 * trainable + (1 << 20), "the adapter and its optimizer state"
    free = shutil.disk_usage(out if os.path.isdir(out) else os.path.dirname(out) or ".").free
    return (f"no space left on the device of {out} ({gib(free)} free) while writing the run ({step_of(out)}): a "
            f"checkpoint needs about {gib(need)} ({how}); free that much, or give --output_root on a larger disk, then "
            f"run the same command with --resume; {kept(out)}")


def gib(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"
