"""Train one LoRA adapter on several tasks at once (Qiu et al., arXiv 2402.12233).

The story of one run: parse and check the flags (fail before any model loads) -> load each task's
training rows -> resolve the base model and check --target_modules against it -> load it (4-bit with
--bnb) and add LoRA -> tokenise and pack every text into blocks -> Trainer -> save the adapter, the
tokenizer and the run's record into the experiment folder.

    python llama2_classification_multi_tasks.py --bnb --target_modules q_proj v_proj up_proj --tasks boolq COPA CB
"""

import argparse
import os
import pickle
import shutil
import time

import prompts
import utils
from prompts import UserError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    o = p.add_argument_group("the original's flags")
    o.add_argument("--pretrained_ckpt", default="NousResearch/Llama-2-7b-hf",
                   help="base model: hub id, local folder, or .gguf file (the embedded default: "
                        f"{utils.EMBEDDED_MODEL}, made by `make model`)")
    o.add_argument("--lora_r", type=int, default=8, help="LoRA rank")
    o.add_argument("--epochs", type=int, default=5)
    o.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout")
    o.add_argument("--bnb", action="store_true", help="load the base in 4-bit (nf4, double quantisation, bf16 compute)")
    o.add_argument("--train_sample_fraction", type=float, default=0.99,
                   help="below 0.99: a stratified sample of this fraction of each task's training rows")
    o.add_argument("--max_samples", type=int, default=5000, help="keep at most the first N cleaned rows of each task")
    o.add_argument("--target_modules", nargs="+", default=None,
                   help="modules to adapt, e.g. q_proj v_proj up_proj (default: peft's choice for the architecture)")
    o.add_argument("--tasks", nargs="+", default=["20_Newsgroups_Fixed"], help=f"any of: {' '.join(prompts.TASKS)}")
    n = p.add_argument_group("this project's flags")
    n.add_argument("--data_root", default="", help="folder with disk_datasets/<name> or <task>/<split>.jsonl "
                   "(also .json .csv .parquet); the hub is tried last")
    n.add_argument("--output_root", default="experiments")
    n.add_argument("--seed", type=int, default=42, help="seeds sampling, shuffling, LoRA init and training")
    n.add_argument("--max_steps", type=int, default=-1, help="optimizer steps; -1: --epochs decide")
    n.add_argument("--per_device_train_batch_size", type=int, default=None, help="default: 32 with --bnb, else 4")
    n.add_argument("--gradient_accumulation_steps", type=int, default=None, help="default: 2 with --bnb, else 16")
    n.add_argument("--learning_rate", type=float, default=2e-4)
    n.add_argument("--lora_alpha", type=int, default=16)
    n.add_argument("--max_seq_length", type=int, default=512, help="packing block length in tokens")
    n.add_argument("--loss_on", choices=["all", "completion"], default="all",
                   help="loss over every token (the original) or only each example's label and EOS")
    n.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 on GPUs that support it, else fp32")
    n.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for activation memory")
    n.add_argument("--logging_steps", type=int, default=100)
    n.add_argument("--save_steps", type=int, default=2000, help="checkpoint every N optimizer steps")
    n.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    n.add_argument("--overwrite", action="store_true", help="delete an earlier run in the same folder first")
    n.add_argument("--trust_remote_code", action="store_true", help="allow a hub model's own code to run")
    args = p.parse_args(argv)
    if args.per_device_train_batch_size is None:
        args.per_device_train_batch_size = 32 if args.bnb else 4
    if args.gradient_accumulation_steps is None:
        args.gradient_accumulation_steps = 2 if args.bnb else 16
    return args


def check_args(args):
    """Every value a user can get wrong, checked before anything loads or is written."""
    tasks = prompts.check_tasks(args.tasks)
    if args.lora_r <= 0:
        raise UserError(f"--lora_r must be a positive integer, got {args.lora_r}")
    if not 0 < args.train_sample_fraction <= 1:
        raise UserError(f"--train_sample_fraction must be in (0, 1], got {args.train_sample_fraction}")
    if not 0 <= args.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {args.dropout}")
    for flag in ("epochs", "max_samples", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "max_seq_length", "logging_steps", "save_steps"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise UserError(f"--max_steps must be positive or -1, got {args.max_steps}")
    if args.learning_rate <= 0:
        raise UserError(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    return tasks


def load_training_examples(tasks, args):
    """Each task's cleaned training rows: the first --max_samples, then the stratified sample."""
    per_task = {}
    for task in tasks:
        examples = prompts.load(task, args.data_root or ".", "train", args.max_samples)
        if args.train_sample_fraction < 0.99:
            examples = prompts.stratified_sample(examples, args.train_sample_fraction, args.seed)
        per_task[task.name] = examples
        print(f"{task.name}: {len(examples)} training examples")
    return per_task


def experiment_folder(args):
    return utils.experiment_dir(args.output_root, args.tasks, args.train_sample_fraction, args.epochs, args.lora_r,
                                args.dropout, args.target_modules, args.bnb, args.loss_on)


def check_folder(out, args):
    """Refuse to mix two runs in one folder; decide whether to resume from a checkpoint."""
    if not os.path.isdir(out) or not os.listdir(out):
        if args.resume:
            print(f"--resume: nothing to resume in {out}; starting a new run")
        return None
    if args.overwrite:
        return None
    if not args.resume:
        state = "a finished" if os.path.isfile(os.path.join(out, "experiment.json")) else "a partial"
        raise UserError(f"{out} already holds {state} run: pass --resume to continue it or --overwrite to replace it")
    ckpts = sorted((d for d in os.listdir(out) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
    return os.path.join(out, ckpts[-1]) if ckpts else None


def bf16_autocast(args):
    """Whether the Trainer runs under bf16 autocast: a bf16 model, or a 4-bit one on a GPU (bf16 compute)."""
    import torch

    return utils.pick_dtype(args.dtype) == torch.bfloat16 or (args.bnb and torch.cuda.is_available())


def add_lora(model, args):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.tuners_utils import BaseTunerLayer

    if args.bnb:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.dropout, bias="none",
                        task_type="CAUSAL_LM", target_modules=args.target_modules)
    model = get_peft_model(model, config)
    model.config.use_cache = False
    if bf16_autocast(args):  # autocast runs LoRA's matmuls in bf16 anyway: skip peft's copies of every input to
        for module in model.modules():  # the fp32 adapter's dtype (part of aten::copy_ in bench/profile_train.py)
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    return model


def training_blocks(per_task, tokenizer, args):
    """Every task's texts, encoded (prompt, label, EOS), shuffled with the seed and packed into blocks."""
    encoded = []
    for name, examples in per_task.items():
        task = prompts.TASKS[name]
        encoded += [utils.encode_example(tokenizer, task, f, y, args.max_seq_length) for f, y in examples]
    return utils.pack(encoded, args.max_seq_length, tokenizer.pad_token_id, args.loss_on, args.seed)


def fit(model, tokenizer, blocks, args, out, resume_from, callbacks=()):
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from transformers import Trainer, TrainingArguments, default_data_collator
    from transformers.integrations import TensorBoardCallback

    cuda = torch.cuda.is_available()
    targs = TrainingArguments(
        output_dir=out,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        max_grad_norm=0.3,
        optim="paged_adamw_32bit" if args.bnb and cuda else "adamw_torch",
        bf16=bf16_autocast(args),
        tf32=cuda and torch.cuda.get_device_capability()[0] >= 8,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_strategy="steps",
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=not cuda,
        ddp_find_unused_parameters=False,
    )
    callbacks = list(callbacks)
    if targs.process_index == 0:
        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=os.path.join(out, "logs"))))
    trainer = Trainer(model=model, args=targs, train_dataset=blocks, data_collator=default_data_collator,
                      processing_class=tokenizer, callbacks=callbacks)
    result = trainer.train(resume_from_checkpoint=resume_from)
    return trainer, result


def save_experiment(trainer, tokenizer, result, args, out, per_task, n_blocks, ckpt, seconds):
    """The original's files (adapter and tokenizer in assets/, the parameter-count file, results.pkl)
    plus results.json and experiment.json, each written whole or not at all."""
    model = trainer.model
    trainable, total = model.get_nb_trainable_parameters()
    utils.atomic_write(os.path.join(out, f"{trainable}_total_{total}.txt"), f"{trainable}\n{total}\n{trainable / total}\n")
    tmp_assets = os.path.join(out, ".assets-tmp")
    shutil.rmtree(tmp_assets, ignore_errors=True)
    model.save_pretrained(tmp_assets)
    tokenizer.save_pretrained(tmp_assets)
    shutil.rmtree(os.path.join(out, "assets"), ignore_errors=True)
    os.replace(tmp_assets, os.path.join(out, "assets"))
    loss = result.training_loss
    utils.atomic_write(os.path.join(out, "results.pkl"), pickle.dumps([args.epochs, args.lora_r, args.dropout, loss]))
    utils.write_json(os.path.join(out, "results.json"),
                     {"epochs": args.epochs, "lora_r": args.lora_r, "dropout": args.dropout, "train_loss": loss})
    utils.write_json(os.path.join(out, "experiment.json"), {
        "kind": "lora",
        "args": vars(args),
        "base_checkpoint": ckpt,
        "target_modules": sorted(model.peft_config["default"].target_modules),
        "train_loss": loss,
        "global_step": trainer.state.global_step,
        "trainable_params": trainable,
        "total_params": total,
        "train_examples": {k: len(v) for k, v in per_task.items()},
        "train_blocks": n_blocks,
        "seconds": round(seconds, 1),
        "versions": utils.library_versions(),
    })


def main(argv=None):
    t0 = time.time()
    args = parse_args(argv)
    tasks = check_args(args)
    from transformers import set_seed

    set_seed(args.seed)
    per_task = load_training_examples(tasks, args)
    ckpt = utils.resolve_checkpoint(args.pretrained_ckpt)
    config = utils.load_config(ckpt, args.trust_remote_code)
    utils.check_target_modules(args.target_modules, config, args.trust_remote_code)
    out = experiment_folder(args)
    resume_from = check_folder(out, args)

    model, tokenizer = utils.load_base(ckpt, args.bnb, args.dtype, args.trust_remote_code)
    model = add_lora(model, args)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    blocks = training_blocks(per_task, tokenizer, args)
    print(f"{len(blocks)} blocks of {args.max_seq_length} tokens, loss on {args.loss_on}")

    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        if args.overwrite and os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out, exist_ok=True)
    state.wait_for_everyone()
    trainer, result = fit(model, tokenizer, blocks, args, out, resume_from)
    if state.is_main_process:
        save_experiment(trainer, tokenizer, result, args, out, per_task, len(blocks), ckpt, time.time() - t0)
        print(f"train loss {result.training_loss:.4f}; experiment saved in {out}")
    state.wait_for_everyone()


if __name__ == "__main__":
    utils.run_main(main)
