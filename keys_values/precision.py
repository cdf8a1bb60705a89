"""What precision a run computes in, and where its model goes: the one place for these rules.

Precision: the compute dtype (auto: bf16 on GPUs that support it; on a CPU, bf16 for training only where a probe
measures bf16 matrix products faster), the dtype the weights are loaded in, 4-bit or not, autocast, tf32.
Placement: device_map="auto" in one process (as the original), one full copy per process under accelerate
launch, no device_map under FSDP. The machine is environment.Machine: this one, or one a --dry_run plans for.
"""

import json
import math
import os
import platform
import time
from dataclasses import dataclass

from keys_values import environment
from utils import write_json

BF16_FASTER = 1.3  # auto trains in bf16 on a CPU only where bf16 matrix products run at least this much faster
PROBE_SHAPE = (1024, 576, 1536)  # tokens x hidden x MLP width of the probe's products (the embedded model's MLP)
PROBE_MIN = (256, 512)  # the smallest hidden and MLP widths probed: below them a product's time is noise
# the CPU flags (/proc/cpuinfo) of bf16 instructions: x86's AVX512-BF16 and AMX, arm64's BF16 extension
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16", "svebf16"}
_probes = {}


def cpu_bf16_speedup(shape=PROBE_SHAPE, cache=True):
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones: the ratio of the measured rates
    of the products (tokens x d) @ (d x f) and (tokens x f) @ (f x d), the shapes of a model's MLP, in each
    dtype (a warm-up, then the best of 3; about 0.2 s). Measured once per process and shape and remembered in
    ~/.cache/kv-lora/bf16-probe.json per CPU and torch version, so that a run's precision (part of its
    identity) does not flip between processes on one machine. AVX512-BF16, AMX and arm64's BF16 extension
    make bf16 faster; elsewhere torch's bf16 is a slow fallback (0.01x on an AVX2-only EPYC): where the CPU's
    flags are readable and name no bf16 instruction (BF16_FLAGS), 0.0 without timing anything."""
    import torch

    flags = environment.cpu_flags()
    if flags and not flags & BF16_FLAGS:  # no bf16 instructions: torch's bf16 is a slow fallback, nothing to time
        return 0.0
    key = f"{platform.processor() or platform.machine()}|{environment.cpu_name()}|torch {torch.__version__}|{shape}"
    if key in _probes:
        return _probes[key]
    path = os.path.join(environment.cache_dir(), "bf16-probe.json")
    saved = {}
    if cache:
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {}
        if isinstance(saved, dict) and isinstance(saved.get(key), (int, float)):
            _probes[key] = float(saved[key])
            return _probes[key]
    tokens, d, f = shape
    gen = torch.Generator().manual_seed(0)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w1, w2 = (torch.randn(*s, generator=gen).to(dtype) for s in ((tokens, d), (d, f), (f, d)))
        (x @ w1) @ w2  # warm-up
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            (x @ w1) @ w2
            best = min(best, time.perf_counter() - t)
            if best > 0.25:  # a very slow fallback: one timing says enough
                break
        rates[dtype] = 1 / best
    ratio = round(rates[torch.bfloat16] / rates[torch.float32], 2)
    _probes[key] = ratio
    if cache and isinstance(saved, dict):
        try:
            write_json(path, {**saved, key: ratio})
        except OSError:
            pass
    return ratio




def probe_shape(config):
    """The matrix shapes the bf16 probe multiplies: the model's hidden and MLP widths (at most 1024 and 2816,
    so that the probe stays well under a second on a CPU; at least PROBE_MIN, so that what is timed is the
    product and not the overhead: at a tiny model's widths three probes gave 2.06x, 1.03x and 0.02x on one CPU)
    by 1024 tokens."""
    d = getattr(config, "hidden_size", None)
    f = getattr(config, "intermediate_size", None) or (4 * d if d else None)
    if not (d and f):
        return PROBE_SHAPE
    return (1024, max(PROBE_MIN[0], min(d, 1024)), max(PROBE_MIN[1], min(f, 2816)))


@dataclass(frozen=True)
class Precision:
    dtype: str  # "fp32", "bf16" or "fp16": what the run computes in (autocast, or the 4-bit layers' compute dtype)
    weights: str  # the frozen base's weights as loaded: "fp32", "bf16", "fp16" or "checkpoint" (its own dtype)
    bnb: bool  # linear weights in 4-bit nf4 (double quantisation), quantised from the checkpoint's own values
    autocast: bool  # training runs under bf16 autocast
    tf32: bool
    why: str  # the rule that chose `dtype`, in words


TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def precision(dtype="auto", bnb=False, purpose="train", device=None, bf16_cpu=None, shape=PROBE_SHAPE):
    """What precision a run uses: the one place for these rules. `purpose` is 'train', 'generate' or 'rank';
    `device` None for this machine, 'gpu' to plan for one bf16-capable GPU (Ampere or newer); `bf16_cpu`
    overrides the CPU probe (tests); `shape` (tokens, hidden, MLP width) is what the probe multiplies.
    auto: bf16 on GPUs that support it; on a CPU, bf16 for training where the probe measures bf16 matrix
    products at least BF16_FASTER times as fast as fp32 (cpu_bf16_speedup), fp32 for evaluation (batched bf16
    generation does not reproduce one-at-a-time decoding). 4-bit layers compute in bf16 (the original's
    setting) wherever bf16 is faster or native, else in fp32.
    Weights, as the original: for training without --bnb the frozen base stays fp32 and bf16 comes from
    autocast (the original loaded Llama-2 in fp32 and trained with bf16=True); with --bnb the checkpoint is
    loaded in its own dtype (fp16 for Llama-2) and quantised from those values, the layers kept out of 4-bit
    (embeddings, norms, output layer) exact; evaluation loads the base in the dtype it computes in."""
    import torch

    if device == "gpu":
        cuda = bf16_gpu = tf32 = True
    else:
        cuda = torch.cuda.is_available()
        bf16_gpu = cuda and torch.cuda.is_bf16_supported()
        tf32 = cuda and torch.cuda.get_device_capability()[0] >= 8
    speedup = None
    if bf16_cpu is None and not cuda and dtype == "auto" and (bnb or purpose == "train"):
        speedup = cpu_bf16_speedup(shape)
        bf16_cpu = speedup >= BF16_FASTER
    bf16_cpu = bool(bf16_cpu) and not cuda
    if cuda:
        native = "a GPU with bf16" if bf16_gpu else "a GPU without bf16"
    elif speedup == 0.0:
        native = "a CPU without bf16 instructions (its flags name none of avx512_bf16, amx_bf16, bf16)"
    elif speedup is not None:
        native = f"a CPU where bf16 matrix products run {speedup}x as fast as fp32 (measured)"
    elif purpose != "train":
        native = "a CPU"
    else:
        native = "a CPU with fast bf16" if bf16_cpu else "a CPU without fast bf16"
    if bnb:
        chosen = dtype if dtype != "auto" else "bf16" if bf16_gpu or bf16_cpu else "fp32"
        why = f"4-bit nf4 computing in {chosen} ({f'--dtype {dtype}' if dtype != 'auto' else native})"
    elif dtype != "auto":
        chosen, why = dtype, f"{dtype} (--dtype {dtype})"
    else:
        chosen = "bf16" if bf16_gpu or (purpose == "train" and bf16_cpu) else "fp32"
        why = f"{chosen} (auto: {native}{', evaluation' if not cuda and purpose != 'train' else ''})"
    autocast = purpose == "train" and chosen == "bf16" and (cuda or not bnb)  # 4-bit on a CPU: bnb's own casts
    tf32 = tf32 and purpose == "train"  # the Trainer's tf32=True, as the original; evaluation leaves torch's default
    if tf32:
        why += "; fp32 matrix products in TF32"
    if bnb:
        weights = "checkpoint"
    elif purpose == "train":
        weights = "fp32"
    else:
        weights = chosen
    return Precision(chosen, weights, bool(bnb), autocast, tf32, why)


def torch_dtype(name):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def bnb_config(prec):
    """The 4-bit settings adapters are trained with, and reloaded with for evaluation: nf4, double quantisation,
    computing in the run's dtype, the packed 4-bit weights stored in that dtype too (bnb_4bit_quant_storage: the
    same bytes and results, and FSDP2 can shard them; accelerate leaves uint8 storage unsharded)."""
    from transformers import BitsAndBytesConfig

    dtype = torch_dtype(prec.dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)


@dataclass(frozen=True)
class Placement:
    device_map: object  # from_pretrained's device_map: None (CPU), "auto" or {"": gpu index}
    n_gpu: int  # GPUs the Trainer itself drives in this process: 0 (CPU) or 1, never DataParallel's several
    data_parallel: bool  # one full model per process, gradients averaged (accelerate launch)
    what: str  # in words


def placement(n_gpus, distributed, local_rank=0, fsdp=False, processes=None):
    """Where one process puts the model, as the original did: with GPUs and a single process, device_map="auto"
    (split over every visible GPU, or all on the one), never torch's DataParallel; under `accelerate launch`
    (several processes) each process its own full copy on its own GPU; under FSDP no device_map at all (the
    model is loaded, then fully_shard puts 1/N of each layer on each process's device)."""
    if fsdp:
        return Placement(None, 1 if n_gpus else 0, True, f"FSDP2: the model sharded over "
                         f"{processes or environment.world_size()} processes" + ("" if n_gpus else " (CPUs)"))
    if n_gpus == 0:
        return Placement(None, 0, distributed, "CPU" + (" (one process of several)" if distributed else ""))
    if distributed:
        return Placement({"": local_rank}, 1, True, f"GPU {local_rank}: one full copy per process (data parallel)")
    return Placement("auto", 1, False, "device_map=auto: the model split over all visible GPUs" if n_gpus > 1
                     else "device_map=auto: GPU 0")


def this_placement(machine=None):
    """placement() for a Machine (this process's when None): the visible GPUs, and whether a launcher
    (accelerate launch, torchrun) started several processes."""
    m = machine or environment.this_machine()
    return placement(m.gpus, m.processes > 1, m.local_rank, m.fsdp, m.processes)
