"""What the tests share: the project's paths, and small helpers to run the scripts and read what they wrote.

`run` runs a script's main in this process (what most tests need: the exit code, stdout and stderr of one run,
without paying a new process's imports); `run_process` starts a real process, for what only a process shows
(signals, a kill, a fresh interpreter's imports, accelerate launch). `in_process_launcher` lets a study's runs
execute in this process too."""

import contextlib
import glob
import importlib
import io
import json
import os
import shlex
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct")  # the embedded model (`make model`)
SAMPLE = os.path.join(ROOT, "sample_data")
TRAIN = os.path.join(ROOT, "llama2_classification_multi_tasks.py")
EVAL = os.path.join(ROOT, "llama2_classification_multi_tasks_inference.py")
STUDY = os.path.join(ROOT, "study.py")
EDIT = os.path.join(ROOT, "edit_knowledge.py")


REPORT = os.path.join(ROOT, "get_eval_tasks.py")
STANDIN = os.path.join(ROOT, "tests", "slurm_standin")  # Slurm's commands, played on this machine
MODULES = {TRAIN: "llama2_classification_multi_tasks", EVAL: "llama2_classification_multi_tasks_inference",
           STUDY: "study", REPORT: "get_eval_tasks", EDIT: "edit_knowledge"}


def run(script, *args, check=True):
    """Run one of the project's scripts offline in this process, from the repository's root, as its command line
    would (a UserError is one line on stderr and exit code 2): a CompletedProcess with the exit code and what it
    printed. On failure (check), the end of its output. An error that is not the user's is raised as it is."""
    import utils

    module = importlib.import_module(MODULES[script])
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            utils.run_main(lambda: module.main(list(args)))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    p = subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
    if check and p.returncode != 0:
        raise AssertionError(f"{os.path.basename(script)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def run_process(script, *args, check=True, timeout=1200):
    """Run one of the project's scripts offline in a process of its own; on failure, show the end of its output."""
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and p.returncode != 0:
        raise AssertionError(f"{os.path.basename(script)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def in_process_launcher(monkeypatch):
    """Make a study's launcher run each command (`python <script> <args>`) in this process, its output appended
    to the run's log as the serial launcher appends it: the study's plan, commands, skipping and report as they
    are, without a process per command. Returns the list of commands run."""
    from keys_values import launch
    from keys_values.launch.runs import Outcome

    ran = []

    def run_all(runs, launcher="serial", **kwargs):
        outcomes = []
        for r in runs:
            started, rc = time.time(), 0
            os.makedirs(os.path.dirname(r.log), exist_ok=True)
            for cmd in r.commands:
                ran.append(cmd)
                p = run(cmd[1], *cmd[2:], check=False)
                with open(r.log, "a") as log:
                    log.write(f"\n$ {shlex.join(cmd)}\n{p.stdout}{p.stderr}")
                rc = p.returncode
                if rc:
                    break
            outcomes.append(Outcome(r, rc == 0, rc, r.log, started, time.time(), "" if rc == 0 else f"exit {rc}"))
        return outcomes

    monkeypatch.setattr(launch, "run_all", run_all)
    return ran


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


def small_llama(tmp_path, layers=2, vocab=None, positions=2048, name="small-llama", seed=0, **widths):
    """A random Llama saved to <tmp_path>/<name> with the embedded model's tokenizer: real code paths, small and
    fast (hidden size 64, feed-forward 160, 4 heads, `positions` positions), its weights drawn with `seed`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(MODEL)
    shape = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2, **widths}
    config = LlamaConfig(num_hidden_layers=layers, vocab_size=vocab or len(tok), max_position_embeddings=positions,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **shape)
    torch.manual_seed(seed)
    folder = str(tmp_path / name)
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


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Slurm played by the stand-ins in tests/slurm_standin/ (first on PATH); returns their state folder."""
    import submitit
    from submitit.slurm.slurm import SlurmInfoWatcher

    from keys_values import launch

    monkeypatch.setenv("PATH", os.pathsep.join([STANDIN, os.path.dirname(sys.executable), os.environ["PATH"]]))
    monkeypatch.setenv("SLURM_STANDIN_DIR", str(tmp_path / "slurm"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.chdir(tmp_path)  # the tasks run where sbatch ran: launch.py must be importable from anywhere
    monkeypatch.setattr(launch.slurm, "POLL_S", 0.2)
    # job ids restart at 1000 in each test: a fresh watcher of job states, as a new study process would have
    monkeypatch.setattr(submitit.SlurmJob, "watcher", SlurmInfoWatcher(delay_s=600))
    return tmp_path / "slurm"
