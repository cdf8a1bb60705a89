"""Scoring by ranking: each label's likelihood (label + EOS after the prompt), every prompt run once with its
candidates packed after it, each candidate attending to the prompt and to itself only; the ranked tasks of an
evaluation batched together, longest first."""

import math

from keys_values.evaluation.generate import NonFinite, batched
from utils import UserError

RANK_MASK_BUDGET = 64 * 512 * 512  # rows x width^2 of one ranking batch (its attention mask and scores)


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
    items = [(name, i, shared, conts) for name, job in jobs.items() for i, (shared, conts) in enumerate(job["items"])]

    def width(item):  # its tokens in the packed row: the prompt once, then every candidate
        return len(item[2]) + sum(map(len, item[3]))

    items.sort(key=lambda x: -width(x))

    def run(chunk, tick):  # one forward pass: the bar moves when it ends
        return rank(model, [(s, c) for _, _, s, c in chunk], tok.pad_token_id)

    def limit(first):
        return max(1, RANK_MASK_BUDGET // (width(first) * width(first)))

    scores = batched(run, items, args.batch_size, "rank " + " ".join(jobs), limit, work=width)
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
