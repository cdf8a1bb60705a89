"""Train one LoRA adapter on several tasks at once (Qiu et al., arXiv 2402.12233).

The story of one run: the flags, checked before any model loads -> its plan (each task's training rows, the
base model, the modules to adapt in role words or names as the architecture has them, the precision, the
placement, the identity that names its folder) -> tokenise every text whole and pack the stream into blocks ->
(--dry_run: print the plan and the memory estimate, and stop) -> the folder: a finished run with the same
identity is left as it is, an interrupted one resumes from its newest whole checkpoint -> lock the folder, load
the base (4-bit with --bnb), add LoRA -> Trainer -> save the adapter, the tokenizer and the run's record.

    python llama2_classification_multi_tasks.py --bnb --target_modules q_proj v_proj up_proj --tasks boolq COPA CB
"""

import math
import os
import shlex
import sys
import time

from keys_values import config, fsdp, lora, models, packing
from keys_values.experiment import layout, lock
from keys_values.training import dry_run, folder, save
from keys_values.training.plan import plan_run, warn_missing_evaluation_data
from utils import INTERRUPTED, RESUMABLE, UserError, run_main, write_json


def main(argv=None):
    models.quiet_library_noise()
    t0 = time.time()
    cfg = config.training_config(argv)
    plan = plan_run(cfg, cfg.dry_run)
    warn_missing_evaluation_data(plan.tasks, cfg.data_root)
    from transformers import set_seed

    set_seed(cfg.seed)
    tokenizer = models.load_tokenizer(plan.checkpoint, cfg.trust_remote_code)
    blocks = plan.blocks(tokenizer)
    steps = plan.optimizer_steps(len(blocks))
    logging_steps = packing.logging_interval(cfg, steps)
    print(f"{len(blocks)} blocks of {cfg.max_seq_length} tokens, loss on {cfg.loss_on}, {steps} optimizer steps, "
          f"the loss logged every {logging_steps}")
    if cfg.dry_run:
        dry_run.print_plan(dry_run.memory_plan(plan, blocks), cfg.plan_json)
        return
    try:
        resume_from = folder.check_folder(plan.folder, cfg, plan.identity)
    except folder.Finished as done:
        print(done)
        return

    # the heavy libraries load only now: a mistake in the flags, the data or the folder has been told already
    import torch
    from accelerate import PartialState

    from keys_values.callbacks import RunControl

    out = plan.folder
    state = PartialState(cpu=not torch.cuda.is_available())  # on CPUs plain PartialState() makes every process main
    control = RunControl()
    try:
        # from the model's loading to the end of the final save, a stop (SIGUSR1, SIGTERM) waits for the end of a
        # step, or of the save; Ctrl-C before the first step stops at once, a second Ctrl-C at any time
        with lock.lock(out, "training") if state.is_main_process else lock.nothing(), control.handling_signals():
            model = lora.add_lora(models.load_base(plan.checkpoint, plan.precision, plan.placement,
                                                   cfg.trust_remote_code), cfg, plan.precision, plan.targets)
            trainable, total = model.get_nb_trainable_parameters()
            print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%); "
                  f"{plan.precision.why}; gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}; "
                  f"{plan.placement.what}")
            if state.is_main_process:
                if cfg.overwrite:
                    folder.empty(out)
                write_json(layout.identity_path(out), plan.started())
            state.wait_for_everyone()
            trainer, mean = train(model, tokenizer, blocks, cfg, out, resume_from, plan, logging_steps, control,
                                  steps, trainable)
            adapter = fsdp.full_adapter_state_dict(trainer.model) if trainer.is_fsdp_enabled else None  # all ranks
            if state.is_main_process:
                record = plan.record(n_blocks=len(blocks), trainable=trainable, total=total,
                                     logging_steps=logging_steps, seconds=round(time.time() - t0, 1),
                                     target_modules=sorted(model.peft_config["default"].target_modules))
                with folder.disk_full_in_one_line(out, trainable):  # the final save: its files are written whole
                    save.save_experiment(trainer, tokenizer, cfg, out, record, loss=mean, adapter=adapter)
                loss = "no loss logged" if mean is None else f"train loss {mean:.4f}"
                print(f"{loss} (mean over {trainer.state.global_step} steps); experiment saved in {out}")
                if control.stop_requested:
                    print(f"{control.stop_requested} asked for a stop once the run's last step was done: the run was "
                          "saved as finished")
                plan.say_downloads()
            state.wait_for_everyone()
    except KeyboardInterrupt:
        print(f"\ninterrupted: {folder.kept(out)} in {out}; continue with: {continue_command()}", file=sys.stderr)
        sys.exit(INTERRUPTED)


def train(model, tokenizer, blocks, cfg, out, resume_from, plan, logging_steps, control, steps, trainable):
    """(the Trainer after its last step, the mean training loss), or the exit of a run stopped before its last
    step: a stop (SIGUSR1, SIGTERM) saved a checkpoint and exits RESUMABLE; Ctrl-C saved the checkpoint of the
    step it landed in and exits INTERRUPTED. A stop that comes once the last step is done is left to the final
    save, on every rank alike (the ranks agreed on every stop up to the last step)."""
    from keys_values.callbacks import train_loss_of
    from keys_values.loss import NonFinite
    from keys_values.training.trainer import fit

    try:
        with folder.disk_full_in_one_line(out, trainable):
            trainer, _ = fit(model, tokenizer, blocks, cfg, out, resume_from, plan.precision, plan.placement,
                             logging_steps, control, planned_steps=steps)
        mean = train_loss_of(trainer.state.log_history, trainer.state.global_step)
        if mean is not None and not math.isfinite(mean):  # before anything is written: the run is not finished
            raise NonFinite(f"the mean training loss is {mean}")
    except NonFinite as e:
        raise UserError(f"{e} {folder.step_of(out)}, in {plan.precision.why}: the numbers left the range of the "
                        f"precision or the updates diverged; train with --dtype fp32 or a lower --learning_rate; "
                        f"{folder.kept(out)}") from None
    last_done = trainer.state.global_step >= trainer.state.max_steps  # the Trainer ended at its last step
    if not last_done and control.interrupted:  # Ctrl-C: its step's checkpoint was saved
        print(f"\ninterrupted at step {trainer.state.global_step}: {folder.kept(out)} in {out}; continue with: "
              f"{continue_command()}", file=sys.stderr)
        sys.exit(INTERRUPTED)
    if not last_done and control.stop_requested:
        print(f"stopped on {control.stop_requested} at step {trainer.state.global_step}: {folder.kept(out)} in {out}; "
              f"continue with: {continue_command()}", file=sys.stderr)
        sys.exit(RESUMABLE)
    return trainer, mean


def continue_command():
    """The command that continues this run: the same arguments with --resume."""
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
    return shlex.join([sys.executable, sys.argv[0], *argv, "--resume"])  # this interpreter (a venv's, say)


if __name__ == "__main__":
    run_main(main)
