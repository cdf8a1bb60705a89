"""The keys-vs-values study in one command: evaluate the base model, train and evaluate LoRA on q_proj v_proj
alone and with up_proj / gate_proj (keys) or down_proj (values) added, then write the comparison report.

Runs whose metrics already exist are skipped, a finished training is not redone, and an interrupted one
is resumed, so re-running after it finished retrains nothing and rewrites the same report. With no
arguments: a small study on the embedded model and sample_data that fits a laptop CPU (about 15 minutes
on 2 cores). For the paper's setting, e.g.:

    python study.py --pretrained_ckpt NousResearch/Llama-2-7b-hf --bnb --data_root data \\
        --tasks 20_Newsgroups_Fixed boolq COPA CB race_high QNLI --epochs 5 --loss_on all --learning_rate 2e-4 \\
        --per_device_train_batch_size 32 --gradient_accumulation_steps 2 --max_seq_length 512
"""

import argparse
import os
import subprocess
import sys

import get_eval_tasks
import llama2_classification_multi_tasks as train
import prompts
import utils

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = [["q_proj", "v_proj"], ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "gate_proj"],
            ["q_proj", "v_proj", "down_proj"]]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pretrained_ckpt", default=utils.EMBEDDED_MODEL)
    p.add_argument("--data_root", default="sample_data")
    p.add_argument("--tasks", nargs="+", default=["boolq", "COPA", "CB"])
    p.add_argument("--output_root", default="experiments")
    p.add_argument("--settings", nargs="+", default=[" ".join(s) for s in SETTINGS],
                   help="target-module settings, each one quoted string")
    p.add_argument("--bnb", action="store_true")
    # the small study's budget: the loss on the answer, a higher learning rate and short blocks give a real
    # learning signal in minutes on a CPU; pass the original's values for the paper's setting
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--loss_on", choices=["all", "completion"], default="completion")
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--max_seq_length", type=int, default=256)
    p.add_argument("--per_device_train_batch_size", type=int, default=4)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--max_samples", type=int, default=5000)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--scoring", choices=["generate", "rank"], default="generate")
    p.add_argument("--max_test_samples", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=64, help="evaluation batch size")
    return p.parse_args(argv)


def run(script, args):
    cmd = [sys.executable, os.path.join(HERE, script), *args]
    print("\n$ " + " ".join(cmd[1:]), flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        raise utils.UserError(f"{script} exited with code {code}; the study stops here (re-run to continue)")


def metrics_done(exp, tasks):
    return all(os.path.isfile(utils.metrics_path(exp, t)) for t in tasks)


def main(argv=None):
    a = parse_args(argv)
    prompts.check_tasks(a.tasks)
    common_eval = ["--scoring", a.scoring, "--max_test_samples", str(a.max_test_samples), "--batch_size",
                   str(a.batch_size)]
    base = utils.base_dir(a.output_root, a.tasks, a.pretrained_ckpt)
    if not metrics_done(base, a.tasks):
        run("llama2_classification_multi_tasks_inference.py",
            ["--pretrained_ckpt", a.pretrained_ckpt, "--tasks", *a.tasks, "--data_root", a.data_root,
             "--output_root", a.output_root, *(["--bnb"] if a.bnb else []), *common_eval])
    for setting in a.settings:
        train_argv = ["--pretrained_ckpt", a.pretrained_ckpt, "--data_root", a.data_root, "--tasks", *a.tasks,
                      "--target_modules", *setting.split(), "--output_root", a.output_root, "--epochs", str(a.epochs),
                      "--loss_on", a.loss_on, "--learning_rate", str(a.learning_rate), "--max_seq_length",
                      str(a.max_seq_length), "--per_device_train_batch_size", str(a.per_device_train_batch_size),
                      "--gradient_accumulation_steps", str(a.gradient_accumulation_steps), "--max_samples",
                      str(a.max_samples), "--max_steps", str(a.max_steps), "--seed", str(a.seed),
                      *(["--bnb"] if a.bnb else [])]
        exp = train.experiment_folder(train.parse_args(train_argv))
        if metrics_done(exp, a.tasks):
            print(f"\n{setting}: done ({exp})")
            continue
        if not os.path.isfile(os.path.join(exp, "experiment.json")):
            run("llama2_classification_multi_tasks.py", train_argv + (["--resume"] if os.path.isdir(exp) else []))
        run("llama2_classification_multi_tasks_inference.py", ["--experiment_dir", exp, *common_eval])
    get_eval_tasks.main(["--root", a.output_root])
    print(f"\nreport: {os.path.join(a.output_root, ','.join(a.tasks), 'summary.md')} and summary.png")


if __name__ == "__main__":
    utils.run_main(main)
