"""Who is writing to an experiment folder: a folder in use holds an advisory lock (`fcntl.flock` on
`<folder>/.lock`, which the kernel releases when the process ends, crash included); a second training or
evaluation of the same folder is refused in one line naming who holds it.

Where the file system supports no flock (NFS without a lock daemon, Lustre mounted without flock: ENOLCK,
EOPNOTSUPP), the folder is held by a lock file made by exclusive create instead (`<folder>/.lock.held`, holding
the holder's host, pid and the pid's start time), removed when the block ends. A lock file that outlived its
holder (a crash, a kill -9) is recognised on the same host (the pid is gone, or now another process) and taken
over with one line; one held from another host cannot be checked from here and is refused with the way to
remove it."""

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager, nullcontext

from keys_values.experiment.layout import LOCK, LOCK_HELD
from utils import UserError

NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}  # a file system without flock
WRITING_S = 60  # an empty lock file older than this was left by a holder that died while writing it


def process_start(pid):
    """The start time of process `pid` (clock ticks after boot, /proc/<pid>/stat field 22), or None when there
    is no such process or no /proc; a pid taken again by another process has another start time."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def describe(held):
    """'training (pid 123 on host h, since 2026-12-06 14:02:00)' from a lock file's contents."""
    return f"{held.get('what', 'another process')} (pid {held.get('pid')} on host {held.get('host')}, since " \
           f"{held.get('since')})"


def read_held(path):
    """(contents, stale) of a lock file: contents None when it is gone; stale when its holder has ended (same
    host, pid gone or reused) or died while writing it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        age = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return None, False
    try:
        held = json.loads(text)
        held["pid"] = int(held["pid"])
    except (ValueError, KeyError, TypeError):  # being written now, or left half-written by a holder that died
        return {"what": "another process", "pid": "?", "host": "?", "since": "?"}, age > WRITING_S
    if held.get("host") != socket.gethostname():
        return held, False  # another machine's process: cannot be checked from here
    start = process_start(held["pid"])
    return held, start is None or (held.get("start") is not None and start != held["start"])


def holder(folder):
    """A description of the process holding the folder's lock ('training (pid 123, since 14:02)'), or None
    when nobody holds it."""
    path = os.path.join(folder, LOCK)
    if os.path.isfile(path):
        with open(path, "a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                return f.read().strip() or "another process"
            except OSError as e:
                if e.errno not in NO_FLOCK:
                    raise
            else:
                fcntl.flock(f, fcntl.LOCK_UN)
    held, stale = read_held(os.path.join(folder, LOCK_HELD))
    return describe(held) if held is not None and not stale else None


def claim(folder, what, say):
    """Make the folder's lock file by exclusive create, taking over a stale one; a live holder is refused."""
    path = os.path.join(folder, LOCK_HELD)
    me = {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            held, stale = read_held(path)
            if held is None:  # its holder removed it meanwhile
                continue
            if not stale:
                raise UserError(f"{folder} is in use by {describe(held)}: wait for it to end (or stop it) and run "
                                f"again; if that process has ended, remove {path}") from None
            say(f"note: {path} was left by {describe(held)}, which has ended: taken over")
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return path
    raise UserError(f"{folder}: could not take its lock file {path} (others keep taking it): run again")


@contextmanager
def lock(folder, what, say=lambda line: print(line, file=sys.stderr)):
    """Hold the folder's lock while the block runs: a second writer (training or evaluation) is refused with a
    UserError naming the holder. `what` says who we are ('training', 'evaluation'). A folder left holding
    nothing but the lock is removed again, with the parents made for it. Without flock, a lock file (see the
    module's docstring), with one line through `say`."""
    created, path = [], os.path.abspath(folder)
    while not os.path.exists(path):  # the folders made here, removed again if left empty
        created.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        f = open(os.path.join(folder, LOCK), "a+", encoding="utf-8")
    except OSError as e:  # read-only, not permitted, a file on the way, a name too long: before any model loads
        raise UserError(f"cannot write in {folder}: {e.strerror or e} (choose a folder you can write to)") from None
    held = None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{folder} is in use by {who}: wait for it to end (or stop it) and run again") from None
    except OSError as e:
        if e.errno not in NO_FLOCK:
            f.close()
            raise UserError(f"cannot lock {folder}: {e.strerror or e}") from None
        say(f"note: this file system gives no file locks ({errno.errorcode.get(e.errno, e.errno)}): "
            f"{os.path.join(folder, LOCK_HELD)} holds the folder instead")
        try:
            held = claim(folder, what, say)
        except BaseException:
            f.close()
            raise
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{what} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        yield
    finally:
        if held is not None:
            try:
                os.unlink(held)
            except FileNotFoundError:
                pass
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
