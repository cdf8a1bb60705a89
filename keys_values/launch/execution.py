"""One run in this process tree (its commands in order, its log, its status file), and the progress line
with an ETA that every launcher prints.

Each command runs in a session of its own, and a stop (a scheduler's time limit: SIGUSR1; Ctrl-C: SIGINT) is sent
to it and to every process below it, whatever their sessions: a training started through `accelerate launch` has
its workers in sessions of their own (torch's elastic agent starts them so) and a signal to the launcher alone
would leave them training while the launcher dies. The run then waits for all of them to end (each saves its
checkpoint at the end of its step) before it reports."""

import codecs
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from keys_values.launch.runs import Outcome, status_path
from utils import RESUMABLE, write_json


STOP_WAIT_S = 600  # how long a stopped command's processes may take to save and end before they are killed


def descendants(pid):
    """Every process below `pid` (children, their children...), read from /proc; [] where there is no /proc."""
    parents = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="utf-8") as f:
                    stat = f.read()
                parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def signal_all(pids, sig):
    """Send `sig` to each of `pids` (one that has ended already is passed over); returns the pids."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class Execution:
    """A run's commands in order, in the calling thread. The thread's CPU affinity and blocked signals are set
    first: a child inherits both from the thread that starts it. stop() (from another thread or a signal
    handler) asks the running command and every process below it to stop with SIGUSR1 (interrupt(): SIGINT) and
    starts no further command."""

    def __init__(self, run, env=None, echo=False, cpus=None, block=(), attempt_of=None):
        self.run, self.echo, self.cpus, self.block, self.attempt_of = run, echo, cpus, block, attempt_of
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._lock = threading.Lock()
        self._child = None
        self._stopping = False
        self._signalled = []  # the processes a stop was sent to
        self.final = False  # True once the outcome is the run's own, not one that stop() caused

    def __call__(self):
        run, n = self.run, len(self.run.commands)
        os.makedirs(os.path.dirname(run.log), exist_ok=True)
        record = self._record_start()
        if self.cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, self.cpus)  # 0: this thread (Linux)
        if self.block:
            signal.pthread_sigmask(signal.SIG_BLOCK, self.block)
        rc, note = 0, ""
        with open(run.log, "ab") as log:
            for i, cmd in enumerate(run.commands, 1):
                with self._lock:
                    if self._stopping:
                        rc = RESUMABLE
                        break
                    header = f"\n$ {shlex.join(cmd)}\n"
                    log.write(header.encode())
                    log.flush()
                    if self.echo:
                        print(header, end="", flush=True)
                    try:
                        self._child = subprocess.Popen(cmd, env=self.env, stderr=subprocess.STDOUT,
                                                       stdout=subprocess.PIPE if self.echo else log,
                                                       start_new_session=True)
                    except OSError as e:
                        rc, note = 127, f"command {i}/{n} could not start: {e}"
                        break
                try:
                    if self.echo:
                        tee(self._child.stdout, log)
                    rc = self._child.wait()
                except KeyboardInterrupt:  # Ctrl-C to the study: the command saves and ends, the status is written
                    self.interrupt()
                    try:
                        if self.echo:
                            tee(self._child.stdout, log)  # the rest of its output: what it kept, how to continue
                        rc = self._child.wait()
                        self.wait_for_stopped()
                    except KeyboardInterrupt:  # a second Ctrl-C: at once
                        self.kill()
                        rc = self._child.wait()
                    record.update(ended=time.time(), returncode=rc)
                    write_json(status_path(run), record)
                    raise
                self.wait_for_stopped()
                if rc:
                    break
            with self._lock:
                self.final = rc == 0 or not self._stopping
        if rc and self._stopping and not note:  # asked to stop: whatever the launcher in between made of it
            rc, note = RESUMABLE, "interrupted (resumable)"
        if rc and not note:
            note = describe(rc, i, n)
        record.update(ended=time.time(), returncode=rc)
        write_json(status_path(run), record)
        return Outcome(run, rc == 0, rc, run.log, record["started"], record["ended"], note)

    def _record_start(self):
        """Start the run's status record; a requeued attempt of the same Slurm job keeps its first start."""
        record = {"name": self.run.name, "job": self.attempt_of, "started": time.time(), "ended": None,
                  "returncode": None, "starts": 1}
        try:
            with open(status_path(self.run)) as f:
                before = json.load(f)
        except (OSError, ValueError):
            before = {}
        if self.attempt_of and before.get("job") == self.attempt_of:
            record.update(started=before["started"], starts=before["starts"] + 1)
        write_json(status_path(self.run), record)
        return record

    def stop(self, sig=signal.SIGUSR1):
        """Ask the running command and every process below it to stop (SIGUSR1: save a checkpoint at the end of
        the step) and start no other; False when the run had already ended."""
        with self._lock:
            if self.final:
                return False
            self._stopping = True
            child = self._child
        if child is not None and child.poll() is None:
            self._signalled = signal_all([child.pid, *descendants(child.pid)], sig)
        return True

    def interrupt(self):
        """Ctrl-C: SIGINT to the running command and every process below it (the training saves and ends)."""
        return self.stop(signal.SIGINT)

    def wait_for_stopped(self, timeout=STOP_WAIT_S):
        """After a stop, wait until every process it reached has ended (their checkpoints saved), then kill what
        is left."""
        deadline = time.time() + timeout
        while self._signalled and time.time() < deadline:
            self._signalled = [p for p in self._signalled if alive(p)]
            if self._signalled:
                time.sleep(0.2)
        signal_all(self._signalled, signal.SIGKILL)
        self._signalled = []

    def kill(self):
        if self._child is not None:
            signal_all([*descendants(self._child.pid), self._child.pid], signal.SIGKILL)


def tee(stream, log):
    """Copy a child's output to the log and the console as it comes (chunks, so progress bars stay live)."""
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    while chunk := stream.read1(65536):
        log.write(chunk)
        log.flush()
        sys.stdout.write(decode(chunk))
        sys.stdout.flush()
    stream.close()


def describe(rc, i, n):
    if rc == RESUMABLE:
        return "interrupted (resumable)"
    if rc < 0:
        return f"command {i}/{n} killed by {signal.Signals(-rc).name}"
    return f"command {i}/{n} exited with code {rc}"


class Tally:
    """The progress line: finished/total, failures so far, and an ETA from the pace of the finished runs."""

    def __init__(self, total, progress):
        self.total, self.progress, self.t0 = total, progress, time.time()
        self.done = self.failed = 0
        self._lock = threading.Lock()

    def finished(self, o):
        with self._lock:
            self.done += 1
            self.failed += not o.ok
            left = self.total - self.done
            eta = f"ETA {duration((time.time() - self.t0) / self.done * left)}" if left else "all done"
            took = f" in {duration(o.ended - o.started)}" if o.started and o.ended else ""
            self.progress(f"[{self.done}/{self.total} finished, {self.failed} failed, {eta}] "
                          f"{o.run.name}: {'ok' if o.ok else o.note}{took}")
        return o


def duration(s):
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
