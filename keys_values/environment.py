"""Everything the project reads from the environment and the machine, in one place: whether the hub may be
asked, the processes a launcher started, FSDP asked for, the visible GPUs, the cache folder, Slurm's CPUs.

Imports no torch at module level (the GPU count imports it when asked)."""

import functools
import os
import socket
import threading
from dataclasses import dataclass

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TRUE = ("1", "true", "yes", "on")


def offline():
    """HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set to a true value."""
    return any(os.environ.get(v, "").lower() in TRUE for v in OFFLINE_VARIABLES)


def hub_reachable():
    """False at once when offline() or the hub does not answer in 3 s (asked once per process)."""
    return False if offline() else _hub_answers()


@functools.lru_cache(maxsize=1)
def _hub_answers(timeout=3.0):
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    ok = []

    def probe():  # in a thread: name resolution itself ignores socket timeouts
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def cache_dir():
    """The project's cache folder: $XDG_CACHE_HOME/kv-lora (default ~/.cache/kv-lora)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kv-lora")


def world_size():
    """Processes a launcher (accelerate launch, torchrun) started: WORLD_SIZE, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


def fsdp_requested():
    """`accelerate launch` with an FSDP config exports ACCELERATE_USE_FSDP=true to every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


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


def slurm_cpus():
    """The CPUs Slurm gave this task (SLURM_CPUS_PER_TASK), and whether the thread count is already set."""
    return os.environ.get("SLURM_CPUS_PER_TASK"), "OMP_NUM_THREADS" in os.environ


def cpu_name():
    """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (an empty set where there are none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass(frozen=True)
class Machine:
    """What one process runs on: the GPUs it sees (0 on a CPU), the processes its launcher started, its rank
    on this node, whether FSDP was asked for, and whether it is a machine planned for (a --dry_run's bf16-capable
    GPU) rather than this one."""
    gpus: int
    processes: int = 1
    local_rank: int = 0
    fsdp: bool = False
    planned: bool = False

    @property
    def cuda(self):
        return self.gpus > 0


def this_machine():
    """The Machine this process runs on."""
    import torch

    return Machine(torch.cuda.device_count(), world_size(), local_rank(), fsdp_requested())


def planned_machine(where):
    """The Machine a --dry_run plans for: 'here' (this one), 'gpu' (one bf16-capable GPU) or 'fsdp:N'
    (N such GPUs, FSDP)."""
    if where in (None, "here"):
        return this_machine()
    if where == "gpu":
        return Machine(1, planned=True)
    n = int(where.split(":", 1)[1])
    return Machine(1, n, 0, True, planned=True)
