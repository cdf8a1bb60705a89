"""slurm: one submitit job array, one task per run, requeued on the time-limit signal; the study waits for the
array and prints a progress line as tasks finish."""

import json
import os
import shlex
import signal
import threading
import time

from keys_values import environment
from keys_values.launch.execution import Execution
from keys_values.launch.runs import Outcome, status_path
from utils import UserError

POLL_S = 10.0  # how often the study looks at its Slurm array tasks
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # where keys_values is


def run_slurm(runs, o, gpus_per_run, folder, tally, progress):
    import submitit

    params = {"job_name": o.job_name, "time": o.time, "signal_delay_s": o.signal_delay_s,
              # the task unpickles launch.py's classes: make this folder importable wherever sbatch runs it
              "setup": [f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"]}
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
    jobs = executor.map_array(SlurmTask(max(5, o.signal_delay_s - 30)), runs)
    array = jobs[0].job_id.split("_")[0]
    progress(f"Slurm job {array}: {len(runs)} run(s) submitted; submitit's files in {executor.folder}")
    outcomes, pending = [None] * len(runs), dict(enumerate(jobs))
    try:
        while pending:
            for k, job in list(pending.items()):
                if job.done():
                    outcomes[k] = tally.finished(slurm_outcome(runs[k], job))
                    del pending[k]
            if pending:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        progress(f"stopped waiting; the array keeps running on Slurm (scancel {array} stops it)")
        raise
    return outcomes


def slurm_outcome(run, job):
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


class SlurmTask:
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
        cpus, threads_set = environment.slurm_cpus()
        if cpus and not threads_set:
            env = {"OMP_NUM_THREADS": cpus, "MKL_NUM_THREADS": cpus}
        self._execution = Execution(run, env=env, block=(signal.SIGUSR2,),
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
