"""Edits of one layer: the fine-tuning baseline of the editing literature (ROME's and EasyEdit's FT: Adam on the
chosen weights, no step and the edit stopped once its loss is below a threshold, an optional L-infinity bound
around the weights before the edit) on one layer's keys or values, or a LoRA adapter on them.

How it is made fast, each step exact:
- An edit changes one layer, so the layers below compute the same before and after it: Stack runs them once per
  batch (the edited layer's inputs kept) and every step and every measurement after that runs the layers from the
  edited one up, the output layer only where a target token is predicted.
- Edits made from the unedited model are independent: several are optimised at once (`Editor.edit_batch`), each
  with its own change of the chosen weights (Delta: W0 + dW_b for the batch row of edit b; LoRA: W0 + s B_b A_b),
  its own loss, its own Adam state and step count, its own early stop and bound. A batch of one is one edit alone.
- `plain=True` is what the editing baselines do instead: the whole model forward and backward at every step, all
  the logits, every probe scored alone. The benchmark compares the two (metrics equal to 1e-4).
Weights that are 3D expert parameters (mixture-of-experts) are edited in place, one edit at a time, and copied back.

Objectives: "last" (FT-L, ROME's FT): the prompt's last position predicts each of the target's tokens, the loss the
mean of their NLLs there; "target" (FT-M, EasyEdit's FT): teacher forcing, the mean NLL of the target's tokens after
the prompt and the tokens before them."""

import math

import torch
from transformers.pytorch_utils import Conv1D

from keys_values.editing.delta import BatchAdam, Delta
from keys_values.editing.stack import Stack, encode, positions, right_pad, score_rows
from utils import UserError

# ----------------------------------------------------------------------------------------------------
# The edits of one arm in one layer


def head(model):
    return model.get_output_embeddings()


def rms(w):
    return w.detach().float().pow(2).mean().sqrt().item()


class Editor:
    """Edits `paths` (one layer's chosen modules, or 3D expert parameters) of `model` in layer `layer`, up to
    `batch` edits at once. `settings` is an EditingConfig (method, objective, steps, learning_rate,
    early_stop_loss, norm_constraint, lora_r, lora_alpha). `plain=True`: the editing baselines' way (see the
    module's docstring), for the benchmark. The model's own weights are never changed but by `fold` (sequential
    edits) or while a 3D expert parameter is edited in place; `check_restored` checks them bit for bit."""

    def __init__(self, model, tok, layer, paths, settings, plain=False, seed=0, batch=1):
        self.model, self.tok, self.layer, self.s, self.plain = model, tok, layer, settings, plain
        self.paths = list(paths)
        self.stack = Stack(model, layer)
        self.generator = torch.Generator().manual_seed(seed)
        self.in_place = {}  # path -> 3D parameter edited in place (one edit at a time)
        self.deltas = {}  # path -> Delta
        for path in self.paths:
            parent, _, leaf = path.rpartition(".")
            owner = model.get_submodule(parent)
            module = getattr(owner, leaf)
            if isinstance(module, torch.nn.Parameter):
                self.in_place[path] = module
            elif isinstance(module, (torch.nn.Linear, Conv1D)):
                self.deltas[path] = (owner, leaf)
            else:
                raise UserError(f"{path} is a {type(module).__name__}, neither a linear module nor a parameter")
        if self.in_place and settings.method == "lora":
            raise UserError(f"--method lora: {next(iter(self.in_place))} is an expert parameter, LoRA here edits "
                            "modules only: use --method ft")
        self.batch = 1 if self.in_place or plain else batch
        for p in model.parameters():
            p.requires_grad_(False)
        self.original = {k: v.detach().clone() for k, v in self.weights().items()}
        lora = settings.method == "lora"
        for path, (owner, leaf) in self.deltas.items():
            d = Delta(getattr(owner, leaf), self.batch, settings.lora_r if lora else None, settings.lora_alpha,
                      self.generator)
            setattr(owner, leaf, d)
            self.deltas[path] = (owner, leaf, d)
        self.bounds = {k: settings.norm_constraint * rms(w) for k, w in self.original.items()} \
            if settings.norm_constraint else {}
        self.reset()

    def weights(self):
        """{path: the model's own weight} of the chosen modules and parameters."""
        out = {p: d[2].base.weight if len(d) == 3 else getattr(d[0], d[1]).weight for p, d in self.deltas.items()}
        return {**out, **self.in_place}

    def trained(self):
        return [t for _, _, d in self.deltas.values() for t in d.trained] + list(self.in_place.values())

    @property
    def updated_parameters(self):
        """How many numbers one edit may change: the chosen weights' (ft) or one adapter's (lora)."""
        per = sum(t[0].numel() for _, _, d in self.deltas.values() for t in d.trained)
        return per + sum(p.numel() for p in self.in_place.values())

    def remove(self):
        """The model's modules back as they were (the Delta wrappers taken out); the model returned."""
        for path, (owner, leaf, d) in self.deltas.items():
            setattr(owner, leaf, d.base)
        self.check_restored()
        return self.model

    # -- states of the model

    def rows(self, value):
        for _, _, d in self.deltas.values():
            d.rows = value

    def reset(self):
        """Every edit's change back to none, expert parameters copied back: the unedited model, checked."""
        for _, _, d in self.deltas.values():
            d.reset()
        with torch.no_grad():
            for k, p in self.in_place.items():
                p.copy_(self.original[k])
        self.check_restored()

    def check_restored(self):
        """UserError unless every chosen weight is bit for bit its value before the edits."""
        for k, w in self.weights().items():
            if not torch.equal(w, self.original[k]):
                raise UserError(f"restoring the model failed: {k} differs from its value before the edits")

    def fold(self):
        """--sequential: edit 0's change made part of the weights, the next edit starting from them."""
        for _, _, d in self.deltas.values():
            d.fold(0)

    def restore(self):
        """--sequential's end: the weights as they were before the first edit (copied back, checked)."""
        with torch.no_grad():
            for k, w in self.weights().items():
                w.copy_(self.original[k])
        self.reset()

    def edited_weight(self, path, b=0):
        """Edit b's weight of a chosen module as the model computes with it: W0 + dW_b, (out, in)."""
        if path in self.in_place:
            return self.in_place[path].detach().clone()
        _, _, d = self.deltas[path]
        with torch.no_grad():
            return d.base_weight() + d.weight_change(b)

    # -- scores of probe sequences

    def encode(self, probe_list):
        return [encode(self.tok, p, t) for _, _, p, t, _ in probe_list]

    @torch.no_grad()
    def first_scores(self, spans):
        """(scores on the unedited model, the edited layer's inputs for these sequences, kept for the scores after
        an edit: the layers below never change)."""
        self.rows(None)
        if self.plain:
            return self._alone(spans), None
        ids, mask = right_pad([s for s, _ in spans], self.tok.pad_token_id)
        hidden, kept = self.stack.capture(ids.to(self._device()), mask.to(self._device()))
        return self._rows(hidden, spans), kept

    @torch.no_grad()
    def scores(self, spans, kept, b=0):
        """Scores after edit b of the batch: from the edited layer up on `kept`, or (plain) every sequence alone
        through the whole model."""
        self.rows(b)
        try:
            if self.plain:
                return self._alone(spans)
            ids, mask = right_pad([s for s, _ in spans], self.tok.pad_token_id)
            with self.stack.from_layer(kept):
                hidden = self.stack.hidden(ids.to(kept.device), mask.to(kept.device))
            return self._rows(hidden, spans)
        finally:
            self.rows(None)

    def _device(self):
        return next(self.model.parameters()).device

    def _alone(self, spans):
        out = []
        for seq, start in spans:
            logits = self.model(input_ids=torch.tensor([seq], device=self._device())).logits[0]
            out += score_rows(logits[start - 1:len(seq) - 1], [(seq, start)])
        return out

    def _rows(self, hidden, spans):
        at = positions(spans)
        rows = hidden[torch.tensor([b for b, _ in at]), torch.tensor([j for _, j in at])]
        return score_rows(head(self.model)(rows), spans)

    # -- the edits

    def training_batch(self, requests):
        """(spans, ids, mask): each request's training sequence for the objective, one row each: spans are (ids,
        first position whose prediction counts, target tokens)."""
        spans = []
        for r in requests:
            if self.s.objective == "last":
                prompt = list(self.tok(r.prompt)["input_ids"])
                spans.append((prompt, len(prompt), self.tok(f" {r.target_new}", add_special_tokens=False)["input_ids"]))
            else:
                seq, start = encode(self.tok, r.prompt, r.target_new)
                spans.append((seq, start, seq[start:]))
        ids, mask = right_pad([s for s, _, _ in spans], self.tok.pad_token_id)
        return spans, ids.to(self._device()), mask.to(self._device())

    def losses(self, spans, ids, mask, kept):
        """The loss of each request (a tensor, one per row), its edit's change in the model."""
        if self.plain:
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        else:
            with self.stack.from_layer(kept):
                hidden = self.stack.hidden(ids, mask)
        out = []
        for b, (seq, start, target) in enumerate(spans):
            # "last": the prompt's last position predicts every target token; "target": teacher forcing
            at = [start - 1] * len(target) if self.s.objective == "last" else list(range(start - 1, len(seq) - 1))
            rows = logits[b, at] if self.plain else head(self.model)(hidden[b, at])
            logp = torch.log_softmax(rows.float(), dim=-1)
            out.append(-logp.gather(1, torch.tensor(target, device=logp.device)[:, None]).mean())
        return torch.stack(out)

    def edit_batch(self, requests):
        """Make the edits of `requests` at once, each from the weights as they are (the unedited model, or the
        ones folded before with --sequential), edit b in row b: returns one {"steps", "losses", "stopped_early",
        "delta": {path: ||dW||_F / ||W||_F}} per request."""
        n = len(requests)
        if n > self.batch:
            raise ValueError(f"{n} edits at once, the Editor holds {self.batch}")
        spans, ids, mask = self.training_batch(requests)
        kept = None if self.plain else self.stack.capture(ids, mask)[1]
        trained = self.trained()
        originals = [p.detach().clone() for p in self.in_place.values()]
        for t in trained:
            t.requires_grad_(True)
        # each tensor Adam steps has a leading edit dimension: a 3D expert parameter is a batch of one edit
        alone = {id(p) for p in self.in_place.values()}
        views = [t.data[None] if id(t) in alone else t.data for t in trained]
        opt = BatchAdam(views, self.s.learning_rate, self.batch)
        active = torch.zeros(self.batch, dtype=torch.bool)
        active[:n] = True
        losses, steps = [[] for _ in range(n)], [0] * n
        self.rows("each")
        try:
            for _ in range(self.s.steps):
                for t in trained:
                    t.grad = None
                loss = self.losses(spans, ids, mask, kept)
                values = loss.detach().tolist()
                for b in range(n):
                    if active[b]:
                        if not math.isfinite(values[b]):
                            raise UserError(f"edit {requests[b].case_id}: the loss is {values[b]} (lower "
                                            "--learning_rate)")
                        losses[b].append(values[b])
                        if values[b] < self.s.early_stop_loss:
                            active[b] = False  # no step: this edit is done
                if not active.any():
                    break
                loss.sum().backward()  # each edit's change gets its own edit's gradient only
                grads = [t.grad[None] if id(t) in alone else t.grad for t in trained]
                opt.step(views, grads, active)
                for b in torch.nonzero(active).flatten().tolist():
                    steps[b] += 1
                self._clamp()
        finally:
            self.rows(None)
            for t in trained:
                t.requires_grad_(False)
                t.grad = None
        return [{"steps": steps[b], "losses": losses[b], "stopped_early": steps[b] < self.s.steps,
                 "delta": self._relative_change(b, originals)} for b in range(n)]

    def _clamp(self):
        if not self.bounds:
            return
        with torch.no_grad():
            for path, (_, _, d) in self.deltas.items():
                d.D.clamp_(-self.bounds[path], self.bounds[path])
            for path, p in self.in_place.items():
                p.copy_(torch.clamp(p, self.original[path] - self.bounds[path], self.original[path] + self.bounds[path]))

    def _relative_change(self, b, originals):
        """||dW||_F / ||W||_F of each chosen weight for edit b."""
        out = {}
        with torch.no_grad():
            for path, (_, _, d) in self.deltas.items():
                out[path] = (d.weight_change(b).float().norm() / d.base_weight().float().norm()).item()
            for (path, p), before in zip(self.in_place.items(), originals or []):
                out[path] = ((p - before).float().norm() / before.float().norm()).item()
        return out

    # -- fluency

    @torch.no_grad()
    def generate(self, prompts, b=None, tokens=50):
        """Greedy continuations of the prompts through the whole model (edit b's change in it when given)."""
        self.rows(b)
        out = []
        try:
            for p in prompts:
                ids = torch.tensor([self.tok(p)["input_ids"]], device=self._device())
                new = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                          do_sample=False, pad_token_id=self.tok.pad_token_id)[0, ids.shape[1]:]
                out.append(self.tok.decode(new, skip_special_tokens=True))
        finally:
            self.rows(None)
        return out
