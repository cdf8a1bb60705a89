"""One run in this process tree (its commands in order, its log, its status file), and the progress line
with an ETA that every launcher prints."""

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


class Execution:
    """A run's commands in order, in the calling thread. The thread's CPU affinity and blocked signals are set
    first: a child inherits both from the thread that starts it. stop() (from another thread or a signal
    handler) asks the running command to stop with SIGUSR1 and starts no further command."""

    def __init__(self, run, env=None, echo=False, cpus=None, block=(), attempt_of=None):
        self.run, self.echo, self.cpus, self.block, self.attempt_of = run, echo, cpus, block, attempt_of
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._lock = threading.Lock()
        self._child = None
        self._stopping = False
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
                                                       stdout=subprocess.PIPE if self.echo else log)
                    except OSError as e:
                        rc, note = 127, f"command {i}/{n} could not start: {e}"
                        break
                if self.echo:
                    tee(self._child.stdout, log)
                rc = self._child.wait()
                if rc:
                    break
            with self._lock:
                self.final = rc == 0 or not self._stopping
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

    def stop(self):
        """Ask the running command to stop (SIGUSR1) and start no other; False when the run had already ended."""
        with self._lock:
            if self.final:
                return False
            self._stopping = True
            child = self._child
        if child is not None:
            try:
                child.send_signal(signal.SIGUSR1)
            except ProcessLookupError:
                pass
        return True

    def kill(self):
        if self._child is not None:
            try:
                self._child.kill()
            except ProcessLookupError:
                pass


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
