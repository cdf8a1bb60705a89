"""FSDP2 through accelerate on 2 CPU processes (gloo), for LoRA and 4-bit QLoRA: the same losses and the same
adapter as one process with the same global batch; and a one-line failure when FSDP is asked for and is not
what runs (on a CPU, accelerate would otherwise run DDP without a word)."""

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SAMPLE, TRAIN, free_port, only_dir, run, small_llama

pytestmark = pytest.mark.slow
CONFIG = os.path.join(ROOT, "accelerate_configs", "fsdp2_cpu.yaml")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_llama(tmp_path_factory.mktemp("fsdp"), layers=2)


def argv(model, out, batch, *extra):
    """2 optimizer steps of a global batch of 8 blocks: 4 x 2 in one process, 2 x 2 on each of 2 processes."""
    return ["--pretrained_ckpt", model, "--data_root", SAMPLE, "--tasks", "CB", "--target_modules", "q_proj", "v_proj",
            "up_proj", "--dropout", "0", "--max_steps", "2", "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", "2", "--max_seq_length", "64", "--learning_rate", "1e-3",
            "--logging_steps", "1", "--save_steps", "2", "--dtype", "fp32", "--output_root", out, *extra]


def losses(exp):
    [state] = glob.glob(os.path.join(exp, "checkpoint-2", "trainer_state.json"))
    return [e["loss"] for e in json.load(open(state))["log_history"] if "loss" in e]


@pytest.mark.parametrize("quantised", [[], ["--bnb"]], ids=["lora", "qlora"])
def test_fsdp2_on_two_processes_trains_as_one(model, tmp_path, quantised):
    from safetensors.torch import load_file

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(TRAIN, *argv(model, one, 4, *quantised))
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIG,
                        "--main_process_port", str(free_port()), TRAIN, *argv(model, two, 2, *quantised)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = only_dir(one), only_dir(two)
    record = json.load(open(os.path.join(b, "experiment.json")))
    assert record["placement"].startswith("FSDP2: the model sharded over 2 processes") and record["processes"] == 2
    assert record["identity"]["processes"] == 2 and record["precision"]["bnb"] == bool(quantised)
    assert os.path.isdir(os.path.join(b, "checkpoint-2", "pytorch_model_fsdp_0"))  # sharded checkpoints
    if quantised:  # the packed 4-bit weights, gathered back from their shards, checked byte for byte
        assert "FSDP2: the 14 packed 4-bit weights gathered from their shards are byte for byte as loaded" in p.stdout
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 2 and all(abs(x - y) < 1e-4 for x, y in zip(la, lb)), (la, lb)
    adapter_a = load_file(os.path.join(a, "assets", "adapter_model.safetensors"))
    adapter_b = load_file(os.path.join(b, "assets", "adapter_model.safetensors"))
    assert adapter_a.keys() == adapter_b.keys() and len(adapter_a) == 2 * 3 * 2  # A and B, 3 modules, 2 layers
    for k, v in adapter_b.items():
        assert v.numel() > 0 and (v - adapter_a[k]).abs().max() < 1e-5, k


def test_fsdp_asked_for_and_not_running_is_one_line(model, tmp_path):
    """ACCELERATE_USE_FSDP set, but no launch: one process, no FSDP. The run stops before its first step."""
    out = str(tmp_path / "out")
    p = subprocess.run([sys.executable, TRAIN, *argv(model, out, 4)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_FSDP": "true"}, timeout=600)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "FSDP2 was asked for" in errors[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not glob.glob(os.path.join(out, "*", "*", "checkpoint-*"))


def test_packed_4bit_weights_whose_bytes_changed_are_named(model):
    """check_packed on one process (no shards: the weights as they are): unchanged weights pass and are counted;
    one rewritten byte (as a collective canonicalising a NaN pattern would) is one line naming the weight."""
    import torch

    from keys_values import fsdp, models, precision
    from utils import UserError

    m = models.load_base(model, precision.precision("fp32", True, "train"), precision.placement(0, False))
    digests = fsdp.packed_digests(m)
    assert len(digests) == 2 * 7  # q k v o gate up down in 2 layers
    assert fsdp.check_packed(m, digests, say=lambda line: None) == 14
    weight = m.get_submodule("model.layers.1.mlp.up_proj").weight
    raw = weight.data.view(-1).view(torch.uint8)
    raw[5] ^= 0x40
    with pytest.raises(UserError, match=r"FSDP2 changed the bytes of 1 packed 4-bit weight\(s\) "
                                        r"\(model.layers.1.mlp.up_proj first\)"):
        fsdp.check_packed(m, digests)
