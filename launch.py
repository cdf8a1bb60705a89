"""Where the study's runs go: one after another here (serial), several at once on this machine (local), or a
Slurm job array (slurm). It knows nothing about tasks or models.

A run is one experiment: commands (argv lists) run one after another, stopping at the first non-zero exit, their
output appended to the run's log. Its times, last return code and number of starts are recorded in a small json
next to the log (`status_path`), written whole. A failed run does not stop the others: `run_all` returns every
run's `Outcome`, and `failures_message` names each failed run and its log in one line.

Exit code 75 (RESUMABLE) means "stopped early, resumable": the training script exits with it when, on SIGUSR1,
it has saved a checkpoint at the end of the current optimizer step. Serial and local report it as "interrupted (resumable)",
not ok. On Slurm, the time-limit / pre-emption signal (submitit's SIGUSR2, sent `signal_delay_s` before the limit)
makes the array task send SIGUSR1 to the running command, wait for it (bounded) and requeue itself through
submitit's checkpoint mechanism; the requeued task runs the run's commands again (the study gives the training
command --resume, so it continues from its last checkpoint).

local: one run per group of `gpus_per_run` GPUs, pinned through CUDA_VISIBLE_DEVICES; without GPUs, `parallel`
runs at once (default 1: one torch training already uses every core through its intra-op threads, so more
processes only pay off when a run cannot fill the cores: small models, evaluation, tokenising). Each run gets its
share of the cores: OMP_NUM_THREADS / MKL_NUM_THREADS = cores // runs at once, and those cores as CPU affinity.
This is concurrent.futures + subprocess, not submitit's LocalExecutor: LocalExecutor starts every submission at
once (no limit on concurrency), gives every job the same first `gpus_per_node` of `visible_gpus` (no GPU groups),
kills a job after `timeout_min` (2 minutes by default) and sets no thread counts or affinity.

slurm: one submitit job array (SlurmExecutor.map_array), one array task per run; submitit's files (pickles, its
logs %A_%a_0_log.out/.err) go under `<folder>/submitit`, each run's output to its own log. The study waits and
prints a progress line as tasks finish.
"""

import codecs
import concurrent.futures
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import utils
from common import UserError

LAUNCHERS = ("serial", "local", "slurm")
RESUMABLE = 75  # a command's exit code for "stopped early after saving a checkpoint; run me again to continue"
POLL_S = 10.0  # how often the study looks at its Slurm array tasks
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Run:
    """One experiment: `commands` (argv lists) run in order, stopping at the first non-zero exit; their output is
    appended to `log`."""

    name: str
    commands: tuple  # of argv tuples; lists are accepted and made tuples of str
    log: str

    def __post_init__(self):
        object.__setattr__(self, "commands", tuple(tuple(str(a) for a in cmd) for cmd in self.commands))
        object.__setattr__(self, "log", os.path.abspath(self.log))


@dataclass
class Outcome:
    """How a run ended. `returncode` is the last command's (None when the scheduler ended the run); `note` says
    why it is not ok; `started` / `ended` are unix times of its first start and its end, from where it ran."""

    run: Run
    ok: bool
    returncode: int | None
    log: str
    started: float | None
    ended: float | None
    note: str = ""

    @property
    def resumable(self):
        return self.returncode == RESUMABLE


@dataclass(frozen=True)
class SlurmOptions:
    """The array's sbatch settings; every array task gets them all (one task = one run)."""

    partition: str | None = None
    time: int = 240  # minutes per task; a longer run is stopped, requeued and resumes
    gpus_per_task: int | None = None  # sbatch --gpus-per-node (one task per node); None: run_all's gpus_per_run;
    # a cluster that wants --gres instead: gpus_per_task=0, additional={"gres": "gpu:2"}
    cpus_per_task: int | None = None  # also the task's OMP_NUM_THREADS / MKL_NUM_THREADS
    mem: int | float | str | None = None  # GB as a number, or sbatch's own string ("64G")
    account: str | None = None
    array_parallelism: int | None = None  # at most this many tasks at once (None: submitit's 256)
    additional: dict = field(default_factory=dict)  # any other sbatch parameter, e.g. {"qos": "high"}
    signal_delay_s: int = 120  # SIGUSR2 this long before the limit; the command gets signal_delay_s - 30 s to stop
    max_requeues: int = 10  # submitit's max_num_timeout: requeues after a time limit (pre-emptions do not count)
    job_name: str = "study"


def run_all(runs, launcher="serial", *, parallel=None, gpus_per_run=1, gpus=None, slurm=None, folder=None,
            progress=print):
    """Run every run, return their Outcomes in the same order.

    launcher: "serial" (one after another, output also on the console), "local" (several at once here) or
    "slurm" (a job array; `slurm` holds its SlurmOptions, `folder` is where submitit keeps its files).
    parallel: local only: at most this many runs at once (default: one per GPU group, or 1 without GPUs).
    gpus_per_run: local: the size of each run's GPU group (when there are GPUs); slurm: the GPUs each array task
    asks for, unless SlurmOptions.gpus_per_task says otherwise (0: none, for a CPU-only study).
    gpus: local only: the GPUs to share out: None to detect (CUDA_VISIBLE_DEVICES, else torch), a count, or ids.
    progress: called with one line whenever a run starts or ends.
    """
    runs = list(runs)
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if len({r.log for r in runs}) != len(runs):
        raise UserError("two runs share a log file: give each run its own")
    if not runs:
        return []
    tally = _Tally(len(runs), progress)
    if launcher == "serial":
        outcomes = []
        for run in runs:
            progress(f"\n{run.name}: starting (log {run.log})")
            outcomes.append(tally.finished(_Execution(run, echo=True)()))
        return outcomes
    if launcher == "local":
        return _run_local(runs, _slots(gpus, gpus_per_run, parallel), tally, progress)
    if folder is None:
        raise UserError("the slurm launcher needs a folder for submitit's files")
    return _run_slurm(runs, slurm or SlurmOptions(), gpus_per_run, folder, tally, progress)


def failures_message(outcomes):
    """One line naming each run that did not end ok, why, and its log; "" when every run ended ok."""
    bad = [o for o in outcomes if not o.ok]
    if not bad:
        return ""
    return (f"{len(bad)} of {len(outcomes)} runs did not finish: "
            + "; ".join(f"{o.run.name} ({o.note}; log {o.log})" for o in bad))


def status_path(run):
    """The json next to a run's log: name, started, ended, returncode, starts (more than 1 after a requeue)."""
    return os.path.splitext(run.log)[0] + ".status.json"


# ----------------------------------------------------------------------------------------------------
# One run, in this process tree


class _Execution:
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
                    _tee(self._child.stdout, log)
                rc = self._child.wait()
                if rc:
                    break
            with self._lock:
                self.final = rc == 0 or not self._stopping
        if rc and not note:
            note = _describe(rc, i, n)
        record.update(ended=time.time(), returncode=rc)
        utils.write_json(status_path(run), record)
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
        utils.write_json(status_path(self.run), record)
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


def _tee(stream, log):
    """Copy a child's output to the log and the console as it comes (chunks, so progress bars stay live)."""
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    while chunk := stream.read1(65536):
        log.write(chunk)
        log.flush()
        sys.stdout.write(decode(chunk))
        sys.stdout.flush()
    stream.close()


def _describe(rc, i, n):
    if rc == RESUMABLE:
        return "interrupted (resumable)"
    if rc < 0:
        return f"command {i}/{n} killed by {signal.Signals(-rc).name}"
    return f"command {i}/{n} exited with code {rc}"


class _Tally:
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
            eta = f"ETA {_duration((time.time() - self.t0) / self.done * left)}" if left else "all done"
            took = f" in {_duration(o.ended - o.started)}" if o.started and o.ended else ""
            self.progress(f"[{self.done}/{self.total} finished, {self.failed} failed, {eta}] "
                          f"{o.run.name}: {'ok' if o.ok else o.note}{took}")
        return o


def _duration(s):
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# ----------------------------------------------------------------------------------------------------
# local: several runs at once on this machine


def visible_gpus():
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES when set (up to its first invalid id, as CUDA
    reads it), else 0 .. torch.cuda.device_count() - 1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = []
        for g in (g.strip() for g in env.split(",")):
            if not g or g.startswith("-"):
                break
            ids.append(g)
        return ids
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def _slots(gpus, gpus_per_run, parallel):
    """[(extra environment, cores)] of the runs that go at once: a group of GPUs each, or `parallel` CPU runs."""
    if gpus is None:
        gpus = visible_gpus()
    elif isinstance(gpus, int):
        gpus = [str(i) for i in range(gpus)]
    if parallel is not None and parallel < 1:
        raise UserError(f"parallel must be at least 1, not {parallel}")
    if gpus:
        if not 1 <= gpus_per_run <= len(gpus):
            raise UserError(f"gpus_per_run={gpus_per_run} does not fit the {len(gpus)} GPUs here")
        groups = [",".join(gpus[i:i + gpus_per_run]) for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)]
        groups = groups[:parallel or len(groups)]
    else:
        groups = [None] * (parallel or 1)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
    share = max(1, len(cores) // len(groups))
    slots = []
    for k, group in enumerate(groups):
        mine = cores[k * share:(k + 1) * share] if len(cores) >= len(groups) else cores
        env = {"OMP_NUM_THREADS": str(len(mine)), "MKL_NUM_THREADS": str(len(mine))}
        if group is not None:
            env["CUDA_VISIBLE_DEVICES"] = group
        slots.append((env, mine))
    return slots


def _run_local(runs, slots, tally, progress):
    free = queue.Queue()
    for slot in slots:
        free.put(slot)

    def one(run):
        env, cores = free.get()  # as many workers as slots: there is always one free
        try:
            gpus = f", CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
            progress(f"{run.name}: starting on {len(cores)} core(s){gpus} (log {run.log})")
            return _Execution(run, env=env, cpus=cores)()
        finally:
            free.put((env, cores))

    outcomes = [None] * len(runs)
    with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
        futures = {pool.submit(one, run): k for k, run in enumerate(runs)}
        for f in concurrent.futures.as_completed(futures):
            outcomes[futures[f]] = tally.finished(f.result())
    return outcomes


# ----------------------------------------------------------------------------------------------------
# slurm: a submitit job array, one task per run


def _run_slurm(runs, o, gpus_per_run, folder, tally, progress):
    import submitit

    params = {"job_name": o.job_name, "time": o.time, "signal_delay_s": o.signal_delay_s,
              # the task unpickles launch.py's classes: make this folder importable wherever sbatch runs it
              "setup": [f"export PYTHONPATH={shlex.quote(HERE)}${{PYTHONPATH:+:$PYTHONPATH}}"]}
    gpus = gpus_per_run if o.gpus_per_task is None else o.gpus_per_task
    if gpus:
        params["gpus_per_node"] = gpus
    if o.mem is not None:
        params["mem"] = o.mem if isinstance(o.mem, str) else f"{o.mem:g}G" if o.mem == int(o.mem) else f"{o.mem * 1024:.0f}M"
    for name in ("partition", "cpus_per_task", "account", "array_parallelism"):
        if getattr(o, name) is not None:
            params[name] = getattr(o, name)
    if o.additional:
        params["additional_parameters"] = dict(o.additional)
    try:
        executor = submitit.SlurmExecutor(folder=os.path.join(os.path.abspath(folder), "submitit"),
                                          max_num_timeout=o.max_requeues)
    except RuntimeError as e:  # no srun on PATH
        raise UserError(f"the slurm launcher needs Slurm here: {e}") from e
    executor.update_parameters(**params)
    jobs = executor.map_array(_SlurmTask(max(5, o.signal_delay_s - 30)), runs)
    array = jobs[0].job_id.split("_")[0]
    progress(f"Slurm job {array}: {len(runs)} run(s) submitted; submitit's files in {executor.folder}")
    outcomes, pending = [None] * len(runs), dict(enumerate(jobs))
    try:
        while pending:
            for k, job in list(pending.items()):
                if job.done():
                    outcomes[k] = tally.finished(_slurm_outcome(runs[k], job))
                    del pending[k]
            if pending:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        progress(f"stopped waiting; the array keeps running on Slurm (scancel {array} stops it)")
        raise
    return outcomes


def _slurm_outcome(run, job):
    from submitit.core.utils import UncompletedJobError

    try:
        outcome = job.result()
        outcome.run = run
        return outcome
    except UncompletedJobError:  # killed without a result: time limit, memory, node failure, scancel
        note = f"Slurm job {job.job_id} ended {job.state} without a result (see {job.paths.stderr})"
    except Exception:  # raised in the task: a bug here, or a log folder it could not write
        note = f"Slurm job {job.job_id} raised an error (see {job.paths.stderr})"
    try:
        with open(status_path(run)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {}
    return Outcome(run, False, None, run.log, record.get("started"), record.get("ended"), note)


class _SlurmTask:
    """The callable of each array task: run the run's commands in a worker thread (its SIGUSR2 blocked, so the
    commands never see Slurm's time-limit signal) while the main thread waits. On that signal submitit calls
    checkpoint() in the main thread: SIGUSR1 to the command, up to `grace_s` for it to stop (then it is killed),
    and the task requeues itself; run again, it runs the commands again. A run that had already ended is not
    run again: its outcome travels with the requeued task. (submitit requeues any callable with a checkpoint()
    method; submitit.helpers.Checkpointable is only a default one.)"""

    def __init__(self, grace_s):
        self.grace_s = grace_s
        self.finished = None

    def __call__(self, run):
        if self.finished is not None:
            return self.finished
        import submitit

        env = {}
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:
            env = {"OMP_NUM_THREADS": cpus, "MKL_NUM_THREADS": cpus}
        self._execution = _Execution(run, env=env, block=(signal.SIGUSR2,),
                                     attempt_of=submitit.JobEnvironment().job_id)
        self._outcome = self._error = None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()
        while self._thread.is_alive():
            self._thread.join(1.0)  # returns to the main thread's signal handlers at least every second
        if self._error is not None:
            raise self._error
        return self._outcome

    def _work(self):
        try:
            self._outcome = self._execution()
        except BaseException as e:  # raised again in the main thread, where submitit records it
            self._error = e

    def checkpoint(self, run):
        execution = getattr(self, "_execution", None)
        if execution is not None:
            if execution.stop():
                with open(run.log, "a") as log:
                    log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')}: Slurm's time-limit / pre-emption signal: "
                              f"the command was asked to stop (SIGUSR1); the task is requeued\n")
                self._thread.join(self.grace_s)
                if self._thread.is_alive():
                    execution.kill()
            self._thread.join(30)
            if execution.final and self._outcome is not None:
                self.finished = self._outcome
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, run)

    def __getstate__(self):  # what a requeue carries: not the thread, the child, or the lock
        return {"grace_s": self.grace_s, "finished": self.finished}
