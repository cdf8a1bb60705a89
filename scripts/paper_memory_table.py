"""The README's memory table: the paper's four training commands on Llama-2-7B, planned for one GPU with
`--dry_run gpu` (no weights needed: Llama-2-7B's config is written by hand, with the embedded tokenizer),
with and without gradient checkpointing, and which common cards the estimated peak fits.

    python scripts/paper_memory_table.py [--data_root sample_data]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import memory  # noqa: E402
import utils  # noqa: E402

SETTINGS = [["q_proj", "v_proj"], ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "gate_proj"],
            ["q_proj", "v_proj", "down_proj"]]
TASKS = ["20_Newsgroups_Fixed", "boolq", "COPA", "CB", "race_high", "QNLI"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_root", default=os.path.join(ROOT, "sample_data"))
    a = p.parse_args()
    lines = ["| `--target_modules` | checkpointing | weights | activations | total per GPU | fits 24 / 40 / 48 / 80 GB |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(memory.LLAMA2_7B, f)
        model = os.path.join(ROOT, utils.EMBEDDED_MODEL)
        for name in os.listdir(model):
            if name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(os.path.join(model, name), folder)
        for modules in SETTINGS:
            for gc in ("--gradient_checkpointing", "--no-gradient_checkpointing"):
                cmd = [sys.executable, os.path.join(ROOT, "llama2_classification_multi_tasks.py"), "--lora_r", "8",
                       "--epochs", "5", "--dropout", "0.1", "--bnb", "--target_modules", *modules, "--tasks", *TASKS,
                       "--pretrained_ckpt", folder, "--data_root", a.data_root, "--dry_run", "gpu", gc]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ,
                                                                                            "HF_HUB_OFFLINE": "1"})
                plan = json.loads(out.stdout.strip().splitlines()[-1])
                m = {k: v / memory.GIB for k, v in plan["memory_estimate_bytes"].items()}
                fits = " / ".join("yes" if ok else "no" for ok in plan["fits_gib"].values())
                lines.append(f"| {' '.join(modules)} | {'on (default with --bnb)' if 'no-' not in gc else 'off'} | "
                             f"{m['weights']:.1f} GiB | {m['activations']:.1f} GiB | **{m['total']:.1f} GiB** | {fits} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
