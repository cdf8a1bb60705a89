"""Knowledge editing of one layer's feed-forward keys against its values (Qiu et al., arXiv 2402.12233).

The story of one editing command: the flags, checked before anything loads -> its plan (the edit requests and each
seed's sample of them, the layers, the arms in role words or module names as the architecture has them, and a run
per seed, layer and arm with its folder, its state and the weights it changes) -> (--dry_run: print the plan and
each run's memory, and stop) -> every run not finished: serially in this process (the model loaded once), or
through a launcher (local, slurm), each run resumed edit by edit where it stopped -> the comparison of the arms on
the same edits, with paired tests: summary.md and summary.png.

    python edit_knowledge.py                       # the embedded model, the bundled edits: keys_up, keys_gate, values
    python edit_knowledge.py --pretrained_ckpt gpt2-xl --data counterfact.json --layers 17 --target_modules keys values
"""

import os
import shutil
import sys

from keys_values import launch, models
from keys_values.editing import config, report
from keys_values.editing.plan import EditPlan
from keys_values.experiment import layout, lock
from utils import UserError, run_main

SCRIPT = os.path.abspath(__file__)


def main(argv=None):
    models.quiet_library_noise()
    cfg = config.editing_config(argv)
    plan = EditPlan(cfg)
    plan.print()
    if cfg.dry_run:
        return
    if not cfg.report_only:
        for r in plan.runs:
            if r.state == "other settings" or (cfg.overwrite and r.state != "new"):
                if not cfg.overwrite:
                    raise UserError(f"{r.folder} holds a run made with other settings: --overwrite replaces it")
                shutil.rmtree(r.folder)
                r.state = "new"
        todo = [r for r in plan.runs if r.state != "finished"]
        print(f"{len(todo)} run{'s' if len(todo) != 1 else ''} to do ({len(plan.runs) - len(todo)} finished already), "
              f"launcher {cfg.launcher}")
        if todo and cfg.launcher == "serial":
            edit_here(plan, todo)
        elif todo:
            outcomes = launch.run_all(
                [launch.Run(r.name, [[sys.executable, SCRIPT, *config.single_run_argv(cfg, r.words, r.layer, r.seed)]],
                            os.path.join(plan.folder, layout.EDIT_LOGS, os.path.basename(r.folder) + ".log"))
                 for r in todo],
                cfg.launcher, parallel=cfg.parallel, gpus_per_run=cfg.gpus_per_run, folder=os.path.join(
                    plan.folder, layout.EDIT_LOGS), slurm=launch.SlurmOptions(
                    partition=cfg.partition, time=cfg.time, gpus_per_task=cfg.gpus_per_run,
                    cpus_per_task=cfg.cpus_per_task, mem=cfg.mem, account=cfg.account, additional=plan.sbatch))
            failed = launch.failures_message(outcomes)
            if failed:
                print(f"error: {failed}", file=sys.stderr)
    try:
        print(f"report: {report.write(plan.folder)} and summary.png")
    except UserError as e:
        print(f"no report yet: {e}")


def edit_here(plan, todo):
    """Every run in this process, one after another, the model loaded once."""
    import torch

    from keys_values.editing.run import run_edits
    from keys_values.precision import placement

    cfg = plan.cfg
    model = models.load_base(plan.checkpoint, precision_of(cfg), placement(torch.cuda.device_count(), False),
                             cfg.trust_remote_code).eval()
    tok = models.load_tokenizer(plan.checkpoint, cfg.trust_remote_code)
    pre = {}  # the unedited model's scores of each edit, measured once for every arm of a layer
    for r in todo:
        with lock.lock(r.folder, "editing"):
            run_edits(model, tok, r, cfg, pre=pre)
        print(f"{r.name}: done in {r.folder}")


def precision_of(cfg):
    from keys_values.precision import Precision

    return Precision(cfg.dtype, cfg.dtype, False, False, False, f"{cfg.dtype} (--dtype {cfg.dtype})")


if __name__ == "__main__":
    run_main(main)
