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

from keys_values.config import LAUNCHERS
from keys_values.launch.execution import Execution, Tally
from keys_values.launch.local import run_local, slots
from keys_values.launch.runs import Outcome, Run, SlurmOptions, failures_message, status_path
from keys_values.launch.slurm import run_slurm
from utils import UserError

__all__ = ["run_all", "Run", "Outcome", "SlurmOptions", "failures_message", "status_path", "LAUNCHERS"]


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
    tally = Tally(len(runs), progress)
    if launcher == "serial":
        outcomes = []
        for run in runs:
            progress(f"\n{run.name}: starting (log {run.log})")
            outcomes.append(tally.finished(Execution(run, echo=True)()))
        return outcomes
    if launcher == "local":
        return run_local(runs, slots(gpus, gpus_per_run, parallel), tally, progress)
    if folder is None:
        raise UserError("the slurm launcher needs a folder for submitit's files")
    return run_slurm(runs, slurm or SlurmOptions(), gpus_per_run, folder, tally, progress)
