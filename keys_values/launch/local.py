"""local: several runs at once on this machine, one per group of GPUs (pinned through CUDA_VISIBLE_DEVICES) or,
without GPUs, `parallel` runs, each with its share of the cores (threads and CPU affinity)."""

import concurrent.futures
import os
import queue
import threading

from keys_values import environment
from keys_values.launch.execution import Execution
from utils import UserError


def slots(gpus, gpus_per_run, parallel):
    """[(extra environment, cores)] of the runs that go at once: a group of GPUs each, or `parallel` CPU runs."""
    if gpus is None:
        gpus = environment.visible_gpus()
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


def run_local(runs, slots, tally, progress):
    free = queue.Queue()
    for slot in slots:
        free.put(slot)

    executions = [None] * len(runs)

    def one(k):
        env, cores = free.get()  # as many workers as slots: there is always one free
        try:
            run = runs[k]
            gpus = f", CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
            executions[k] = Execution(run, env=env, cpus=cores)
            if stopping.is_set():  # Ctrl-C came before this run started: it starts nothing
                executions[k].stop()
            progress(f"{run.name}: starting on {len(cores)} core(s){gpus} (log {run.log})")
            return executions[k]()
        finally:
            free.put((env, cores))

    stopping = threading.Event()
    outcomes = [None] * len(runs)
    with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
        futures = {pool.submit(one, k): k for k in range(len(runs))}
        try:
            for f in concurrent.futures.as_completed(futures):
                outcomes[futures[f]] = tally.finished(f.result())
        except KeyboardInterrupt:  # Ctrl-C: every running command saves and ends, its status written; none starts
            stopping.set()
            for f in futures:
                f.cancel()
            for execution in executions:
                if execution is not None:
                    execution.interrupt()
            concurrent.futures.wait([f for f in futures if not f.cancelled()])
            raise
    return outcomes
