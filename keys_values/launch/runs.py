"""A run, its outcome and the Slurm array's settings: what every launcher takes and gives back."""

import os
from dataclasses import dataclass, field

from utils import RESUMABLE


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
