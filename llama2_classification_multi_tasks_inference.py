"""Evaluate a trained adapter (or the base model alone) on each task's evaluation split.

The story of one evaluation: parse -> read the experiment's record (its tasks, base model, 4-bit setting and data
root are the defaults; a flag on the command line wins; a folder written by the original code is read from its
names and adapter config) -> check every task's data -> skip the tasks whose metrics exist for the same settings
-> load the base and the adapter from assets/ -> rank the labels of every ranked task (all tasks' prompts
batched together, each prompt run once with its candidates packed after it), generate the rest task by task
(batched greedy decoding) -> score, and write metrics/{task}_metrics_update.json and
metrics/{task}_predictions.jsonl, each task as soon as it is done.

    python llama2_classification_multi_tasks_inference.py --experiment_dir experiments/boolq/classification-...
    python llama2_classification_multi_tasks_inference.py --pretrained_ckpt models/SmolLM2-135M-Instruct --tasks boolq
"""

import argparse
import os
import time
from dataclasses import asdict

import prompts
import utils
from common import ArgumentParser, UserError, run_main

RANK_MASK_BUDGET = 64 * 512 * 512  # rows x width^2 of one ranking batch (its attention mask and scores)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       allow_abbrev=False)
    p.add_argument("--experiment_dir", default=None, help="a training run's folder (holds assets/)")
    p.add_argument("--tasks", nargs="+", default=None, help="default: the experiment's tasks")
    p.add_argument("--bnb", action=argparse.BooleanOptionalAction, default=None,
                   help="load the base in 4-bit (default: as trained; --no-bnb: a 16-bit base, the adapter merged)")
    p.add_argument("--pretrained_ckpt", default=None,
                   help="base model (default: the experiment's); without --experiment_dir the base model alone is evaluated")
    p.add_argument("--data_root", default=None, help="default: the experiment's")
    p.add_argument("--output_root", default="experiments", help="where a base model's evaluation is written")
    p.add_argument("--scoring", choices=["generate", "rank"], default="generate",
                   help="generate: greedy decoding; rank: the label with the highest likelihood (classification tasks)")
    p.add_argument("--max_test_samples", type=int, default=1000, help="the first N cleaned evaluation rows")
    p.add_argument("--batch_size", type=int, default=64,
                   help="prompts per batch (halved automatically on out-of-memory)")
    p.add_argument("--max_new_tokens", type=int, default=20)
    p.add_argument("--max_input_length", type=int, default=None,
                   help="prompt tokens at most (default: the model's context length minus --max_new_tokens); longer "
                        "prompts are shortened in their long text field, never in the cue at the end")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default=None,
                   help="default: as trained (auto: bf16 on GPUs that support it, fp32 on a CPU)")
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
        if not args.tasks:
            raise UserError(f"{args.experiment_dir}: its tasks cannot be read from the folder's name; pass --tasks")
        if not args.pretrained_ckpt:
            raise UserError(f"{args.experiment_dir}: no base model recorded; pass --pretrained_ckpt")
        return args.experiment_dir, exp
    if not args.pretrained_ckpt:
        raise UserError("give --experiment_dir (a trained adapter) or --pretrained_ckpt (the base model alone)")
    if not args.tasks:
        raise UserError(f"--tasks is needed without --experiment_dir; choose from: {' '.join(prompts.TASKS)}")
    args.bnb, args.dtype, args.trust_remote_code = bool(args.bnb), args.dtype or "auto", bool(args.trust_remote_code)
    return utils.base_dir(args.output_root, args.tasks, args.pretrained_ckpt), None


def check_args(args):
    tasks = prompts.check_tasks(args.tasks)
    for flag in ("max_test_samples", "batch_size", "max_new_tokens", "max_input_length"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    args.data_root = args.data_root or ""
    args.bnb, args.dtype = bool(args.bnb), args.dtype or "auto"
    return tasks


def settings(task, args, prec):
    """What a task's metrics depend on besides the model: a metrics file with other values is redone."""
    return {"scoring": task.scoring(args.scoring), "max_test_samples": args.max_test_samples, "bnb": prec.bnb,
            "dtype": prec.dtype, "max_new_tokens": args.max_new_tokens, "data_root": args.data_root}


def pending(out, tasks, args, prec):
    """The tasks to evaluate: those without metrics, or whose metrics were made with other settings."""
    todo = []
    for t in tasks:
        path = utils.metrics_path(out, t.name)
        if os.path.isfile(path) and not args.overwrite:
            old = utils.read_json(path, "metrics file")
            if all(old.get(k) == v for k, v in settings(t, args, prec).items()):
                print(f"{t.name}: metrics exist in {path}; skipped (--overwrite redoes them)")
                continue
        todo.append(t)
    return todo


def pending_tasks(argv):
    """The tasks an evaluation with these arguments would (re)do, decided without loading a model: what the
    study asks before it starts an evaluation."""
    args = parse_args(argv)
    out, _ = resolve_run(args)
    tasks = check_args(args)
    return [t.name for t in pending(out, tasks, args, utils.precision(args.dtype, args.bnb, args.scoring))]


def batched(fn, items, batch_size, desc, limit=None):
    """fn(list of items) -> list of results, over batches with a progress bar; `limit(first item)` may cap a
    batch's size. Only a real out-of-memory error is caught: the batch is halved and retried; an item that fails
    alone gives None."""
    import torch
    from tqdm import tqdm

    out, i, size = [], 0, batch_size
    with tqdm(total=len(items), desc=desc, unit="ex") as bar:
        while i < len(items):
            chunk = items[i:i + min(size, limit(items[i]) if limit else size)]
            try:
                out += fn(chunk)
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if len(chunk) > 1:
                    size = max(1, len(chunk) // 2)
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


def candidates(tok, prompt, prompt_ids, options):
    """(shared, continuations): the prompt tokens every candidate starts with, and each candidate's tokens after
    them. A candidate is prompt + label tokenised whole, then EOS: the tokens training saw, whatever a
    tokenizer does at the prompt/label boundary."""
    full = [tok(prompt + label)["input_ids"] + [tok.eos_token_id] for label in options]
    n = len(prompt_ids)
    for f in full:  # the longest common prefix, leaving each candidate at least its EOS
        k = 0
        while k < min(n, len(f) - 1) and prompt_ids[k] == f[k]:
            k += 1
        n = k
    if n == 0:
        raise UserError("a prompt shares no token with its labels' texts: it cannot be ranked")
    return prompt_ids[:n], [f[n:] for f in full]


def rank(model, items, pad_id):
    """Summed log-probability of every candidate continuation of each (shared, continuations) item, from one
    forward pass per item: the shared prompt once, then every candidate packed after it, each attending to the
    prompt and to itself only, at the positions it would have after the prompt. The output layer runs only
    where a candidate's token is predicted."""
    import torch

    width = max(len(s) + sum(map(len, conts)) for s, conts in items)
    ids = torch.full((len(items), width), pad_id)
    position = torch.zeros((len(items), width), dtype=torch.long)
    segment = torch.full((len(items), width), -1)  # -1 padding, 0 the shared prompt, k + 1 candidate k
    rows, at, targets, owner = [], [], [], []
    for b, (shared, conts) in enumerate(items):
        n = len(shared)
        ids[b, :n], position[b, :n], segment[b, :n] = torch.tensor(shared), torch.arange(n), 0
        start = n
        for k, cont in enumerate(conts):
            end = start + len(cont)
            ids[b, start:end] = torch.tensor(cont)
            position[b, start:end] = torch.arange(n, n + len(cont))
            segment[b, start:end] = k + 1
            for j in range(len(cont)):  # token j is predicted at the position before it
                rows.append(b)
                at.append(n - 1 if j == 0 else start + j - 1)
                targets.append(cont[j])
                owner.append((b, k))
            start = end
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    key_seg, query_seg = segment[:, None, :], segment[:, :, None]
    allowed = causal & (key_seg >= 0) & ((key_seg == 0) | (key_seg == query_seg))
    allowed |= torch.eye(width, dtype=torch.bool)  # a padding position attends to itself (no empty row)
    device = model.device
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=allowed[:, None].to(device),
                                     position_ids=position.to(device)).last_hidden_state
        logits = model.get_output_embeddings()(hidden[torch.tensor(rows, device=device), torch.tensor(at, device=device)])
        logp = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
    scores = [[0.0] * len(conts) for _, conts in items]
    for (b, k), v in zip(owner, logp.tolist()):
        scores[b][k] += v
    return scores


def rank_tasks(model, tok, jobs, args):
    """{task: predictions} for every ranked task, their prompts batched together (longest first)."""
    items = [(name, i, shared, conts) for name, job in jobs.items() for i, (shared, conts) in enumerate(job["items"])]
    items.sort(key=lambda x: -(len(x[2]) + sum(map(len, x[3]))))

    def run(chunk):
        return rank(model, [(s, c) for _, _, s, c in chunk], tok.pad_token_id)

    def limit(first):
        width = len(first[2]) + sum(map(len, first[3]))
        return max(1, RANK_MASK_BUDGET // (width * width))

    scores = batched(run, items, args.batch_size, "rank " + " ".join(jobs), limit)
    out = {name: [None] * len(job["items"]) for name, job in jobs.items()}
    for (name, i, _, _), s in zip(items, scores):
        options = jobs[name]["options"]
        out[name][i] = None if s is None else (None, options[max(range(len(options)), key=s.__getitem__)])
    return out


def generate_task(model, tok, task, prompt_ids, options, args):
    """(raw generation, prediction) per example; None for an example that ran out of memory even alone."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))  # long first: OOM shows early
    texts = batched(lambda chunk: generate(model, tok, chunk, args.max_new_tokens), [prompt_ids[i] for i in order],
                    args.batch_size, task.name)
    results = [None] * len(prompt_ids)
    for i, raw in zip(order, texts):
        if raw is not None:
            pred = prompts.extract_prediction(raw)
            results[i] = (raw, (prompts.match_label(pred, options) or pred) if options is not None else pred)
    return results


def score(task, examples, source, prompt_ids, predicted, options, args, prec, seconds):
    """The metrics file and the predictions rows of one task."""
    outputs = [o or (None, "") for o in predicted]
    preds = [p for _, p in outputs]
    strict = [p if raw is None else raw.strip() for raw, p in outputs]  # the original's exact string match
    m = utils.metrics([e.gold for e in examples], preds, strict, options)
    m["oom_examples"] = [len(prompt_ids[i]) for i, o in enumerate(predicted) if o is None]
    m.update(settings(task, args, prec), seconds=round(seconds, 2), labels=options, data=source)
    rows = [{"id": i, "label": e.label, "generation": raw, "prediction": p, **({} if task.closed else {"gold": e.gold})}
            for i, ((raw, p), e) in enumerate(zip(outputs, examples))]
    return m, rows


def load_model(args, exp, out, prec, ckpt):
    """The base model in the run's precision, with the experiment's adapter (merged into a 16-bit base: the
    same function without LoRA's extra work per layer) and tokenizer."""
    from peft import PeftModel

    model = utils.load_base(ckpt, prec, utils.this_placement(), args.trust_remote_code)
    if exp is None:
        return model.eval(), utils.load_tokenizer(ckpt, args.trust_remote_code)
    model = PeftModel.from_pretrained(model, os.path.join(out, "assets"))
    if not prec.bnb:
        model = model.merge_and_unload()
    return model.eval(), utils.load_tokenizer(os.path.join(out, "assets"))


def main(argv=None):
    args = parse_args(argv)
    out, exp = resolve_run(args)
    tasks = check_args(args)
    data = {t.name: prompts.load(t, args.data_root or ".", t.eval_split, args.max_test_samples) for t in tasks}
    for t in tasks:
        print(f"{t.name}: {data[t.name][1]['used']} evaluation examples from {prompts.describe(data[t.name][1])}")
    prec = utils.precision(args.dtype, args.bnb, args.scoring)
    todo = pending(out, tasks, args, prec)
    if todo:
        ckpt = utils.resolve_checkpoint(args.pretrained_ckpt)
        config = utils.load_config(ckpt, args.trust_remote_code)
        budget = utils.context_length(config) - args.max_new_tokens
        budget = min(budget, args.max_input_length or budget)
        model, tok = load_model(args, exp, out, prec, ckpt)
        print(f"evaluating in {prec.why}; prompts of at most {budget} tokens")
        if exp is None:
            utils.write_json(os.path.join(out, "experiment.json"), {
                "kind": "base", "args": vars(args), "base_checkpoint": ckpt, "target_modules": [],
                "trainable_params": 0, "precision": asdict(prec), "versions": utils.library_versions()})
        jobs = {}
        for t in todo:
            examples = data[t.name][0]
            fitted = [utils.fit_prompt(tok, t, e.fields, budget) for e in examples]
            options = prompts.choices(t, examples) if t.closed else None
            jobs[t.name] = {"task": t, "ids": [ids for _, ids in fitted], "options": options, "t0": time.time()}
            if t.scoring(args.scoring) == "rank":
                jobs[t.name]["items"] = [candidates(tok, prompts.prompt_text(t, f), ids, options) for f, ids in fitted]
        ranked = {name: job for name, job in jobs.items() if "items" in job}
        predicted = rank_tasks(model, tok, ranked, args) if ranked else {}
        for name, job in jobs.items():  # ranked tasks are written first, then each generated task when it is done
            t = job["task"]
            if name not in predicted:
                job["t0"] = time.time()
                predicted[name] = generate_task(model, tok, t, job["ids"], job["options"], args)
            m, rows = score(t, data[name][0], data[name][1], job["ids"], predicted[name], job["options"], args, prec,
                            time.time() - job["t0"])
            utils.write_jsonl(utils.predictions_path(out, name), rows)
            utils.write_json(utils.metrics_path(out, name), m)
    print(f"\n{'task':<22}{'accuracy':>10}{'95% interval':>18}{'majority':>10}{'invalid':>9}{'n':>6}  scoring")
    for t in tasks:
        m = utils.read_json(utils.metrics_path(out, t.name))
        lo, hi = m["accuracy_ci95"]
        print(f"{t.name:<22}{m['accuracy']:>10.3f}{f'[{lo:.3f}, {hi:.3f}]':>18}{m['majority_baseline']:>10.3f}"
              f"{m['invalid_rate']:>9.3f}{m['n']:>6}  {m['scoring']}")
    print(f"metrics in {os.path.join(out, 'metrics')}")


if __name__ == "__main__":
    run_main(main)
