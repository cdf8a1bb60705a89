"""The README's memory tables: the paper's four training commands on Llama-2-7B, planned for one GPU with
`--dry_run gpu` (no weights needed: Llama-2-7B's config is written by hand, with the embedded tokenizer),
with and without gradient checkpointing, and which common cards the estimated peak fits; then Llama-2-70B in
4-bit on one GPU and sharded with FSDP over 2, 4 and 8 (`--dry_run fsdp:N`).

    python scripts/paper_memory_table.py [--data_root sample_data]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from keys_values import config, memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = [["q_proj", "v_proj"], ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "gate_proj"],
            ["q_proj", "v_proj", "down_proj"]]
TASKS = ["20_Newsgroups_Fixed", "boolq", "COPA", "CB", "race_high", "QNLI"]


def config_folder(parent, name, model_config):
    """A model folder with only a config.json (written by hand) and the embedded model's tokenizer."""
    folder = os.path.join(parent, name)
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(model_config, f)
    model = os.path.join(ROOT, config.EMBEDDED_MODEL)
    for n in os.listdir(model):
        if n.startswith(("tokenizer", "special_tokens")):
            shutil.copy(os.path.join(model, n), folder)
    return folder


def dry_run(folder, data_root, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "llama2_classification_multi_tasks.py"), "--lora_r", "8", "--epochs", "5",
           "--dropout", "0.1", "--bnb", "--tasks", *TASKS, "--pretrained_ckpt", folder, "--data_root", data_root, *extra,
           "--plan_json"]  # the plan's last line: the whole plan as JSON
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_70b(parent, data_root):
    folder = config_folder(parent, "Llama-2-70b-hf", memory.LLAMA2_70B)
    lines = ["", "| Llama-2-70B, `--bnb`, q_proj v_proj up_proj | per-device batch x accumulation | weights | adapter + "
             "optimizer | activations | total per GPU | fits 24 / 40 / 48 / 80 GB |", "|---|---|---|---|---|---|---|"]
    for where, batch, accumulation in (("gpu", 32, 2), ("gpu", 1, 64), ("fsdp:2", 32, 1), ("fsdp:2", 8, 4),
                                       ("fsdp:2", 1, 32), ("fsdp:4", 2, 8), ("fsdp:8", 4, 2)):
        plan = dry_run(folder, data_root, "--target_modules", "q_proj", "v_proj", "up_proj", "--dry_run", where,
                       "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation))
        m = {k: v / memory.GIB for k, v in plan["memory_estimate_bytes"].items()}
        fits = " / ".join("yes" if ok else "no" for ok in plan["fits_gib"].values())
        lines.append(f"| `--dry_run {where}` | {batch} x {accumulation} (effective {plan['effective_batch']}) | "
                     f"{m['weights']:.1f} GiB | {m['adapter_and_optimizer']:.2f} GiB | {m['activations']:.1f} GiB | "
                     f"**{m['total']:.1f} GiB** | {fits} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_root", default=os.path.join(ROOT, "sample_data"))
    a = p.parse_args()
    lines = ["| `--target_modules` | checkpointing | weights | activations | total per GPU | fits 24 / 40 / 48 / 80 GB |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as parent:
        folder = config_folder(parent, "Llama-2-7b-hf", memory.LLAMA2_7B)
        for modules in SETTINGS:
            for gc in ("--gradient_checkpointing", "--no-gradient_checkpointing"):
                plan = dry_run(folder, a.data_root, "--target_modules", *modules, "--dry_run", "gpu", gc)
                m = {k: v / memory.GIB for k, v in plan["memory_estimate_bytes"].items()}
                fits = " / ".join("yes" if ok else "no" for ok in plan["fits_gib"].values())
                lines.append(f"| {' '.join(modules)} | {'on (default with --bnb)' if 'no-' not in gc else 'off'} | "
                             f"{m['weights']:.1f} GiB | {m['activations']:.1f} GiB | **{m['total']:.1f} GiB** | {fits} |")
        lines += table_70b(parent, a.data_root)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
