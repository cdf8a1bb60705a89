"""Who is writing to an experiment folder: a folder in use holds an advisory lock (`fcntl.flock` on
`<folder>/.lock`, which the kernel releases when the process ends, crash included); a second training or
evaluation of the same folder is refused in one line naming who holds it."""

import fcntl
import os
import time
from contextlib import contextmanager, nullcontext

from keys_values.experiment.layout import LOCK
from utils import UserError


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


def nothing():
    """No lock (another process of the same run holds it)."""
    return nullcontext()
