"""Train one LoRA adapter on several tasks at once (Qiu et al., arXiv 2402.12233).

The story of one run: parse and check the flags and the output folder (fail before any model loads) -> load
each task's training rows -> resolve the base model and the modules to adapt (module names or role words:
keys, values, attention_qv, per architecture) -> decide the precision and the placement -> the run's identity
names its folder -> tokenise every text whole and pack the stream into blocks -> (--dry_run: print the plan
and the memory estimate, and stop) -> lock the folder; a finished run with the same identity is left as it is,
an interrupted one resumes from its newest whole checkpoint -> load the base (4-bit with --bnb), add LoRA ->
Trainer -> save the adapter, the tokenizer and the run's record into the experiment folder.

    python llama2_classification_multi_tasks.py --bnb --target_modules q_proj v_proj up_proj --tasks boolq COPA CB
"""

import argparse
import json
import math
import os
import pickle
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict

import datafiles
import experiment
import fsdp
import identity
import memory
import prompts
import roles
import utils
from common import ArgumentParser, UserError, run_main

CARDS_GIB = (24, 40, 48, 80)  # the common GPU sizes a --dry_run checks the estimate against


RESUMABLE = 75  # exit code of a run stopped on request (SIGUSR1/SIGTERM) after saving a checkpoint: run it again


def dry_run_target(value):
    """--dry_run's value: 'here', 'gpu' or 'fsdp:N' (N processes, one GPU each)."""
    if value in ("here", "gpu") or (value.startswith("fsdp:") and value[5:].isdigit() and int(value[5:]) > 1):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: give nothing (this machine), gpu, or fsdp:N with N >= 2 GPUs")


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=True,
                       epilog="Lists are space-separated (--target_modules q_proj v_proj up_proj). Flags may be "
                              "shortened while they stay unambiguous (--epoch 3 --task boolq), as in the original.")
    o = p.add_argument_group("the original's flags")
    o.add_argument("--pretrained_ckpt", default=identity.ORIGINAL_MODEL,
                   help=f"base model: a hub id, a local folder or a .gguf file (default: {identity.ORIGINAL_MODEL}, "
                        f"as the original; on a laptop: {utils.EMBEDDED_MODEL}, made by `make model`)")
    o.add_argument("--lora_r", type=int, default=8, help="LoRA rank r")
    o.add_argument("--epochs", type=int, default=5, help="passes over the training blocks (unless --max_steps)")
    o.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout")
    o.add_argument("--bnb", action="store_true",
                   help="load the base in 4-bit (nf4, double quantisation, bf16 compute), QLoRA as the original")
    o.add_argument("--train_sample_fraction", type=float, default=0.99,
                   help="below 0.99: a stratified sample of this fraction of each task's training rows")
    o.add_argument("--max_samples", type=int, default=5000, help="keep at most the first N cleaned rows of each task")
    o.add_argument("--target_modules", nargs="+", default=None, metavar="MODULE",
                   help="modules to adapt: names (q_proj v_proj up_proj) or role words resolved for the model's "
                        f"architecture ({' '.join(roles.ROLE_WORDS)}; architectures: {' '.join(roles.ARCHITECTURES)}, "
                        "others derived from their structure); default: peft's choice for the architecture")
    o.add_argument("--tasks", nargs="+", default=["20_Newsgroups_Fixed"], metavar="TASK",
                   help=f"one or more of: {' '.join(prompts.TASKS)}")
    n = p.add_argument_group("this project's flags")
    n.add_argument("--data_root", default="", help="folder with disk_datasets/<name> or <task>/<split>.jsonl (also "
                   ".json .csv .parquet); default: the current folder, then the original's /disk_datasets; the hub last")
    n.add_argument("--output_root", default="experiments", help="where experiment folders are written")
    n.add_argument("--seed", type=int, default=utils.DEFAULT_SEED,
                   help="seeds sampling, shuffling, LoRA init and training; another than 42 adds -seed<N> to the folder")
    n.add_argument("--max_steps", type=int, default=-1,
                   help="optimizer steps to run instead of --epochs (-1: --epochs decide); adds -steps<N> to the folder")
    n.add_argument("--per_device_train_batch_size", type=int, default=None,
                   help="blocks per device and step (default: 32 with --bnb, else 4, as the original)")
    n.add_argument("--gradient_accumulation_steps", type=int, default=None,
                   help="batches per optimizer step (default: 2 with --bnb, else 16: an effective batch of 64)")
    n.add_argument("--learning_rate", type=float, default=2e-4, help="AdamW learning rate, constant schedule")
    n.add_argument("--lora_alpha", type=int, default=16, help="LoRA scale alpha (the update is alpha / r * B A)")
    n.add_argument("--max_seq_length", type=int, default=512, help="packing block length in tokens")
    n.add_argument("--loss_on", choices=["all", "completion"], default="all",
                   help="loss over every token (the original) or only each text's label and EOS")
    n.add_argument("--shorten_to_block", action="store_true",
                   help="shorten each text in its long field to fit one block (cue and label kept) and pad the last "
                        "block, instead of the original's stream where a long text continues into the next block")
    n.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="what training computes in; auto: bf16 on GPUs that support it and on CPUs where bf16 is "
                        "measured faster, else fp32 (the frozen base stays fp32 without --bnb, as the original)")
    n.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each layer's activations in the backward pass (default: on with --bnb, as the "
                        "original's prepare_model_for_kbit_training; off without)")
    n.add_argument("--dry_run", nargs="?", const="here", type=dry_run_target, default=None, metavar="WHERE",
                   help="print the plan and the peak-memory estimate, load no weights, write nothing: for this "
                        "machine (no value), one bf16-capable GPU (`gpu`) or FSDP over N such GPUs (`fsdp:N`)")
    n.add_argument("--logging_steps", type=int, default=None,
                   help="log the training loss every N optimizer steps (default: enough for 20 points per run)")
    n.add_argument("--save_steps", type=int, default=2000, help="checkpoint every N optimizer steps")
    n.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its newest whole checkpoint (a finished run is left as is)")
    n.add_argument("--overwrite", action="store_true", help="delete an earlier run in the same folder first")
    n.add_argument("--trust_remote_code", action="store_true", help="allow a hub model's own code to run")
    return p


def parse_args(argv=None):
    return finalize(build_parser().parse_args(argv))


def finalize(args):
    """The defaults that follow other flags: the original's batch shape and checkpointing follow --bnb."""
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
                 "max_seq_length", "logging_steps", "save_steps", "lora_alpha"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.max_seq_length == 1:
        raise UserError("--max_seq_length must be at least 2, got 1: in a block of one token nothing is predicted")
    if not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32 - 1] (torch's and numpy's seed range), got {args.seed}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise UserError(f"--max_steps must be positive or -1, got {args.max_steps}")
    if not args.learning_rate > 0 or not math.isfinite(args.learning_rate):
        raise UserError(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    for m in args.target_modules or []:
        if "," in m:
            raise UserError(f"--target_modules {m}: module names are space-separated: --target_modules "
                            f"{' '.join(x for x in m.split(',') if x)}")
    check_output_root(args.output_root)
    return tasks


def check_output_root(root):
    """The output root can be created and written to: told before any model loads."""
    path = os.path.abspath(root)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError(f"--output_root {root}: {path} is a file, not a folder")
    try:  # a real write: permissions, read-only mounts and file systems that refuse it (os.access may not know)
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=path))
    except OSError as e:
        raise UserError(f"--output_root {root}: {path} is not writable ({e.strerror or e})") from None


def load_training_examples(tasks, args):
    """Each task's cleaned training rows (the first --max_samples, then the stratified sample) and where they
    came from."""
    per_task, sources = {}, {}
    for task in tasks:
        examples, source = prompts.load(task, args.data_root, "train", args.max_samples)
        if args.train_sample_fraction < 0.99:
            examples = prompts.stratified_sample(examples, args.train_sample_fraction, args.seed)
        per_task[task.name], sources[task.name] = examples, {**source, "used": len(examples)}
        dropped = "".join(f", {n} dropped: {why}" for why, n in source.get("dropped", {}).items())
        print(f"{task.name}: {len(examples)} training examples from {datafiles.describe(source)} "
              f"({source['rows']} rows, {source['clean']} after cleaning{dropped})")
    return per_task, sources


def warn_missing_evaluation_data(tasks, data_root):
    """One line per task whose evaluation split cannot be found, before the training time is spent."""
    for task in tasks:
        if datafiles.find_source(task, data_root, task.eval_split) is None:
            print(f"warning: {task.name} has no {task.eval_split!r} split for evaluation here (looked for "
                  f"{datafiles.expected_files(task, data_root, task.eval_split)}); evaluation will fail until it exists")


def resolve_targets(args, config):
    """The modules to adapt, resolved for the architecture (roles.resolve), the derivation printed when the
    architecture was not in the table."""
    res = roles.resolve(args.target_modules, utils.meta_model(config, args.trust_remote_code), dropout=args.dropout)
    if res.derivation:
        print(res.derivation)
    return res


def adapted_names(res):
    """The names the folder and the record give the adapted modules and parameters (None: peft's default)."""
    names = list(res.target_modules or []) + list(res.target_parameters or [])
    return names or None


def run_identity(args, res, prec, processes, per_task):
    return identity.training(args, adapted_names(res), prec.dtype, processes, identity.data_fingerprint(per_task))


def experiment_folder(args, ident):
    return utils.experiment_dir(args.output_root, ident)


class Finished(Exception):
    """The folder holds a finished run with the same identity: --resume leaves it as it is."""


def recorded_identity(record):
    """The identity a record was made with; reconstructed (without the data) for an older record."""
    if "identity" in record:
        return record["identity"]
    a = record.get("args", {})
    try:
        ident = identity.training(a, record.get("target_modules"), record.get("precision", {}).get("dtype"),
                                  1, None)
    except KeyError:
        return {}
    return {k: v for k, v in ident.items() if k != "data"}


def check_folder(out, args, ident):
    """Refuse to mix two runs in one folder; decide whether to resume, and from which checkpoint. A finished run
    is reused only with the same identity (Finished), an interrupted one resumed only with the flags it was
    started with; otherwise a one-line error names the flags that differ."""
    state = experiment.state(out)
    if state == "new":
        if args.resume:
            resume_elsewhere(out, args, ident)
            print(f"--resume: nothing to resume in {out}; starting a new run")
        return None
    if args.overwrite:
        return None
    if state == "finished":
        record = utils.read_json(os.path.join(out, experiment.RECORD), "experiment record")
        differ = identity.differences(recorded_identity(record), ident)
        if differ:
            raise UserError(f"{out} holds a finished run made with other settings ({'; '.join(differ)}): "
                            "--overwrite replaces it, or choose another --output_root")
        if args.resume:
            raise Finished(f"{out} holds a finished run with these settings ({record.get('global_step')} steps, train "
                           f"loss {record.get('train_loss')}): nothing to do (--overwrite trains it again)")
        raise UserError(f"{out} already holds a finished run: --overwrite replaces it")
    started = os.path.join(out, "identity.json")
    if os.path.isfile(started):
        differ = identity.differences(utils.read_json(started, "run identity").get("identity", {}), ident)
        if differ:
            raise UserError(f"{out} holds an interrupted run started with other settings ({'; '.join(differ)}): "
                            "resume it with the flags it was started with, or --overwrite to start again")
    if not args.resume:
        raise UserError(f"{out} already holds a partial run: pass --resume to continue it or --overwrite to replace it")
    blocking = experiment.not_checkpoint_folders(out)
    if blocking:
        raise UserError(f"{blocking[0]} is not a checkpoint folder, and the Trainer would write its checkpoint there: "
                        "move it out of the experiment folder, then --resume")
    found = experiment.newest_whole_checkpoint(out)
    if found is None:
        print(f"--resume: {out} holds no whole checkpoint yet; starting from the first step")
        return None
    print(f"--resume: continuing from {found[1]} (step {found[0]})")
    return found[1]


def resume_elsewhere(out, args, ident):
    """--resume into a new folder: when an interrupted run of the same tasks, modules and seed was started with
    other flags, say which differ instead of silently starting a new run."""
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        return
    best = None
    for name in os.listdir(parent):
        path = os.path.join(parent, name, "identity.json")
        if experiment.state(os.path.join(parent, name)) != "partial" or not os.path.isfile(path):
            continue
        try:
            other = utils.read_json(path, "run identity").get("identity", {})
        except UserError:
            continue
        if any(other.get(k) != ident.get(k) for k in ("target_modules", "seed", "tasks")):
            continue
        differ = identity.differences(other, ident)
        if differ and (best is None or len(differ) < len(best[1])):
            best = (os.path.join(parent, name), differ)
    if best:
        raise UserError(f"--resume: no run with these settings in {out}; {best[0]} holds an interrupted run that "
                        f"differs ({'; '.join(best[1])}): resume it with its own flags, or drop --resume to start a "
                        "new run")


def training_blocks(per_task, tokenizer, args):
    """Every task's training texts tokenised whole (template and label in one call, as the original), shuffled
    with the seed and packed into blocks; with --shorten_to_block each text is first shortened to fit a block."""
    texts, label_starts = [], []
    for name, examples in per_task.items():
        task = prompts.TASKS[name]
        for i, e in enumerate(examples):
            fields = e.fields
            if args.shorten_to_block:
                room = args.max_seq_length - len(tokenizer(e.label, add_special_tokens=False)["input_ids"]) - 3
                try:
                    fields, _ = utils.fit_prompt(tokenizer, task, fields, max(8, room))
                except utils.TooLong as why:
                    raise UserError(f"task {name} training row {i}: does not fit a block of --max_seq_length "
                                    f"{args.max_seq_length} even shortened: {why}") from None
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
    # a block in which no token is predicted (--loss_on completion inside a long passage, a padded last block of
    # one token) has no loss: it would divide 0 by 0; it teaches nothing, so it is left out, and said so
    teaching = [b for b in blocks if any(label != -100 for label in b["labels"][1:])]
    if not teaching:
        raise UserError(f"no block of --max_seq_length {args.max_seq_length} holds a token to predict (loss on "
                        f"{args.loss_on}): raise --max_seq_length or use --loss_on all")
    if len(teaching) < len(blocks):
        print(f"{len(blocks) - len(teaching)} of {len(blocks)} blocks hold no token the loss counts (loss on "
              f"{args.loss_on}) and are left out")
    return teaching


def optimizer_steps(n_blocks, args, processes=1):
    """What the Trainer will run: steps per epoch from its dataloader's length (per process), times epochs."""
    if args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(math.ceil(n_blocks / processes) / args.per_device_train_batch_size)
    per_epoch = max(batches // args.gradient_accumulation_steps + int(batches % args.gradient_accumulation_steps > 0), 1)
    return per_epoch * args.epochs


def lora_config(args, res=None):
    """peft's LoraConfig of a run: the original's fixed settings (bias none, causal LM) with the run's rank,
    scale and dropout, on the resolved modules (and experts' parameters) or, without `res`, on the names in
    --target_modules as they are."""
    from peft import LoraConfig

    modules = res.target_modules if res is not None else args.target_modules
    parameters = list(res.target_parameters) if res is not None and res.target_parameters else None
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=modules, target_parameters=parameters)


def plan(args, out, config, sources, blocks, prec, place, cuda, res, ident, processes=1, fsdp=False):
    """Everything the run would do, from the config alone: LoRA applied to the model on the meta device (no
    weights) for the parameter counts, and the memory estimate per device (under FSDP, the weights, adapter and
    optimizer state divided over the processes)."""
    from peft import get_peft_model

    model = utils.meta_model(config, args.trust_remote_code)
    weights = memory.weight_counts(model)
    lora = get_peft_model(model, lora_config(args, res))
    trainable, total = lora.get_nb_trainable_parameters()
    targets = sorted(lora.peft_config["default"].target_modules or [])
    counted = sum(y != -100 for b in blocks for y in b["labels"]) / max(1, sum(len(b["labels"]) for b in blocks))
    estimate = memory.estimate(config, targets, args.lora_r, args.dropout, prec, cuda, args.per_device_train_batch_size,
                               args.max_seq_length, args.gradient_checkpointing,
                               1.0 if args.loss_on == "all" else counted, trainable, weights,
                               shards=processes if fsdp else 1)
    steps = optimizer_steps(len(blocks), args, processes)
    return {
        "experiment_dir": out, "folder": experiment.state(out),
        "tasks": {name: {"rows": s["used"], "source": datafiles.describe(s)} for name, s in sources.items()},
        "blocks": len(blocks), "block_size": args.max_seq_length, "optimizer_steps": steps, "processes": processes,
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * processes,
        "tokens": steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
        * args.max_seq_length,
        "target_modules": targets, "target_parameters": list(res.target_parameters or []),
        "roles": dict(res.roles), "adapted": [list(p) for p in res.paths],
        "trainable_params": trainable, "total_params": total,
        "gradient_checkpointing": args.gradient_checkpointing, "device": "gpu" if cuda else "cpu",
        "fsdp": processes if fsdp else None, "precision": asdict(prec), "placement": place.what, "identity": ident,
        "memory_estimate_bytes": estimate,
        "fits_gib": {str(g): memory.fits(estimate["total"], g) for g in CARDS_GIB} if cuda else None,
    }


def print_plan(p):
    gib = {k: v / memory.GIB for k, v in p["memory_estimate_bytes"].items()}
    print(f"\nplan: {p['experiment_dir']} ({p['folder']})")
    for name, t in p["tasks"].items():
        print(f"  {name}: {t['rows']} rows from {t['source']}")
    print(f"  {p['blocks']} blocks of {p['block_size']} tokens -> {p['optimizer_steps']} optimizer steps "
          f"(effective batch {p['effective_batch']}, {p['tokens']:,} tokens)")
    print(f"  LoRA on {' '.join(p['target_modules'] + p['target_parameters'])}: {p['trainable_params']:,} trainable "
          f"of {p['total_params']:,}")
    layer0 = [(path, role) for path, role in p["adapted"] if roles.layer_of(path) in (0, None)]
    print(f"  adapted in each of the model's layers ({len(p['adapted'])} in all): "
          + ", ".join(f"{path} ({role})" for path, role in layer0))
    prec = p["precision"]
    print(f"  {p['device']}: {prec['why']}, gradient checkpointing {'on' if p['gradient_checkpointing'] else 'off'}, "
          f"{p['placement']}")
    print("  peak memory per device (estimate): " + ", ".join(f"{k} {v:.2f} GiB" for k, v in gib.items() if k != "total")
          + f" -> total {gib['total']:.2f} GiB")
    if p["fits_gib"]:
        print("  fits: " + ", ".join(f"{g} GB {'yes' if ok else 'no'}" for g, ok in p["fits_gib"].items()))
    print(json.dumps(p))


def add_lora(model, args, prec, res=None):
    """LoRA on the target modules; with --bnb the base is prepared as the original did
    (prepare_model_for_kbit_training) and its CPU 4-bit layers kept trainable; checkpointing as
    --gradient_checkpointing says."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.tuners_utils import BaseTunerLayer

    if args.bnb:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        utils.keep_4bit_layers_trainable(model)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model = get_peft_model(model, lora_config(args, res))
    model.config.use_cache = False
    if prec.autocast:  # autocast runs LoRA's matmuls in bf16 anyway: skip peft's copies of every input to
        for module in model.modules():  # the fp32 adapter's dtype (part of aten::copy_ in bench/profile_train.py)
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    return model


class NonFinite(Exception):
    """A NaN or inf in the training loss: the run stops there, keeping the checkpoints written so far."""


def output_layer_in_the_loss(model):
    """Move the output layer from the model's forward into the loss: the model returns its final hidden states,
    and the loss applies the output layer only at the positions whose loss counts (a few per text with
    --loss_on completion), a chunk of rows at a time, so that no full batch of logits is ever held.
    The layer stays in the model (only its forward becomes a pass-through), so that FSDP2 shards and gathers it
    like any layer. Returns (loss function for the Trainer's compute_loss_func, a function that puts its forward
    back)."""
    import torch
    from torch.distributed.tensor import DTensor

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

    head.forward = lambda hidden: hidden  # an instance attribute: the layer stays in the model (FSDP shards it)

    def loss(outputs, labels, num_items_in_batch=None):
        hidden, targets = outputs.logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
        keep = targets != -100
        weight = head.weight
        if isinstance(weight, DTensor):  # a shard under FSDP2 (accelerate's wrapping usually hands the whole one)
            weight = weight.full_tensor()
        total = ChunkedCrossEntropy.apply(hidden[keep], weight, targets[keep])
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
        if not torch.isfinite(total):
            raise NonFinite(f"the training loss is {total.item()}")
        if count == 0:  # nothing counted in this batch (blocks without one are left out): no loss, not 0/0
            return total * 0.0
        return total / count

    def restore():
        del head.forward  # nn.Linear's own forward again

    return loss, restore


def logging_interval(args, steps):
    """--logging_steps, or an interval that gives every run at least 20 logged points."""
    return args.logging_steps or max(1, steps // 20)


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


def run_control():
    """A Trainer callback that (1) logs the loss whenever a checkpoint is saved and at the last step, so that
    the log history of every checkpoint covers every step before it (train_loss_of), (2) on SIGUSR1 or
    SIGTERM (a scheduler's time limit or pre-emption) saves a checkpoint at the end of the current optimizer step
    and stops the training there (the run then exits with RESUMABLE), (3) gives each checkpoint's files the
    umask's mode, and (4) on --resume saves and logs at this run's intervals, not the checkpoint's."""
    from transformers import TrainerCallback

    class RunControl(TrainerCallback):
        stop_requested = None

        def request_stop(self, signum, frame):
            self.stop_requested = signal.Signals(signum).name

        def on_step_end(self, args, state, control, **kwargs):
            if self.stop_requested:
                control.should_save = control.should_training_stop = True
            if control.should_save or state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_train_begin(self, args, state, control, **kwargs):
            # a resumed Trainer takes the checkpoint's save and logging intervals: this run's flags decide them
            before = (state.save_steps, state.logging_steps)
            state.compute_steps(args, state.max_steps)
            if state.global_step and before != (state.save_steps, state.logging_steps):
                print(f"--resume: saving every {state.save_steps} steps and logging every {state.logging_steps} "
                      f"from step {state.global_step} (the checkpoint's run: {before[0]} and {before[1]})")

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:  # a checkpoint others can read, as the results
                utils.follow_umask(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    control = RunControl()
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, control.request_stop)
    return control


def train_loss_of(log_history, global_step):
    """The mean training loss over all of a run's steps, from its log history (each logged loss is the mean
    over the steps since the previous log; a resumed run's history starts with the checkpoint's). None when
    the history does not cover the run's steps."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry.get("step", 0) > last:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last == global_step and last > 0 else None


def fit(model, tokenizer, blocks, args, out, resume_from, prec, place, logging_steps=None, control=None, callbacks=()):
    """Run the Trainer over the blocks (resuming from a checkpoint when given); returns (trainer, result).
    `control` is run_control()'s callback (a fresh one when None); `callbacks` are added after it."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers import Trainer, default_data_collator
    from transformers.integrations import TensorBoardCallback

    import torch

    if fsdp.requested() and not torch.cuda.is_available():
        fsdp.allow_on_cpu()  # 2 CPU processes on gloo (the tests): accelerate would otherwise run DDP, silently
    targs = training_arguments(args, out, prec, place, logging_steps)
    callbacks = [control or run_control(), *callbacks]
    if targs.process_index == 0:
        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=os.path.join(out, "logs"))))
    loss, restore = output_layer_in_the_loss(model)
    trainer = Trainer(model=model, args=targs, train_dataset=blocks, data_collator=default_data_collator,
                      processing_class=tokenizer, callbacks=callbacks, compute_loss_func=loss)
    if fsdp.requested():
        fsdp.check_active(trainer)  # asked for and not running: one line, before any step
        fsdp.no_casts(trainer)
        trainer.add_callback(fsdp.checked_at_start(trainer))  # and the prepared model really sharded
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        restore()
        close_progress_bars()  # a message after an error or an interrupt starts on a line of its own
    return trainer, result


def close_progress_bars():
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def steps_per_epoch(n_blocks, args, processes=1):
    return optimizer_steps(n_blocks, argparse.Namespace(**{**vars(args), "max_steps": -1, "epochs": 1}), processes)


def save_experiment(trainer, tokenizer, args, out, record, loss, adapter=None):
    """The original's files (adapter and tokenizer in assets/, the parameter-count file, results.pkl)
    plus results.json and experiment.json (written last: it marks the run finished), each written whole or not
    at all. `loss` is the train loss: the mean over all of the run's steps, a resumed run's included
    (train_loss_of)."""
    step = trainer.state.global_step
    trainable, total = record["trainable_params"], record["total_params"]
    utils.atomic_write(os.path.join(out, f"{trainable}_total_{total}.txt"), f"{trainable}\n{total}\n{trainable / total}\n")
    tmp_assets = os.path.join(out, ".assets-tmp")
    shutil.rmtree(tmp_assets, ignore_errors=True)
    trainer.model.save_pretrained(tmp_assets, state_dict=adapter)  # adapter: gathered from FSDP's shards, or None
    tokenizer.save_pretrained(tmp_assets)
    utils.follow_umask(tmp_assets)
    check_saved_adapter(tmp_assets, record["trainable_params"])
    shutil.rmtree(os.path.join(out, "assets"), ignore_errors=True)
    os.replace(tmp_assets, os.path.join(out, "assets"))
    epochs = round(step / record["steps_per_epoch"], 4)
    utils.atomic_write(os.path.join(out, "results.pkl"), pickle.dumps([args.epochs, args.lora_r, args.dropout, loss]))
    utils.write_json(os.path.join(out, "results.json"), {"epochs": args.epochs, "epochs_trained": epochs,
                                                         "lora_r": args.lora_r, "dropout": args.dropout,
                                                         "train_loss": loss, "global_step": step})
    utils.write_json(os.path.join(out, experiment.RECORD), {
        **record, "train_loss": loss, "global_step": step, "epochs_trained": epochs,
        "versions": utils.library_versions()})


def check_saved_adapter(assets, trainable):
    """The adapter written is whole: its tensors hold as many values as the run trained (an empty adapter is
    what some sharded set-ups save without a word)."""
    from safetensors import safe_open

    path = os.path.join(assets, "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise UserError(f"saving the adapter failed: {path} was not written")
    with safe_open(path, "pt") as f:
        values = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    if values != trainable:
        raise UserError(f"the saved adapter holds {values:,} values, not the {trainable:,} trained: not saved as "
                        "finished; the checkpoints are kept (--resume)")


def continue_command():
    """The command that continues this run: the same arguments with --resume."""
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
    return shlex.join([os.path.basename(sys.executable), sys.argv[0], *argv, "--resume"])


def kept(out):
    found = experiment.newest_whole_checkpoint(out, report=lambda line: None)
    return f"checkpoint-{found[0]} kept" if found else "no checkpoint yet (the run will start again)"


def main(argv=None):
    t0 = time.time()
    args = parse_args(argv)
    tasks = check_args(args)
    from transformers import set_seed

    set_seed(args.seed)
    per_task, sources = load_training_examples(tasks, args)
    warn_missing_evaluation_data(tasks, args.data_root)
    ckpt = utils.resolve_checkpoint(args.pretrained_ckpt)
    config = utils.load_config(ckpt, args.trust_remote_code)
    res = resolve_targets(args, config)
    gpu = args.dry_run is not None and args.dry_run != "here"
    sharded = int(args.dry_run[5:]) if args.dry_run and args.dry_run.startswith("fsdp:") else 0
    prec = utils.precision(args.dtype, args.bnb, "train", device="gpu" if gpu else None, shape=probe_shape(config))
    place = utils.placement(1, sharded > 1, fsdp=sharded > 1) if gpu else utils.this_placement()
    processes = sharded or int(os.environ.get("WORLD_SIZE", "1"))
    ident = run_identity(args, res, prec, processes, per_task)
    out = experiment_folder(args, ident)
    tokenizer = utils.load_tokenizer(ckpt, args.trust_remote_code)
    blocks = training_blocks(per_task, tokenizer, args)
    steps = optimizer_steps(len(blocks), args, processes)
    logging_steps = logging_interval(args, steps)
    print(f"{len(blocks)} blocks of {args.max_seq_length} tokens, loss on {args.loss_on}, {steps} optimizer steps, "
          f"the loss logged every {logging_steps}")
    if args.dry_run:
        print_plan(plan(args, out, config, sources, blocks, prec, place, gpu or place.n_gpu > 0, res, ident, processes,
                        fsdp=bool(sharded) or fsdp.requested()))
        return
    try:
        resume_from = check_folder(out, args, ident)
    except Finished as done:
        print(done)
        return

    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # on CPUs plain PartialState() makes every process main
    with experiment.lock(out, "training") if state.is_main_process else _nothing():
        model = utils.load_base(ckpt, prec, place, args.trust_remote_code)
        model = add_lora(model, args, prec, res)
        trainable, total = model.get_nb_trainable_parameters()
        print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%); {prec.why}; "
              f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; {place.what}")
        if state.is_main_process:
            if args.overwrite:
                for name in os.listdir(out):
                    path = os.path.join(out, name)
                    if name != experiment.LOCK:
                        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            utils.write_json(os.path.join(out, "identity.json"), {"identity": ident, "args": vars(args)})
        state.wait_for_everyone()
        control = run_control()
        try:
            trainer, _ = fit(model, tokenizer, blocks, args, out, resume_from, prec, place, logging_steps, control)
            mean = train_loss_of(trainer.state.log_history, trainer.state.global_step)
            if mean is not None and not math.isfinite(mean):  # before anything is written: the run is not finished
                raise NonFinite(f"the mean training loss is {mean}")
        except KeyboardInterrupt:
            print(f"\ninterrupted: {kept(out)} in {out}; continue with: {continue_command()}", file=sys.stderr)
            sys.exit(130)
        except NonFinite as e:
            raise UserError(f"{e} {step_of(out)}, in {prec.why}: the numbers left the range of the precision or "
                            f"the updates diverged; train with --dtype fp32 or a lower --learning_rate; "
                            f"{kept(out)}") from None
        if control.stop_requested:
            print(f"stopped on {control.stop_requested} at step {trainer.state.global_step}: {kept(out)}; continue "
                  f"with: {continue_command()}", file=sys.stderr)
            sys.exit(RESUMABLE)
        adapter = fsdp.full_adapter_state_dict(trainer.model) if trainer.is_fsdp_enabled else None  # all processes
        if state.is_main_process:
            save_experiment(trainer, tokenizer, args, out, loss=mean, adapter=adapter, record={
                "kind": "lora", "args": {**vars(args), "logging_steps": logging_steps}, "identity": ident,
                "identity_suffix": identity.hashed_part(ident)[0], "base_checkpoint": ckpt,
                "target_modules": adapted_names(res) or sorted(model.peft_config["default"].target_modules),
                "module_roles": dict(res.roles), "adapted": [list(p) for p in res.paths],
                "trainable_params": trainable, "total_params": total, "precision": asdict(prec),
                "placement": place.what, "processes": processes, "data": sources,
                "train_examples": {k: len(v) for k, v in per_task.items()}, "train_blocks": len(blocks),
                "steps_per_epoch": steps_per_epoch(len(blocks), args, processes), "seconds": round(time.time() - t0, 1)})
            print(f"train loss {mean:.4f} (mean over {trainer.state.global_step} steps); experiment saved in {out}")
            hub = [f"{name} from {datafiles.describe(s)}" for name, s in sources.items() if s["source"] == "hub"]
            if hub:
                print("data downloaded from the hub: " + "; ".join(hub))
        state.wait_for_everyone()


def _nothing():
    from contextlib import nullcontext

    return nullcontext()


def step_of(out):
    found = experiment.checkpoints(out)
    return f"after checkpoint-{found[-1][0]}" if found else "before the first checkpoint"


def probe_shape(config):
    """The matrix shapes the bf16 probe multiplies: the model's hidden and MLP widths (at most 1024 and 2816,
    so that the probe stays well under a second on a CPU) by 1024 tokens."""
    d = getattr(config, "hidden_size", None)
    f = getattr(config, "intermediate_size", None) or (4 * d if d else None)
    return (1024, min(d, 1024), min(f, 2816)) if d and f else utils.PROBE_SHAPE


if __name__ == "__main__":
    run_main(main)
