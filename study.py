"""The keys-vs-values study in one command: evaluate the base model, train and evaluate LoRA on the attention's
query and value projections alone and with the feed-forward keys (up_proj, gate_proj) or values (down_proj)
added, once per seed, then write the report.

Its own flags are what a study adds (the settings, the seeds, the evaluation, where the runs go); every other
flag goes to the training script as it is (a flag it does not know is an error). A finished run is skipped, an
interrupted one resumed, a failed one does not stop the others; re-running after it finished retrains nothing
and rewrites the same report. The settings are role words, resolved for the model's architecture (on Llama:
q_proj v_proj, + up_proj, + gate_proj, + down_proj).

With no arguments, or with the embedded model, a small study that fits a laptop CPU: its recipe (SMALL_STUDY in
keys_values/study/recipe.py) fills every training flag not given. With any other model the training script's
own defaults apply, which are the original's; the paper's setting on Llama-2-7B, over three seeds, on 8 GPUs:

    python study.py --pretrained_ckpt NousResearch/Llama-2-7b-hf --bnb --data_root data --seeds 42 43 44 \\
        --tasks 20_Newsgroups_Fixed boolq COPA CB race_high QNLI --launcher local

`--dry_run` prints every run's plan (folder, state, steps, tokens, memory per device) and writes nothing.
"""

import os
import sys
import time

import get_eval_tasks
from keys_values import config, launch, models
from keys_values.experiment import layout
from keys_values.study import recipe
from keys_values.study.dry_run import print_dry_run
from keys_values.study.plan import StudyPlan
from utils import INTERRUPTED, UserError, run_main

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = {"train": os.path.join(HERE, "llama2_classification_multi_tasks.py"),
           "evaluate": os.path.join(HERE, "llama2_classification_multi_tasks_inference.py")}


def build_parser():
    return config.study_parser(__doc__.split("\n\n")[0], __doc__.split("\n\n", 1)[1] + "\nAny other flag is the "
                               "training script's: see `python llama2_classification_multi_tasks.py --help`.")


def main(argv=None):
    t0 = time.time()
    models.quiet_library_noise()
    own, train_argv, why = recipe.parse(build_parser(), argv)
    sbatch = own.check()
    plan = StudyPlan(own, train_argv, SCRIPTS)
    print(f"training flags ({why}): {plan.resolved_flags()}")
    print(f"settings: {'; '.join(' '.join(s) for s in plan.settings)}; seeds {' '.join(map(str, own.seeds))}")
    if own.dry_run:
        print_dry_run(plan)
        return
    if own.report_only:
        report(plan)
        return
    runs = plan.launch_runs()
    print(f"{len(runs)} run{'s' if len(runs) != 1 else ''} to do ({len(plan.runs) + 1 - len(runs)} done already), "
          f"launcher {own.launcher}")
    slurm = launch.SlurmOptions(partition=own.partition, time=own.time, gpus_per_task=own.gpus_per_run,
                                cpus_per_task=own.cpus_per_task, mem=own.mem, account=own.account,
                                array_parallelism=own.array_parallelism, additional=sbatch)
    try:
        outcomes = launch.run_all(runs, own.launcher, parallel=own.parallel, gpus_per_run=own.gpus_per_run,
                                  slurm=slurm, folder=plan.logs)
    except KeyboardInterrupt:  # each training that was running saved a checkpoint at its step; statuses written
        where = ("the Slurm array keeps running" if own.launcher == "slurm" else
                 f"the runs in progress kept a checkpoint (logs in {plan.logs})")
        print(f"\ninterrupted: {where}; the same command again continues the study", file=sys.stderr)
        sys.exit(INTERRUPTED)
    report(plan)
    print(f"study: {time.time() - t0:.0f} s")
    failed = launch.failures_message(outcomes)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        sys.exit(1)


def report(plan):
    """Write the report from whatever exists and list what is missing."""
    root = plan.t.output_root
    missing = plan.missing()
    if os.path.isdir(root):
        try:
            get_eval_tasks.main(["--root", root])
        except UserError as e:
            print(f"no report yet: {e}")
    if missing:
        print(f"missing from the report: {'; '.join(missing)}")
    print(f"\nreport: {os.path.join(root, layout.tasks_folder(plan.t.tasks), layout.SUMMARY_MD)} and summary.png")


if __name__ == "__main__":
    run_main(main)
