"""The keys-vs-values study in one command: evaluate the base model, train and evaluate LoRA on q_proj v_proj
alone and with up_proj / gate_proj (keys) or down_proj (values) added, once per seed, then write the report.

Its own flags are what a study adds (the settings, the seeds, the evaluation options); every other flag goes
to the training script as it is (a flag it does not know is an error). Runs whose metrics exist for the same
evaluation settings are skipped, a finished training is not redone and an interrupted one is resumed, so
re-running after it finished retrains nothing and rewrites the same report. With no arguments: a small study
on the embedded model and sample_data that fits a laptop CPU; its training recipe (SMALL_STUDY below) comes
before the flags given, so any of them can be overridden. For the paper's setting, e.g.:

    python study.py --seeds 42 43 44 --pretrained_ckpt NousResearch/Llama-2-7b-hf --bnb --data_root data \\
        --tasks 20_Newsgroups_Fixed boolq COPA CB race_high QNLI --epochs 5 --loss_on all --learning_rate 2e-4 \\
        --per_device_train_batch_size 32 --gradient_accumulation_steps 2 --max_seq_length 512 --logging_steps 100
"""

import argparse
import os
import subprocess
import sys

import get_eval_tasks
import llama2_classification_multi_tasks as train
import llama2_classification_multi_tasks_inference as inference
import utils
from common import ArgumentParser, UserError, run_main

HERE = os.path.dirname(os.path.abspath(__file__))
# the small study's training recipe: the loss on the answer, a higher learning rate and short blocks give a
# real learning signal in minutes on a CPU; pass the original's values (--loss_on all --learning_rate 2e-4 ...)
# for the paper's setting
SMALL_STUDY = ["--pretrained_ckpt", utils.EMBEDDED_MODEL, "--data_root", "sample_data", "--tasks", "boolq", "COPA",
               "CB", "--epochs", "3", "--loss_on", "completion", "--learning_rate", "2e-3", "--max_seq_length", "256",
               "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--logging_steps", "5"]


def parse_args(argv=None):
    """(the study's own flags, the training script's arguments with the small study's recipe first)."""
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       allow_abbrev=False, epilog="Any other flag is the training script's: see "
                       "`python llama2_classification_multi_tasks.py --help`.")
    p.add_argument("--settings", nargs="+", default=[" ".join(s) for s in get_eval_tasks.SETTINGS],
                   help="target-module settings, each one quoted string")
    p.add_argument("--seeds", nargs="+", type=int, default=[utils.DEFAULT_SEED],
                   help="train and evaluate every setting once per seed (the base model once)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--scoring", choices=["generate", "rank"], default="generate")
    e.add_argument("--max_test_samples", type=int, default=1000)
    e.add_argument("--batch_size", type=int, default=64, help="evaluation batch size")
    own, rest = p.parse_known_args(argv)
    if any(a == "--seed" or a.startswith("--seed=") for a in rest):
        raise UserError("study.py takes --seeds (one or more), not --seed")
    given = {a.split("=")[0] for a in rest if a.startswith("--")}
    recipe = [arg for flag, values in flags(SMALL_STUDY) if flag not in given for arg in (flag, *values)]
    train.parse_args(recipe + rest)  # a flag the training script does not know fails here, before any run
    return own, recipe + rest


def flags(argv):
    """[(flag, [its values])] of an argument list made of --flag value... groups."""
    groups = []
    for arg in argv:
        if arg.startswith("--"):
            groups.append((arg, []))
        else:
            groups[-1][1].append(arg)
    return groups


def run(script, args):
    cmd = [sys.executable, os.path.join(HERE, script), *args]
    print("\n$ " + " ".join(cmd[1:]), flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        raise UserError(f"{script} exited with code {code}; the study stops here (re-run to continue)")


def evaluate(eval_args):
    """Run the evaluation script unless every task's metrics exist for these settings (asked in-process)."""
    if inference.pending_tasks(eval_args):
        run("llama2_classification_multi_tasks_inference.py", eval_args)


def main(argv=None):
    own, train_argv = parse_args(argv)
    t = train.parse_args(train_argv)
    train.check_args(t)
    common_eval = ["--scoring", own.scoring, "--max_test_samples", str(own.max_test_samples),
                   "--batch_size", str(own.batch_size)]
    evaluate(["--pretrained_ckpt", t.pretrained_ckpt, "--tasks", *t.tasks, "--data_root", t.data_root,
              "--output_root", t.output_root, *(["--bnb"] if t.bnb else []), *common_eval])
    for seed in own.seeds:
        for setting in own.settings:
            argv = train_argv + ["--target_modules", *setting.split(), "--seed", str(seed)]
            exp = train.experiment_folder(train.parse_args(argv))
            if not os.path.isfile(os.path.join(exp, "experiment.json")):
                run("llama2_classification_multi_tasks.py", argv + (["--resume"] if os.path.isdir(exp) else []))
            else:
                print(f"\n{setting}, seed {seed}: trained ({exp})")
            evaluate(["--experiment_dir", exp, *common_eval])
    get_eval_tasks.main(["--root", t.output_root])
    print(f"\nreport: {os.path.join(t.output_root, ','.join(t.tasks), 'summary.md')} and summary.png")


if __name__ == "__main__":
    run_main(main)
