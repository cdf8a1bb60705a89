"""What the tests share: the project's paths, and small helpers to run the scripts and read what they wrote."""

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct")  # the embedded model (`make model`)
SAMPLE = os.path.join(ROOT, "sample_data")
TRAIN = os.path.join(ROOT, "llama2_classification_multi_tasks.py")
EVAL = os.path.join(ROOT, "llama2_classification_multi_tasks_inference.py")
STUDY = os.path.join(ROOT, "study.py")


def run(script, *args, check=True, timeout=1200):
    """Run one of the project's scripts offline; on failure, show the end of its output."""
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and p.returncode != 0:
        raise AssertionError(f"{os.path.basename(script)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def only_dir(root):
    [d] = glob.glob(os.path.join(root, "*", "*"))
    return d


def predictions(exp, task, folder="metrics"):
    with open(os.path.join(exp, folder, f"{task}_predictions.jsonl")) as f:
        return [json.loads(line) for line in f]


def metrics(exp, task, folder="metrics"):
    """A task's metrics: metrics/ for the default evaluation, metrics-<parts>/ for another."""
    with open(os.path.join(exp, folder, f"{task}_metrics_update.json")) as f:
        return json.load(f)


def linked_copy(exp, folder):
    """A second experiment folder sharing the trained adapter, with metrics of its own."""
    os.makedirs(folder)
    for name in ("assets", "experiment.json"):
        os.symlink(os.path.join(exp, name), os.path.join(folder, name))
    return str(folder)


def small_llama(tmp_path, layers=2, vocab=None, **widths):
    """A random Llama saved to a folder with the embedded model's tokenizer: real code paths, small and fast."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(MODEL)
    shape = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2, **widths}
    config = LlamaConfig(num_hidden_layers=layers, vocab_size=vocab or len(tok), max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **shape)
    torch.manual_seed(0)
    folder = str(tmp_path / "small-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def free_port():
    """A TCP port nobody listens on now: for `accelerate launch --main_process_port`, so that the tests pass while
    another distributed job runs on the same machine (whose rendezvous holds the default 29500)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
