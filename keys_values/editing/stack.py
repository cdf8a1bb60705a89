"""Probe sequences (a prompt, a space, a target) and the decoder seen from one layer: Stack runs the layers below
the edited one once per batch and keeps the edited layer's inputs; inside `from_layer` a forward computes only the
layers from it up. Any architecture whose decoder blocks are one ModuleList (structure.blocks_of)."""

from contextlib import contextmanager

import torch

from keys_values import structure
from utils import UserError

# ----------------------------------------------------------------------------------------------------
# Probe sequences: a prompt, a space, a target


def encode(tok, prompt, target):
    """(ids, first target position): the tokens of prompt + " " + target tokenised whole (the tokenizer's special
    tokens included) and where the target's tokens begin: after the longest prefix shared with the prompt's own
    tokens, leaving the target at least one token."""
    whole = tok(f"{prompt} {target}")["input_ids"]
    alone = tok(prompt)["input_ids"]
    n = 0
    while n < min(len(alone), len(whole) - 1) and alone[n] == whole[n]:
        n += 1
    return list(whole), n


def right_pad(seqs, pad_id):
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


def score_rows(logits_rows, spans):
    """Per sequence: {"nll", "correct", "argmax"} of its target tokens, from `logits_rows` (one row of logits per
    predicted target token, in order) and `spans` [(sequence ids, first target position)]."""
    out, k = [], 0
    logp = torch.log_softmax(logits_rows.float(), dim=-1)
    for seq, start in spans:
        targets = seq[start:]
        rows = logp[k:k + len(targets)]
        k += len(targets)
        t = torch.tensor(targets, device=rows.device)
        nll = -rows.gather(1, t[:, None])[:, 0]
        arg = rows.argmax(-1)
        out.append({"nll": nll.mean().item(), "correct": (arg == t).float().tolist(), "argmax": arg.tolist()})
    return out


def positions(spans):
    """(row, position) of every predicted target token: position j predicts token j + 1."""
    return [(b, j - 1) for b, (seq, start) in enumerate(spans) for j in range(start, len(seq))]


# ----------------------------------------------------------------------------------------------------
# The decoder from one layer up


class Stack:
    """The model's decoder seen from one layer: `capture` runs the whole decoder on a batch and keeps the input of
    layer `start`; inside `from_layer(kept)` the layers below `start` pass their input through and layer `start`
    takes the kept input instead, so a forward computes layers start.. only. Any architecture whose decoder blocks
    are one ModuleList (structure.blocks_of)."""

    def __init__(self, model, start):
        self.model, self.start = model, start
        path = structure.blocks_of(model)
        if path is None:
            raise UserError("the model has no list of decoder layers to edit one of")
        self.blocks = model.get_submodule(path)
        if not 0 <= start < len(self.blocks):
            raise UserError(f"--layers {start}: the model has layers 0 to {len(self.blocks) - 1}")
        self.decoder = model.get_decoder()
        self.returns_tuple = None

    def hidden(self, ids, mask):
        return self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    def capture(self, ids, mask):
        """(the decoder's last hidden states, the input of layer `start`) of this batch: one forward of the whole
        decoder, without gradients."""
        kept = {}

        def pre(module, args, kwargs):
            kept["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

        def post(module, args, output):
            self.returns_tuple = isinstance(output, tuple)

        hooks = [self.blocks[self.start].register_forward_pre_hook(pre, with_kwargs=True),
                 self.blocks[self.start].register_forward_hook(post)]
        try:
            with torch.no_grad():
                hidden = self.hidden(ids, mask)
        finally:
            for h in hooks:
                h.remove()
        return hidden, kept["h"]

    @contextmanager
    def from_layer(self, kept):
        """Forwards inside the block compute the layers from `start` up, on `kept` (capture's second output)."""
        skip = _Skip(self.returns_tuple)
        lower = [self.blocks[i] for i in range(self.start)]
        for i in range(self.start):
            self.blocks[i] = skip

        def swap(module, args, kwargs):
            if args:
                return (kept, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kept}

        hook = self.blocks[self.start].register_forward_pre_hook(swap, with_kwargs=True)
        try:
            yield
        finally:
            hook.remove()
            for i, block in enumerate(lower):
                self.blocks[i] = block


class _Skip(torch.nn.Module):
    """A decoder layer that passes its input through, in the shape the real layers return."""

    def __init__(self, as_tuple):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states
