"""Evaluate a trained adapter (or the base model alone) on each task's evaluation split.

The story of one evaluation: parse -> read the experiment's record (its tasks, base model, 4-bit settings
and data root are the defaults; a flag on the command line wins) -> check every task's data -> load the
base exactly as it was trained and the adapter from assets/ -> per task: build the inference prompts,
predict (batched greedy generation, or ranking the task's labels by likelihood), score, and write
metrics/{task}_metrics_update.json and metrics/{task}_predictions.jsonl.

    python llama2_classification_multi_tasks_inference.py --experiment_dir experiments/boolq/classification-...
    python llama2_classification_multi_tasks_inference.py --pretrained_ckpt models/SmolLM2-135M-Instruct --tasks boolq
"""

import argparse
import os
import time

import prompts
import utils
from prompts import UserError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--experiment_dir", default=None, help="a training run's folder (holds assets/ and experiment.json)")
    p.add_argument("--tasks", nargs="+", default=None, help="default: the experiment's tasks")
    p.add_argument("--bnb", action="store_true", default=None, help="load the base in 4-bit (default: as trained)")
    p.add_argument("--pretrained_ckpt", default=None,
                   help="base model; without --experiment_dir the base model alone is evaluated")
    p.add_argument("--data_root", default=None, help="default: the experiment's")
    p.add_argument("--output_root", default="experiments", help="where a base model's evaluation is written")
    p.add_argument("--scoring", choices=["generate", "rank"], default="generate",
                   help="generate: greedy decoding; rank: the label with the highest likelihood (closed label sets)")
    p.add_argument("--max_test_samples", type=int, default=1000, help="the first N cleaned evaluation rows")
    p.add_argument("--batch_size", type=int, default=64,
                   help="prompts per batch (halved automatically on out-of-memory)")
    p.add_argument("--max_new_tokens", type=int, default=20)
    p.add_argument("--max_input_length", type=int, default=2048,
                   help="longer prompts are shortened in their long text field (never the cue at the end)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default=None, help="default: as trained")
    p.add_argument("--overwrite", action="store_true", help="redo tasks whose metrics already exist")
    p.add_argument("--trust_remote_code", action="store_true", default=None)
    return p.parse_args(argv)


def resolve_run(args):
    """Fill the flags not given from the experiment's record; return (output folder, record)."""
    if args.experiment_dir:
        exp = utils.read_experiment(args.experiment_dir)
        trained = exp["args"]
        for key in ("tasks", "bnb", "pretrained_ckpt", "data_root", "dtype", "trust_remote_code"):
            if getattr(args, key) is None:
                setattr(args, key, trained.get(key))
        return args.experiment_dir, exp
    if not args.pretrained_ckpt:
        raise UserError("give --experiment_dir (a trained adapter) or --pretrained_ckpt (the base model alone)")
    if not args.tasks:
        raise UserError(f"--tasks is needed without --experiment_dir; choose from: {' '.join(prompts.TASKS)}")
    args.bnb, args.dtype, args.trust_remote_code = bool(args.bnb), args.dtype or "auto", bool(args.trust_remote_code)
    args.data_root = args.data_root or ""
    return utils.base_dir(args.output_root, args.tasks, args.pretrained_ckpt), None


def check_args(args):
    tasks = prompts.check_tasks(args.tasks)
    for flag in ("max_test_samples", "batch_size", "max_new_tokens", "max_input_length"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    return tasks


def batched(fn, items, batch_size, desc):
    """fn(list of items) -> list of results, over batches with a progress bar. Only a real out-of-memory
    error is caught: the batch is halved and retried; an item that fails alone gives None."""
    import torch
    from tqdm import tqdm

    out, i, size = [], 0, batch_size
    with tqdm(total=len(items), desc=desc, unit="ex") as bar:
        while i < len(items):
            chunk = items[i:i + size]
            try:
                out += fn(chunk)
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if size > 1:
                    size = max(1, size // 2)
                    continue
                out.append(None)
            i += len(chunk)
            bar.update(len(chunk))
    return out


def left_pad(seqs, pad_id):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


def generate(model, tok, prompt_ids, max_new_tokens):
    """Greedy continuations of a batch of prompts (left padded), decoded from the new tokens only."""
    import torch
    from transformers import GenerationConfig

    ids, mask = left_pad(prompt_ids, tok.pad_token_id)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             generation_config=config)
    return [tok.decode(row, skip_special_tokens=True) for row in out[:, ids.shape[1]:].tolist()]


def rank(model, tok, pairs):
    """Sum of log-probabilities of each (prompt ids, answer ids) pair's answer after its prompt (right
    padding, so every real token keeps its position). The output layer runs only where an answer token is
    predicted, not over the whole vocabulary at every position."""
    import torch

    seqs = [p + a for p, a in pairs]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=model.device)
    rows = torch.tensor([r for r, (p, a) in enumerate(pairs) for _ in a], device=model.device)
    pos = torch.tensor([i for p, a in pairs for i in range(len(p) - 1, len(p) + len(a) - 1)], device=model.device)
    targets = torch.tensor([t for _, a in pairs for t in a], device=model.device)
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.get_output_embeddings()(hidden[rows, pos]).float()
        token_logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    scores = torch.zeros(len(pairs), device=token_logp.device).index_add_(0, rows, token_logp)
    return scores.tolist()


def predict(model, tok, task, prompt_ids, labels, args):
    """(raw generation, prediction) per example (raw is None when ranking); None for an example that ran
    out of memory even alone."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))  # long first: OOM shows early
    if args.scoring == "rank" and labels is not None:
        answers = [utils.encode_label(tok, y) for y in labels]
        pairs = [(prompt_ids[i], a) for i in order for a in answers]
        scores = batched(lambda chunk: rank(model, tok, chunk), pairs, args.batch_size * len(labels) or 1,
                         f"{task.name} (rank)")
        results = {}
        for k, i in enumerate(order):
            s = scores[k * len(labels):(k + 1) * len(labels)]
            results[i] = None if None in s else (None, labels[max(range(len(labels)), key=s.__getitem__)])
        return [results[i] for i in range(len(prompt_ids))]
    texts = batched(lambda chunk: generate(model, tok, chunk, args.max_new_tokens), [prompt_ids[i] for i in order],
                    args.batch_size, task.name)
    results = {}
    for i, raw in zip(order, texts):
        pred = None if raw is None else prompts.extract_prediction(raw)
        if pred is not None and labels is not None:
            pred = prompts.match_label(pred, labels) or pred
        results[i] = None if raw is None else (raw, pred)
    return [results[i] for i in range(len(prompt_ids))]


def evaluate_task(model, tok, task, examples, args):
    t0 = time.time()
    labels = prompts.label_space(task, examples)
    budget = min(args.max_input_length, getattr(model.config, "max_position_embeddings", 10**9)) - args.max_new_tokens
    prompt_ids = [utils.encode_prompt(tok, task, fields, budget) for fields, _ in examples]
    scoring = args.scoring if labels is not None else "generate"
    predicted = predict(model, tok, task, prompt_ids, labels, args)
    oom = [len(prompt_ids[i]) for i, o in enumerate(predicted) if o is None]
    outputs = [o or (None, "") for o in predicted]
    gold = [y for _, y in examples]
    preds = [p for _, p in outputs]
    strict = [p if raw is None else raw.strip() for raw, p in outputs]  # the original's exact string match
    m = utils.metrics(gold, preds, strict, labels)
    m["oom_examples"] = oom
    m.update(scoring=scoring, seconds=round(time.time() - t0, 2), max_test_samples=args.max_test_samples,
             labels=labels)
    rows = [{"id": i, "label": y, "generation": raw, "prediction": p}
            for i, ((raw, p), y) in enumerate(zip(outputs, gold))]
    return m, rows


def main(argv=None):
    args = parse_args(argv)
    out, exp = resolve_run(args)
    tasks = check_args(args)
    data = {t.name: prompts.load(t, args.data_root or ".", t.eval_split, args.max_test_samples) for t in tasks}
    metrics_dir = os.path.join(out, "metrics")
    todo = []
    for t in tasks:
        path = utils.metrics_path(out, t.name)
        if os.path.isfile(path) and not args.overwrite:
            old = utils.read_json(path, "metrics file")
            wanted = args.scoring if t.closed else "generate"
            if old.get("scoring") == wanted and old.get("max_test_samples") == args.max_test_samples:
                print(f"{t.name}: metrics exist in {path}; skipped (--overwrite redoes them)")
                continue
        todo.append(t)

    from transformers import set_seed

    set_seed(exp["args"]["seed"] if exp else 42)
    if todo:
        ckpt = utils.resolve_checkpoint(args.pretrained_ckpt)
        utils.load_config(ckpt, args.trust_remote_code)
        model, tok = utils.load_base(ckpt, args.bnb, args.dtype, args.trust_remote_code)
        if exp is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, os.path.join(out, "assets"))
            if not args.bnb:  # W + BA folded into W: the same function, without LoRA's extra work per layer
                model = model.merge_and_unload()
            tok = utils.load_tokenizer(os.path.join(out, "assets"))
        else:
            utils.write_json(os.path.join(out, "experiment.json"), {
                "kind": "base", "args": vars(args), "base_checkpoint": ckpt, "target_modules": [],
                "trainable_params": 0, "versions": utils.library_versions()})
        model.eval()
        for t in todo:
            m, rows = evaluate_task(model, tok, t, data[t.name], args)
            utils.write_jsonl(utils.predictions_path(out, t.name), rows)
            utils.write_json(utils.metrics_path(out, t.name), m)
    print(f"\n{'task':<22}{'accuracy':>10}{'95% interval':>18}{'majority':>10}{'invalid':>9}{'n':>6}  scoring")
    for t in tasks:
        m = utils.read_json(utils.metrics_path(out, t.name))
        lo, hi = m["accuracy_ci95"]
        print(f"{t.name:<22}{m['accuracy']:>10.3f}{f'[{lo:.3f}, {hi:.3f}]':>18}{m['majority_baseline']:>10.3f}"
              f"{m['invalid_rate']:>9.3f}{m['n']:>6}  {m['scoring']}")
    print(f"metrics in {metrics_dir}")


if __name__ == "__main__":
    utils.run_main(main)
