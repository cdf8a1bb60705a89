"""The Trainer of one run: its TrainingArguments (the original's fixed settings: constant learning rate,
max_grad_norm 0.3, paged AdamW with --bnb on a GPU) and fit(), which runs it over the packed blocks with the
output layer inside the loss (loss.py), TensorBoard logs and the run's callbacks."""

import contextlib
import os

from keys_values import fsdp
from keys_values.callbacks import RunControl
from keys_values.experiment import checkpoints, layout
from keys_values.loss import OutputLayerInTheLoss


def training_arguments(args, out, prec, place, logging_steps=None):
    from transformers import TrainingArguments

    targs = TrainingArguments(
        output_dir=out,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        max_grad_norm=0.3,
        # bitsandbytes' optimizers cannot step FSDP2's DTensors; LoRA's optimizer state is small anyway
        optim="paged_adamw_32bit" if args.bnb and place.n_gpu and not fsdp.requested() else "adamw_torch",
        bf16=prec.autocast,
        tf32=prec.tf32,
        logging_steps=logging_steps or args.logging_steps or 100,
        logging_nan_inf_filter=False,  # a non-finite loss is an error here, never filtered out of the log
        save_steps=args.save_steps,
        save_strategy="steps",
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=place.n_gpu == 0,
        ddp_find_unused_parameters=False,
    )
    if place.n_gpu and not place.data_parallel:
        targs.device  # the devices are set up on first use, and then this process drives its model alone:
        targs._n_gpu = place.n_gpu  # never nn.DataParallel over every visible GPU
    return targs


def fit(model, tokenizer, blocks, args, out, resume_from, prec, place, logging_steps=None, control=None, callbacks=(),
        chunked_loss=True, planned_steps=None):
    """Run the Trainer over the blocks (resuming from a checkpoint when given); returns (trainer, result).
    `control` is a RunControl (a fresh one when None); `callbacks` are added after it. `chunked_loss=False`
    computes the loss as the model does (its full logits; the benchmark's A/B). A checkpoint at `planned_steps`
    (the run stopped at its last step, or killed while it was being saved) is the finished run: its adapter and
    state are loaded and no step is trained (the Trainer would train one more)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from transformers import Trainer, default_data_collator
    from transformers.integrations import TensorBoardCallback

    if fsdp.requested() and not torch.cuda.is_available():
        fsdp.allow_on_cpu()  # 2 CPU processes on gloo (the tests): accelerate would otherwise run DDP, silently
    targs = training_arguments(args, out, prec, place, logging_steps)
    control = control or RunControl()
    callbacks = [control, *callbacks]
    if targs.process_index == 0:
        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=os.path.join(out, layout.LOGS))))
    loss = OutputLayerInTheLoss(model) if chunked_loss else None
    trainer = Trainer(model=model, args=targs, train_dataset=blocks, data_collator=default_data_collator,
                      processing_class=tokenizer, callbacks=callbacks, compute_loss_func=loss)
    if fsdp.requested():
        fsdp.check_active(trainer)  # asked for and not running: one line, before any step
        fsdp.no_casts(trainer)
        # and the prepared model really sharded, its packed 4-bit weights unchanged by the sharding
        trainer.add_callback(fsdp.checked_at_start(trainer, fsdp.packed_digests(model)))
    try:
        if resume_from is not None and planned_steps is not None and checkpoints.step_of(resume_from) >= planned_steps:
            from transformers import TrainerState

            trainer._load_from_checkpoint(resume_from)
            trainer.state = TrainerState.load_from_json(os.path.join(resume_from, checkpoints.TRAINER_STATE))
            print(f"--resume: {resume_from} holds the run's last step ({planned_steps}): it is the finished run")
            return trainer, None
        with loss or contextlib.nullcontext(), control.handling_signals():
            result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        close_progress_bars()  # a message after an error or an interrupt starts on a line of its own
    return trainer, result


def close_progress_bars():
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
