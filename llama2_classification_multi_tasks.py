"""Train one LoRA adapter on several tasks at once (Qiu et al., arXiv 2402.12233).

The story of one run: parse and check the flags (fail before any model loads) -> load each task's training
rows -> resolve the base model and check --target_modules against its config -> tokenise every text whole and
pack the stream into blocks -> decide the precision and the placement -> (--dry_run: print the plan and the
memory estimate, and stop) -> load the base (4-bit with --bnb), add LoRA -> Trainer -> save the adapter, the
tokenizer and the run's record into the experiment folder.

    python llama2_classification_multi_tasks.py --bnb --target_modules q_proj v_proj up_proj --tasks boolq COPA CB
"""

import argparse
import json
import math
import os
import pickle
import shutil
import time
from dataclasses import asdict

import memory
import prompts
import utils
from common import ArgumentParser, UserError, run_main

CARDS_GIB = (24, 40, 48, 80)  # the common GPU sizes a --dry_run checks the estimate against


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       allow_abbrev=False)
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
    n.add_argument("--seed", type=int, default=utils.DEFAULT_SEED,
                   help="seeds sampling, shuffling, LoRA init and training; another than 42 adds -seed<N> to the folder")
    n.add_argument("--max_steps", type=int, default=-1, help="optimizer steps; -1: --epochs decide")
    n.add_argument("--per_device_train_batch_size", type=int, default=None, help="default: 32 with --bnb, else 4")
    n.add_argument("--gradient_accumulation_steps", type=int, default=None, help="default: 2 with --bnb, else 16")
    n.add_argument("--learning_rate", type=float, default=2e-4)
    n.add_argument("--lora_alpha", type=int, default=16)
    n.add_argument("--max_seq_length", type=int, default=512, help="packing block length in tokens")
    n.add_argument("--loss_on", choices=["all", "completion"], default="all",
                   help="loss over every token (the original) or only each text's label and EOS")
    n.add_argument("--shorten_to_block", action="store_true",
                   help="shorten each text in its long field to fit one block (cue and label kept) and pad the last "
                        "block, instead of the original's stream where a long text continues into the next block")
    n.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 on GPUs that support it and on CPUs with native bf16 matrix units, else fp32")
    n.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each layer's activations in the backward pass (default: on with --bnb, as the "
                        "original's prepare_model_for_kbit_training; off without)")
    n.add_argument("--dry_run", nargs="?", const="here", choices=["here", "gpu"], default=None,
                   help="print the plan and the peak-memory estimate, load no weights, write nothing; "
                        "`--dry_run gpu` plans for one bf16-capable GPU")
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
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = args.bnb
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
    """Each task's cleaned training rows (the first --max_samples, then the stratified sample) and where they
    came from."""
    per_task, sources = {}, {}
    for task in tasks:
        examples, source = prompts.load(task, args.data_root or ".", "train", args.max_samples)
        if args.train_sample_fraction < 0.99:
            examples = prompts.stratified_sample(examples, args.train_sample_fraction, args.seed)
        per_task[task.name], sources[task.name] = examples, {**source, "used": len(examples)}
        print(f"{task.name}: {len(examples)} training examples from {prompts.describe(source)} "
              f"({source['rows']} rows, {source['clean']} after cleaning)")
    return per_task, sources


def experiment_folder(args):
    return utils.experiment_dir(args.output_root, args.tasks, args.train_sample_fraction, args.epochs, args.lora_r,
                                args.dropout, args.target_modules, args.bnb, args.loss_on, args.shorten_to_block,
                                args.seed)


def folder_state(out):
    if not os.path.isdir(out) or not os.listdir(out):
        return "new"
    return "finished" if os.path.isfile(os.path.join(out, "experiment.json")) else "partial"


def check_folder(out, args):
    """Refuse to mix two runs in one folder; decide whether to resume from a checkpoint."""
    state = folder_state(out)
    if state == "new":
        if args.resume:
            print(f"--resume: nothing to resume in {out}; starting a new run")
        return None
    if args.overwrite:
        return None
    if not args.resume:
        raise UserError(f"{out} already holds a {state} run: pass --resume to continue it or --overwrite to replace it")
    ckpts = sorted((d for d in os.listdir(out) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
    if not ckpts:
        print(f"--resume: {out} holds no checkpoint yet; starting from the first step")
        return None
    print(f"--resume: continuing from {os.path.join(out, ckpts[-1])}")
    return os.path.join(out, ckpts[-1])


def training_blocks(per_task, tokenizer, args):
    """Every task's training texts tokenised whole (template and label in one call, as the original), shuffled
    with the seed and packed into blocks; with --shorten_to_block each text is first shortened to fit a block."""
    texts, label_starts = [], []
    for name, examples in per_task.items():
        task = prompts.TASKS[name]
        for e in examples:
            fields = e.fields
            if args.shorten_to_block:
                room = args.max_seq_length - len(tokenizer(e.label, add_special_tokens=False)["input_ids"]) - 3
                fields, _ = utils.fit_prompt(tokenizer, task, fields, max(8, room))
            prompt = prompts.prompt_text(task, fields)
            texts.append(prompt + e.label)
            label_starts.append(len(prompt))
    encoded = utils.encode_texts(tokenizer, texts, label_starts)
    blocks = utils.pack(encoded, args.max_seq_length, tokenizer.pad_token_id, args.loss_on, args.seed,
                        drop_last=not args.shorten_to_block)
    if not blocks:
        tokens = sum(len(ids) for ids, _ in encoded)
        raise UserError(f"the training texts make {tokens} tokens, fewer than one block of --max_seq_length "
                        f"{args.max_seq_length}: lower it or add rows")
    return blocks


def optimizer_steps(n_blocks, args, processes=1):
    """What the Trainer will run: steps per epoch from its dataloader's length (per process), times epochs."""
    if args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(math.ceil(n_blocks / processes) / args.per_device_train_batch_size)
    per_epoch = max(batches // args.gradient_accumulation_steps + int(batches % args.gradient_accumulation_steps > 0), 1)
    return per_epoch * args.epochs


def plan(args, out, config, sources, blocks, prec, place, cuda):
    """Everything the run would do, from the config alone: LoRA applied to the model on the meta device (no
    weights) for the parameter counts, and the memory estimate per device."""
    from peft import LoraConfig, get_peft_model

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    model = utils.meta_model(config, args.trust_remote_code)
    weights = memory.weight_counts(model)
    lora = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.dropout,
                                            bias="none", task_type="CAUSAL_LM", target_modules=args.target_modules))
    trainable, total = lora.get_nb_trainable_parameters()
    targets = sorted(lora.peft_config["default"].target_modules)
    counted = sum(y != -100 for b in blocks for y in b["labels"]) / max(1, sum(len(b["labels"]) for b in blocks))
    estimate = memory.estimate(config, targets, args.lora_r, args.dropout, prec, cuda, args.per_device_train_batch_size,
                               args.max_seq_length, args.gradient_checkpointing,
                               1.0 if args.loss_on == "all" else counted, trainable, weights)
    return {
        "experiment_dir": out, "folder": folder_state(out),
        "tasks": {name: {"rows": s["used"], "source": prompts.describe(s)} for name, s in sources.items()},
        "blocks": len(blocks), "block_size": args.max_seq_length,
        "optimizer_steps": optimizer_steps(len(blocks), args, processes), "processes": processes,
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * processes,
        "target_modules": targets, "trainable_params": trainable, "total_params": total,
        "gradient_checkpointing": args.gradient_checkpointing, "device": "gpu" if cuda else "cpu",
        "precision": asdict(prec), "placement": place.what,
        "memory_estimate_bytes": estimate,
        "fits_gib": {str(g): memory.fits(estimate["total"], g) for g in CARDS_GIB} if cuda else None,
    }


def print_plan(p):
    gib = {k: v / memory.GIB for k, v in p["memory_estimate_bytes"].items()}
    print(f"\nplan: {p['experiment_dir']} ({p['folder']})")
    for name, t in p["tasks"].items():
        print(f"  {name}: {t['rows']} rows from {t['source']}")
    print(f"  {p['blocks']} blocks of {p['block_size']} tokens -> {p['optimizer_steps']} optimizer steps "
          f"(effective batch {p['effective_batch']})")
    print(f"  LoRA on {' '.join(p['target_modules'])}: {p['trainable_params']:,} trainable of {p['total_params']:,}")
    prec = p["precision"]
    print(f"  {p['device']}: {prec['why']}, gradient checkpointing {'on' if p['gradient_checkpointing'] else 'off'}, {p['placement']}")
    print("  peak memory per device (estimate): " + ", ".join(f"{k} {v:.2f} GiB" for k, v in gib.items() if k != "total")
          + f" -> total {gib['total']:.2f} GiB")
    if p["fits_gib"]:
        print("  fits: " + ", ".join(f"{g} GB {'yes' if ok else 'no'}" for g, ok in p["fits_gib"].items()))
    print(json.dumps(p))


def add_lora(model, args, prec):
    """LoRA on the target modules; with --bnb the base is prepared as the original did
    (prepare_model_for_kbit_training); checkpointing as --gradient_checkpointing says."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.tuners_utils import BaseTunerLayer

    if args.bnb:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.dropout, bias="none",
                        task_type="CAUSAL_LM", target_modules=args.target_modules)
    model = get_peft_model(model, config)
    model.config.use_cache = False
    if prec.autocast:  # autocast runs LoRA's matmuls in bf16 anyway: skip peft's copies of every input to
        for module in model.modules():  # the fp32 adapter's dtype (part of aten::copy_ in bench/profile_train.py)
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    return model


def output_layer_in_the_loss(model):
    """Move the output layer from the model's forward into the loss: the model returns its final hidden states,
    and the loss applies the output layer only at the positions whose loss counts (a few per text with
    --loss_on completion), a chunk of rows at a time, so that no full batch of logits is ever held.
    Returns (loss function for the Trainer's compute_loss_func, a function that puts the layer back)."""
    import torch

    class ChunkedCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy of hidden @ weight.T against the targets, a chunk of rows at a time. The gradient
        of the hidden states is computed in the forward pass, chunk by chunk, and only it is kept for backward.
        Under autocast the products run in its dtype, as the output layer's own would."""

        @staticmethod
        def forward(ctx, hidden, weight, targets):
            device = hidden.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
            w = weight.to(dtype)
            grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, hidden.shape[0], memory.LOSS_CHUNK):
                logp = torch.log_softmax((hidden[s:s + memory.LOSS_CHUNK].to(dtype) @ w.t()).float(), dim=-1)
                t = targets[s:s + memory.LOSS_CHUNK]
                total -= logp.gather(1, t[:, None]).sum()
                if grad is not None:
                    p = logp.exp_()  # the softmax, in place
                    p[torch.arange(len(t), device=t.device), t] -= 1
                    grad[s:s + memory.LOSS_CHUNK] = (p.to(dtype) @ w).to(grad.dtype)
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, grad_output):
            (grad,) = ctx.saved_tensors
            return grad * grad_output.to(grad.dtype), None, None

    base = model.get_base_model()
    head = base.get_output_embeddings()
    if head.weight.requires_grad or getattr(head, "bias", None) is not None:
        raise UserError("the output layer is trained or has a bias: the chunked loss does not support it")
    base.set_output_embeddings(torch.nn.Identity())

    def loss(outputs, labels, num_items_in_batch=None):
        hidden, targets = outputs.logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
        keep = targets != -100
        total = ChunkedCrossEntropy.apply(hidden[keep], head.weight, targets[keep])
        return total / (num_items_in_batch if num_items_in_batch is not None else keep.sum())

    return loss, lambda: base.set_output_embeddings(head)


def training_arguments(args, out, prec, place):
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
        optim="paged_adamw_32bit" if args.bnb and place.n_gpu else "adamw_torch",
        bf16=prec.autocast,
        tf32=prec.tf32,
        logging_steps=args.logging_steps,
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


def fit(model, tokenizer, blocks, args, out, resume_from, prec, place, callbacks=()):
    from torch.utils.tensorboard import SummaryWriter
    from transformers import Trainer, default_data_collator
    from transformers.integrations import TensorBoardCallback

    targs = training_arguments(args, out, prec, place)
    callbacks = list(callbacks)
    if targs.process_index == 0:
        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=os.path.join(out, "logs"))))
    loss, restore = output_layer_in_the_loss(model)
    trainer = Trainer(model=model, args=targs, train_dataset=blocks, data_collator=default_data_collator,
                      processing_class=tokenizer, callbacks=callbacks, compute_loss_func=loss)
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        restore()
    return trainer, result


def save_experiment(trainer, tokenizer, result, args, out, record):
    """The original's files (adapter and tokenizer in assets/, the parameter-count file, results.pkl)
    plus results.json and experiment.json, each written whole or not at all."""
    trainable, total = record["trainable_params"], record["total_params"]
    utils.atomic_write(os.path.join(out, f"{trainable}_total_{total}.txt"), f"{trainable}\n{total}\n{trainable / total}\n")
    tmp_assets = os.path.join(out, ".assets-tmp")
    shutil.rmtree(tmp_assets, ignore_errors=True)
    trainer.model.save_pretrained(tmp_assets)
    tokenizer.save_pretrained(tmp_assets)
    shutil.rmtree(os.path.join(out, "assets"), ignore_errors=True)
    os.replace(tmp_assets, os.path.join(out, "assets"))
    loss = result.training_loss
    utils.atomic_write(os.path.join(out, "results.pkl"), pickle.dumps([args.epochs, args.lora_r, args.dropout, loss]))
    utils.write_json(os.path.join(out, "results.json"),
                     {"epochs": args.epochs, "lora_r": args.lora_r, "dropout": args.dropout, "train_loss": loss})
    utils.write_json(os.path.join(out, "experiment.json"), {
        **record, "train_loss": loss, "global_step": trainer.state.global_step, "versions": utils.library_versions()})


def main(argv=None):
    t0 = time.time()
    args = parse_args(argv)
    tasks = check_args(args)
    from transformers import set_seed

    set_seed(args.seed)
    per_task, sources = load_training_examples(tasks, args)
    ckpt = utils.resolve_checkpoint(args.pretrained_ckpt)
    config = utils.load_config(ckpt, args.trust_remote_code)
    utils.check_target_modules(args.target_modules, config, args.trust_remote_code)
    out = experiment_folder(args)
    tokenizer = utils.load_tokenizer(ckpt, args.trust_remote_code)
    blocks = training_blocks(per_task, tokenizer, args)
    print(f"{len(blocks)} blocks of {args.max_seq_length} tokens, loss on {args.loss_on}")
    gpu = args.dry_run == "gpu"
    prec = utils.precision(args.dtype, args.bnb, "train", device="gpu" if gpu else None)
    place = utils.placement(1, False) if gpu else utils.this_placement()
    if args.dry_run:
        print_plan(plan(args, out, config, sources, blocks, prec, place, cuda=gpu or place.n_gpu > 0))
        return
    resume_from = check_folder(out, args)

    model = utils.load_base(ckpt, prec, place, args.trust_remote_code)
    model = add_lora(model, args, prec)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%); {prec.why}; "
          "gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}; {place.what}")

    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        if args.overwrite and os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out, exist_ok=True)
    state.wait_for_everyone()
    trainer, result = fit(model, tokenizer, blocks, args, out, resume_from, prec, place)
    if state.is_main_process:
        save_experiment(trainer, tokenizer, result, args, out, {
            "kind": "lora", "args": vars(args), "base_checkpoint": ckpt,
            "target_modules": sorted(model.peft_config["default"].target_modules),
            "trainable_params": trainable, "total_params": total, "precision": asdict(prec),
            "placement": place.what, "data": sources, "train_examples": {k: len(v) for k, v in per_task.items()},
            "train_blocks": len(blocks), "seconds": round(time.time() - t0, 1)})
        print(f"train loss {result.training_loss:.4f}; experiment saved in {out}")
    state.wait_for_everyone()


if __name__ == "__main__":
    run_main(main)
