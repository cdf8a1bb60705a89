"""Evaluate a trained adapter (or the base model alone) on each task's evaluation split.

The story of one evaluation: parse -> read the experiment's record (its tasks, base model, 4-bit setting and data
root are the defaults; a flag on the command line wins; a folder written by the original code is read from its
names and adapter config) -> check every task's data -> lock the folder -> skip the tasks whose metrics exist for
the same evaluation (scoring, precision, prompt budget, generation length, examples) -> load the base and the
adapter from assets/ (what each adapted module changed, ||dW||, is written beside the metrics) -> rank the labels
of every ranked task (all tasks' prompts batched together, each prompt run once with its candidates packed after
it), generate the rest task by task (batched greedy decoding) -> score, and write {metrics folder}/{task}_metrics_
update.json and {task}_predictions.jsonl, each task as soon as it is done. The default evaluation's metrics go
to metrics/ (the original's place); another evaluation's to metrics-<parts>/ beside it, so both are kept.

    python llama2_classification_multi_tasks_inference.py --experiment_dir experiments/boolq/classification-...
    python llama2_classification_multi_tasks_inference.py --pretrained_ckpt models/SmolLM2-135M-Instruct --tasks boolq
"""

import argparse
import os
import time
from dataclasses import asdict

import datafiles
import experiment
import identity
import prompts
import utils
from common import ArgumentParser, UserError, run_main

RANK_MASK_BUDGET = 64 * 512 * 512  # rows x width^2 of one ranking batch (its attention mask and scores)


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=True,
                       epilog="Lists are space-separated (--tasks boolq CB). Flags may be shortened while they stay "
                              "unambiguous, as in the original.")
    p.add_argument("--experiment_dir", default=None,
                   help="a training run's folder (it holds assets/); without it, the base model alone is evaluated")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="default: the experiment's tasks")
    p.add_argument("--bnb", action=argparse.BooleanOptionalAction, default=None,
                   help="load the base in 4-bit (default: as trained; --no-bnb: a 16-bit base, the adapter merged)")
    p.add_argument("--pretrained_ckpt", default=None,
                   help="base model (default: the experiment's); without --experiment_dir the base model alone is "
                        "evaluated")
    p.add_argument("--data_root", default=None, help="default: the experiment's (see the training script's --help)")
    p.add_argument("--output_root", default="experiments",
                   help="where a base model's evaluation is written (experiments/<tasks>/base-<model>)")
    p.add_argument("--scoring", choices=["generate", "rank"], default="generate",
                   help="generate: greedy decoding, the answer read from the start of the text; rank: the label "
                        "with the highest likelihood (classification tasks)")
    p.add_argument("--max_test_samples", type=int, default=1000, help="the first N cleaned evaluation rows")
    p.add_argument("--batch_size", type=int, default=64,
                   help="prompts per batch (halved automatically on out-of-memory)")
    p.add_argument("--max_new_tokens", type=int, default=20, help="tokens generated per prompt at most")
    p.add_argument("--max_input_length", type=int, default=None,
                   help="prompt tokens at most (default: the model's context length minus --max_new_tokens); longer "
                        "prompts are shortened in their long text field, never in the cue at the end")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default=None,
                   help="what the base computes in (default: auto: bf16 on GPUs that support it, fp32 on a CPU, "
                        "whatever the training computed in: every evaluation alike)")
    p.add_argument("--overwrite", action="store_true", help="redo tasks whose metrics already exist")
    p.add_argument("--trust_remote_code", action="store_true", default=None,
                   help="allow a hub model's own code to run (default: as trained)")
    return p


def resolve_run(args):
    """Fill the flags not given from the experiment's record; return (output folder, record). `args.given`
    keeps which of --bnb, --dtype and --data_root the command line set (they name the metrics folder)."""
    args.given = {k: getattr(args, k) for k in ("bnb", "dtype", "data_root") if getattr(args, k) is not None}
    if args.experiment_dir:
        exp = utils.read_experiment(args.experiment_dir)
        trained = exp["args"]
        for key in ("tasks", "bnb", "pretrained_ckpt", "data_root", "trust_remote_code"):
            if getattr(args, key) is None:
                setattr(args, key, trained.get(key))
        args.given = {k: v for k, v in args.given.items() if (k == "dtype" or v != trained.get(k))
                      and not (k == "data_root" and exp.get("layout") == "original")}  # its data root is not known
        if not args.tasks:
            raise UserError(f"{args.experiment_dir}: its tasks cannot be read from the folder's name; pass --tasks")
        if not args.pretrained_ckpt:
            raise UserError(f"{args.experiment_dir}: no base model recorded; pass --pretrained_ckpt")
        return args.experiment_dir, exp
    if not args.pretrained_ckpt:
        raise UserError("give --experiment_dir (a trained adapter) or --pretrained_ckpt (the base model alone)")
    if not args.tasks:
        raise UserError(f"--tasks is needed without --experiment_dir; choose from: {' '.join(prompts.TASKS)}")
    # the base model has no training to be "as": 4-bit and a dtype name its metrics folder, its data does not
    args.given = {k: v for k, v in args.given.items() if k != "data_root" and v not in (False, "auto")}
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


def metrics_folder(args):
    """metrics/ for the default evaluation, metrics-<parts>/ for another (identity.metrics_folder)."""
    return identity.metrics_folder(args.scoring, args.max_test_samples, args.max_new_tokens, args.max_input_length,
                                   args.given.get("bnb"), args.given.get("dtype"), args.given.get("data_root"))


def prompt_budget(args, config):
    """Prompt tokens at most: the model's context minus the new tokens, or --max_input_length."""
    budget = utils.context_length(config) - args.max_new_tokens
    return min(budget, args.max_input_length or budget)


def evaluation_identity(task, args, prec, budget, examples):
    return identity.evaluation(task.scoring(args.scoring), args.max_test_samples, args.max_new_tokens, budget, prec.bnb,
                               prec.dtype, identity.data_fingerprint({task.name: examples}))


def pending(out, folder, tasks, args, ids):
    """The tasks to evaluate: those without metrics in `folder`, or whose metrics were made with another
    evaluation identity (`ids`: {task: identity}), which are then redone."""
    todo = []
    for t in tasks:
        path = utils.metrics_path(out, t.name, folder)
        if os.path.isfile(path) and not args.overwrite:
            old = utils.read_json(path, "metrics file")
            same, differ = identity.comparable(old.get("identity", {}), ids[t.name])
            if same:
                print(f"{t.name}: metrics exist in {path}; skipped (--overwrite redoes them)")
                continue
            print(f"{t.name}: the metrics in {path} were made with another {', '.join(differ)}; evaluating again")
        todo.append(t)
    return todo


def prepare(args):
    """What an evaluation with these arguments is: (output folder, record, tasks, data, precision, config,
    budget, metrics folder, {task: identity}). Reads the record, the data and the model's config; loads no
    weights."""
    out, exp = resolve_run(args)
    tasks = check_args(args)
    data = {t.name: prompts.load(t, args.data_root, t.eval_split, args.max_test_samples) for t in tasks}
    ckpt = utils.resolve_checkpoint(args.pretrained_ckpt)
    config = utils.load_config(ckpt, args.trust_remote_code)
    prec = utils.precision(args.dtype, args.bnb, args.scoring)
    budget = prompt_budget(args, config)
    ids = {t.name: evaluation_identity(t, args, prec, budget, data[t.name][0]) for t in tasks}
    return out, exp, tasks, data, prec, ckpt, budget, metrics_folder(args), ids


def pending_tasks(argv):
    """The tasks an evaluation with these arguments would (re)do, decided without loading a model: what the
    study asks before it starts an evaluation."""
    args = parse_args(argv)
    out, _, tasks, _, _, _, _, folder, ids = prepare(args)
    return [t.name for t in pending(out, folder, tasks, args, ids)]


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


class NonFinite(Exception):
    """NaN or inf in a model's scores or logits: the task is not scored (its numbers would mean nothing)."""


def finite_logits():
    """A generation LogitsProcessor that raises NonFinite as soon as a step's logits hold a NaN or an inf."""
    from transformers import LogitsProcessor

    class FiniteLogits(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if not scores.isfinite().all():
                bad = scores[~scores.isfinite()][0].item()
                raise NonFinite(f"the model's logits hold {bad}")
            return scores

    return FiniteLogits()


def generate(model, tok, prompt_ids, max_new_tokens):
    """Greedy continuations of a batch of prompts (left padded): [(text of the new tokens, text of the prompt
    and new tokens decoded together)], special tokens left out. Raises NonFinite on NaN or inf logits."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    ids, mask = left_pad(prompt_ids, tok.pad_token_id)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             generation_config=config, logits_processor=LogitsProcessorList([finite_logits()]))
    new = out[:, ids.shape[1]:].tolist()
    return [(tok.decode(row, skip_special_tokens=True), tok.decode(prompt + row, skip_special_tokens=True))
            for prompt, row in zip(prompt_ids, new)]


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
    return scores  # a NaN or inf stays in its item's scores: rank_tasks stops that task


def rank_tasks(model, tok, jobs, args):
    """{task: predictions} for every ranked task, their prompts batched together (longest first); a task any of
    whose scores is NaN or inf gets a NonFinite instead of its predictions."""
    import math

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
        if isinstance(out[name], NonFinite):
            continue
        if s is not None and not all(math.isfinite(v) for v in s):
            out[name] = NonFinite(f"the model's scores hold {next(v for v in s if not math.isfinite(v))}")
            continue
        options = jobs[name]["options"]
        out[name][i] = None if s is None else (None, options[max(range(len(options)), key=s.__getitem__)], None)
    return out


def generate_task(model, tok, task, prompt_ids, options, args):
    """[(raw generation, prediction, the original's slice)] per example; None for an example that ran out of
    memory even alone. The prediction is the label the answer starts with (prompts.match_label), or the answer
    itself for an open-answer task. Raises NonFinite on NaN or inf logits."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))  # long first: OOM shows early
    texts = batched(lambda chunk: generate(model, tok, chunk, args.max_new_tokens), [prompt_ids[i] for i in order],
                    args.batch_size, task.name)
    results = [None] * len(prompt_ids)
    for i, out in zip(order, texts):
        if out is not None:
            raw, full = out
            pred = prompts.extract_prediction(raw)
            label = prompts.match_label(pred, options) if options is not None else None
            results[i] = (raw, label or pred if options is not None else pred, full)
    return results


def score(task, examples, source, prompts_text, prompt_ids, predicted, options, args, prec, seconds, ident, skipped):
    """The metrics file and the predictions rows of one task. `skipped` is {example index: why} for rows whose
    prompt cannot fit; they are listed in the predictions with their reason and left out of the metrics."""
    kept = [i for i in range(len(examples)) if i not in skipped]
    outputs = {i: predicted[i] or (None, "", None) for i in kept}
    preds = [outputs[i][1] for i in kept]
    # the original's exact match: the decoded prompt and answer cut at the prompt's length, unstripped
    strict = [outputs[i][1] if outputs[i][2] is None else outputs[i][2][len(prompts_text[i]):] for i in kept]
    m = utils.metrics([examples[i].gold for i in kept], preds, strict, options)
    m["oom_examples"] = [len(prompt_ids[i]) for i in kept if predicted[i] is None]
    m["skipped"] = len(skipped)
    m.update(scoring=task.scoring(args.scoring), max_test_samples=args.max_test_samples, bnb=prec.bnb, dtype=prec.dtype,
             max_new_tokens=args.max_new_tokens, data_root=args.data_root, identity=ident, seconds=round(seconds, 2),
             labels=options, data=source)
    rows = []
    for i, e in enumerate(examples):
        if i in skipped:
            rows.append({"id": i, "label": e.label, "skipped": skipped[i]})
            continue
        raw, p, _ = outputs[i]
        rows.append({"id": i, "label": e.label, "generation": raw, "prediction": p,
                     **({} if task.closed else {"gold": e.gold})})
    return m, rows


def load_model(args, exp, out, prec, ckpt, norms_path=None):
    """The base model in the run's precision, with the experiment's adapter (merged into a 16-bit base: the
    same function without LoRA's extra work per layer) and tokenizer. Before merging, what each adapted module
    changed (||dW||, and relative to ||W||) is written to `norms_path` when given."""
    from peft import PeftModel

    model = utils.load_base(ckpt, prec, utils.this_placement(), args.trust_remote_code)
    if exp is None:
        return model.eval(), utils.load_tokenizer(ckpt, args.trust_remote_code)
    model = PeftModel.from_pretrained(model, os.path.join(out, "assets"))
    if norms_path:
        write_norms(model, out, exp, norms_path)
    if not prec.bnb:
        model = model.merge_and_unload()
    return model.eval(), utils.load_tokenizer(os.path.join(out, "assets"))


def write_norms(model, out, exp, path):
    """{metrics folder}/adapter_norms.json: ||dW||_F = (alpha / r) ||B A||_F of every adapted module from the
    adapter's tensors, with ||W||_F of the base weight beside it and their ratio, and each module's role."""
    import norms
    import roles

    state, config = norms.read_adapter(os.path.join(out, "assets"))
    rows = norms.delta_norms(state, config)
    rows = norms.relative(rows, norms.weight_norms(model, [r["module"] for r in rows]))
    model_type = getattr(model.config, "model_type", None)
    recorded = dict(exp.get("module_roles") or {})
    for r in rows:
        r["role"] = recorded.get(r["name"]) or roles.roles_of([r["name"]], model_type).get(r["name"], "other")
    utils.write_json(path, {"scaling": norms.scaling(config), "modules": rows})


def prompts_that_fit(tok, task, examples, budget):
    """([(fields, ids)] per example, {index: why} of the rows that cannot fit `budget` tokens even with the
    task's long field emptied: those are skipped, and the task goes on)."""
    fitted, skipped = [], {}
    for i, e in enumerate(examples):
        try:
            fitted.append(utils.fit_prompt(tok, task, e.fields, budget))
        except utils.TooLong as why:
            skipped[i] = f"prompt over {budget} tokens: {why}"
            fitted.append((e.fields, None))
    return fitted, skipped


def main(argv=None):
    args = parse_args(argv)
    out, exp, tasks, data, prec, ckpt, budget, folder, ids = prepare(args)
    for t in tasks:
        print(f"{t.name}: {data[t.name][1]['used']} evaluation examples from {datafiles.describe(data[t.name][1])}")
    failed, too_long = {}, {}
    with experiment.lock(out, "evaluation"):
        todo = pending(out, folder, tasks, args, ids)
        if todo:
            norms_path = os.path.join(out, folder, "adapter_norms.json") if exp is not None else None
            model, tok = load_model(args, exp, out, prec, ckpt, norms_path)
            print(f"evaluating in {prec.why}; prompts of at most {budget} tokens; metrics in {os.path.join(out, folder)}")
            jobs = {}
            for t in todo:
                examples = data[t.name][0]
                fitted, skipped = prompts_that_fit(tok, t, examples, budget)
                if skipped:
                    first = min(skipped)
                    print(f"{t.name}: {len(skipped)} of {len(examples)} rows skipped, their prompts cannot fit (row "
                          f"{first}: {skipped[first]})")
                options = prompts.choices(t, examples) if t.closed else None
                keep = [i for i in range(len(examples)) if i not in skipped]
                if not keep:
                    too_long[t.name] = f"every row's prompt is too long (row {min(skipped)}: {skipped[min(skipped)]})"
                    continue
                jobs[t.name] = {"task": t, "ids": [ids_ for _, ids_ in fitted], "options": options, "keep": keep,
                                "texts": [prompts.prompt_text(t, f) for f, _ in fitted], "skipped": skipped,
                                "t0": time.time()}
                if t.scoring(args.scoring) == "rank":
                    jobs[t.name]["items"] = [candidates(tok, jobs[t.name]["texts"][i], fitted[i][1], options)
                                             for i in keep]
            ranked = {name: job for name, job in jobs.items() if "items" in job}
            predicted = {}
            for name, preds in (rank_tasks(model, tok, ranked, args) if ranked else {}).items():
                predicted[name] = preds if isinstance(preds, NonFinite) else dict(zip(jobs[name]["keep"], preds))
            for name, job in jobs.items():  # ranked tasks are written first, then each generated task when it is done
                t = job["task"]
                if name not in predicted:
                    job["t0"] = time.time()
                    try:
                        preds = generate_task(model, tok, t, [job["ids"][i] for i in job["keep"]], job["options"], args)
                        predicted[name] = dict(zip(job["keep"], preds))
                    except NonFinite as e:
                        predicted[name] = e
                if isinstance(predicted[name], NonFinite):
                    failed[name] = str(predicted[name])
                    continue
                m, rows = score(t, data[name][0], data[name][1], job["texts"], job["ids"], predicted[name],
                                job["options"], args, prec, time.time() - job["t0"], ids[name], job["skipped"])
                utils.write_jsonl(utils.predictions_path(out, name, folder), rows)
                utils.write_json(utils.metrics_path(out, name, folder), m)
                if exp is None and not os.path.isfile(os.path.join(out, experiment.RECORD)):
                    utils.write_json(os.path.join(out, experiment.RECORD), {
                        "kind": "base", "args": {k: v for k, v in vars(args).items() if k != "given"},
                        "base_checkpoint": ckpt, "target_modules": [], "trainable_params": 0,
                        "precision": asdict(prec), "versions": utils.library_versions()})
    problems = [f"{name}: {why} in {prec.dtype}" for name, why in failed.items()]
    if failed:
        problems[-1] += (f" (evaluate with --dtype {'bf16 or fp32' if prec.dtype == 'fp16' else 'fp32'}, which keeps "
                         "the numbers in range)")
    problems += [f"{name}: {why} (raise --max_input_length)" for name, why in too_long.items()]
    if problems:
        done = [t.name for t in tasks if t.name not in failed and t.name not in too_long]
        raise UserError("; ".join(problems) + f"; no metrics written for {', '.join([*failed, *too_long])}"
                        + (f" ({', '.join(done)} done)" if done else ""))
    report(out, folder, tasks, data)


def report(out, folder, tasks, data):
    """The table printed at the end: accuracy in % with its interval, majority class, invalid answers, n."""
    print(f"\n{'task':<22}{'accuracy %':>11}{'95% interval':>16}{'majority %':>11}{'invalid %':>10}{'n':>6}"
          f"{'skipped':>8}  scoring")
    for t in tasks:
        m = utils.read_json(utils.metrics_path(out, t.name, folder))
        lo, hi = m["accuracy_ci95"]
        print(f"{t.name:<22}{100 * m['accuracy']:>11.1f}{f'[{100 * lo:.1f}, {100 * hi:.1f}]':>16}"
              f"{100 * m['majority_baseline']:>11.1f}{100 * m['invalid_rate']:>10.1f}{m['n']:>6}"
              f"{m.get('skipped', 0):>8}  {m['scoring']}")
    hub = [f"{t.name} from {datafiles.describe(data[t.name][1])}" for t in tasks if data[t.name][1]["source"] == "hub"]
    if hub:
        print("data downloaded from the hub: " + "; ".join(hub))
    print(f"{len(tasks)} task{'s' if len(tasks) != 1 else ''}; metrics in {os.path.join(out, folder)}")


if __name__ == "__main__":
    run_main(main)
