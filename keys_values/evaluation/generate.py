"""Batched greedy generation: prompts left-padded, longest first (an out-of-memory error shows early, and halves
the batch), the answer read from the new tokens only; a NaN or inf in the logits stops the task."""

import prompts

BATCH_TOKENS = 64 * 1024  # prompt tokens in one generation batch at most (64 prompts of 1,024 tokens)


def batched(fn, items, batch_size, desc, limit=None, alike=None, work=len):
    """fn(list of items, tick) -> list of results, over batches with a progress bar; `limit(first item)` may cap
    a batch's size, and `alike(first, item)` ends a batch at the first item unlike its first (prompts of very
    different lengths: the short ones would be padded to the long one's). Only a real out-of-memory error is
    caught: the batch is halved and retried; an item that fails alone gives None.

    The bar counts examples, and its percentage, rate and ETA count work: `work(item)` units (tokens) per item,
    so that the long first batches do not skew the ETA, and `tick(units)`, called by `fn` as it goes (one
    generation step), moves the bar within a long batch."""
    import torch
    from tqdm import tqdm

    out, i, size = [], 0, batch_size
    with tqdm(total=sum(map(work, items)), desc=desc, unit="tok", unit_scale=True,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}, {rate_fmt}]") as bar:
        bar.set_postfix_str(f"0/{len(items)} ex")
        while i < len(items):
            chunk = items[i:i + min(size, limit(items[i]) if limit else size)]
            if alike is not None:
                cut = next((j for j, x in enumerate(chunk) if not alike(chunk[0], x)), len(chunk))
                chunk = chunk[:max(1, cut)]
            due, ticked = sum(map(work, chunk)), 0

            def tick(units):
                nonlocal ticked
                units = max(0, min(units, due - ticked))  # within the batch, never past its share
                if units:
                    ticked += units
                    bar.update(units)

            try:
                out += fn(chunk, tick)
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if ticked:
                    bar.update(-ticked)  # the batch runs again (halved) or its item is given up
                if len(chunk) > 1:
                    size = max(1, len(chunk) // 2)
                    continue
                out.append(None)
                ticked = 0
            i += len(chunk)
            if due - ticked:
                bar.update(due - ticked)
            bar.set_postfix_str(f"{i}/{len(items)} ex")  # drawn now: the count is never a batch behind
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


def step_ticks(prompt_ids, tick):
    """A generation StoppingCriteria that stops nothing and reports each step's work to `tick`: the prompts'
    tokens after the first step (the prefill), one token per prompt after each later one."""
    import torch
    from transformers import StoppingCriteria

    class Ticks(StoppingCriteria):
        first = True

        def __call__(self, input_ids, scores, **kwargs):
            tick(sum(map(len, prompt_ids)) + len(prompt_ids) if self.first else len(prompt_ids))
            self.first = False
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return Ticks()


def generate(model, tok, prompt_ids, max_new_tokens, tick=None):
    """Greedy continuations of a batch of prompts (left padded): [(text of the new tokens, text of the prompt
    and new tokens decoded together)], special tokens left out; `tick(tokens)` hears of each step's work (the
    progress bar). Raises NonFinite on NaN or inf logits."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    ids, mask = left_pad(prompt_ids, tok.pad_token_id)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             generation_config=config, logits_processor=LogitsProcessorList([finite_logits()]),
                             stopping_criteria=StoppingCriteriaList([step_ticks(prompt_ids, tick)] if tick else []))
    new = out[:, ids.shape[1]:].tolist()
    return [(tok.decode(row, skip_special_tokens=True), tok.decode(prompt + row, skip_special_tokens=True))
            for prompt, row in zip(prompt_ids, new)]


def generate_task(model, tok, task, prompt_ids, options, args):
    """[(raw generation, prediction, the original's slice)] per example; None for an example that ran out of
    memory even alone. The prediction is the label the answer starts with (prompts.match_label), or the answer
    itself for an open-answer task. Raises NonFinite on NaN or inf logits."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))  # long first: OOM shows early
    # a batch holds prompts of like lengths (at least half its longest) and at most BATCH_TOKENS // longest of
    # them: one very long row runs alone, not with a batch of short ones padded to its length
    texts = batched(lambda chunk, tick: generate(model, tok, chunk, args.max_new_tokens, tick),
                    [prompt_ids[i] for i in order], args.batch_size, task.name,
                    limit=lambda first: max(1, BATCH_TOKENS // len(first)),
                    alike=lambda first, x: 2 * len(x) >= len(first), work=lambda x: len(x) + args.max_new_tokens)
    results = [None] * len(prompt_ids)
    for i, out in zip(order, texts):
        if out is not None:
            raw, full = out
            pred = prompts.extract_prediction(raw)
            label = prompts.match_label(pred, options) if options is not None else None
            results[i] = (raw, label or pred if options is not None else pred, full)
    return results
