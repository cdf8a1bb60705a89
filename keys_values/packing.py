"""Tokenising and packing: a training text tokenised whole and packed into blocks as the original did (trl's
ConstantLengthDataset), the label's tokens marked for a loss on the answer, a prompt shortened in its long text
field to fit a budget (never the cue at its end), and the optimizer steps the Trainer will count."""

import math
import random

import prompts
from keys_values import config
from utils import UserError


class TooLong(Exception):
    """A prompt that does not fit its token budget even with the task's long field emptied; the message says
    which field is the problem (the longest other field, with its length in tokens)."""


def longest_token(tok):
    """The most characters one token of this tokenizer stands for (its longest vocabulary entry, read once)."""
    key = id(tok)
    if key not in _LONGEST:
        _LONGEST[key] = max((len(t) for t in tok.get_vocab()), default=1) or 1
    return _LONGEST[key]


_LONGEST = {}


def precut(text, budget, tok):
    """A text far longer than `budget` tokens cut at a space after budget x (the longest token's characters),
    twice over: its first `budget` tokens are those of the whole text, and a 2.8 MB row is not tokenised whole
    three times to keep a few hundred of its tokens."""
    limit = 2 * budget * longest_token(tok)
    if len(text) <= limit:
        return text
    space = text.rfind(" ", 0, limit)
    return text[:space] if space > limit // 2 else text[:limit]


def fit_prompt(tok, task, fields, budget):
    """(fields, ids): the inference prompt's fields and token ids, at most `budget` tokens: the task's long
    text field is shortened when needed, never the template's cue at the end. Raises TooLong, naming the
    field that makes the prompt too long, when it does not fit even with the long field emptied."""
    long = fields.get(task.long_field)
    if isinstance(long, str):
        fields = {**fields, task.long_field: precut(long, budget, tok)}
    ids = tok(prompts.prompt_text(task, fields))["input_ids"]
    if len(ids) <= budget:
        return fields, ids
    field_ids = tok(fields[task.long_field], add_special_tokens=False)["input_ids"]
    for _ in range(4):  # re-tokenising the cut text can move a boundary by a token or two
        over = len(ids) - budget
        keep = max(0, len(field_ids) - over - 2)
        field_ids = field_ids[:keep]
        fields = {**fields, task.long_field: tok.decode(field_ids)}
        ids = tok(prompts.prompt_text(task, fields))["input_ids"]
        if len(ids) <= budget:
            return fields, ids
        if not field_ids:
            break
    empty = len(tok(prompts.prompt_text(task, {**fields, task.long_field: ""}))["input_ids"])
    others = {k: len(tok(v, add_special_tokens=False)["input_ids"]) for k, v in fields.items() if k != task.long_field}
    template = len(tok(prompts.prompt_text(task, {k: "" for k in fields}))["input_ids"])
    if others and empty > budget and template <= budget:
        field, n = max(others.items(), key=lambda kv: kv[1])
        raise TooLong(f"its field '{field}' is {n} tokens: with '{task.long_field}' emptied the prompt is still {empty} "
                      f"tokens, over the budget of {budget}")
    raise TooLong(f"the template alone is {template} tokens, over the budget of {budget}")


def encode_texts(tok, texts, label_starts):
    """(ids, label mask) of each whole training text, as the original tokenised them: one tokenizer call per
    text (template and label together, the tokenizer's special tokens included), then EOS. The mask marks the
    tokens that cover the label's characters (from the tokenizer's character offsets) and the EOS."""
    enc = tok(texts, return_offsets_mapping=True)
    out = []
    for ids, offsets, start in zip(enc["input_ids"], enc["offset_mapping"], label_starts):
        mask = [int(end > start and end > s) for s, end in offsets]  # special tokens have (0, 0)
        out.append((list(ids) + [tok.eos_token_id], mask + [1]))
    return out


def pack(encoded, block_size, pad_id, loss_on="all", seed=config.DEFAULT_SEED, drop_last=True):
    """Shuffle the encoded (ids, label mask) texts with the seed, join them and cut the stream into blocks of
    exactly `block_size` tokens; a text longer than the rest of a block continues in the next one. The last,
    incomplete block is dropped (the original's packing, trl's ConstantLengthDataset) or, with
    drop_last=False, padded (attention 0, label -100). Labels: every token ('all', the original's loss) or
    only each text's label tokens and EOS ('completion')."""
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    ids, mask = [], []
    for i in order:
        ids += encoded[i][0]
        mask += encoded[i][1] if loss_on == "completion" else [1] * len(encoded[i][0])
    end = len(ids) - len(ids) % block_size if drop_last else len(ids)
    blocks = []
    for start in range(0, end, block_size):
        b_ids, b_mask = ids[start:start + block_size], mask[start:start + block_size]
        pad = block_size - len(b_ids)
        blocks.append({
            "input_ids": b_ids + [pad_id] * pad,
            "attention_mask": [1] * len(b_ids) + [0] * pad,
            "labels": [t if m else -100 for t, m in zip(b_ids, b_mask)] + [-100] * pad,
        })
    return blocks




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
                    fields, _ = fit_prompt(tokenizer, task, fields, max(8, room))
                except TooLong as why:
                    raise UserError(f"task {name} training row {i}: does not fit a block of --max_seq_length "
                                    f"{args.max_seq_length} even shortened: {why}") from None
            prompt = prompts.prompt_text(task, fields)
            texts.append(prompt + e.label)
            label_starts.append(len(prompt))
    encoded = encode_texts(tokenizer, texts, label_starts)
    blocks = pack(encoded, args.max_seq_length, tokenizer.pad_token_id, args.loss_on, args.seed,
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
    return steps_per_epoch(n_blocks, args, processes) * args.epochs


def steps_per_epoch(n_blocks, args, processes=1):
    """Optimizer steps of one epoch (what --epochs multiplies)."""
    batches = math.ceil(math.ceil(n_blocks / processes) / args.per_device_train_batch_size)
    return max(batches // args.gradient_accumulation_steps + int(batches % args.gradient_accumulation_steps > 0), 1)


def logging_interval(args, steps):
    """--logging_steps, or an interval that gives every run at least 20 logged points."""
    return args.logging_steps or max(1, steps // 20)
