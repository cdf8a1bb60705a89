"""The change of the chosen modules, one per edit of a batch (Delta: W0 + dW_b, or W0 + s B_b A_b for LoRA), and
Adam with one state per edit (BatchAdam): what lets several independent edits be optimised at once, each exactly as
it would be alone."""

import math

import torch
from transformers.pytorch_utils import Conv1D

ADAM = (0.9, 0.999, 1e-8)  # torch.optim.Adam's betas and eps


# ----------------------------------------------------------------------------------------------------
# The change of one chosen module, one per edit of a batch


class Delta(torch.nn.Module):
    """A chosen Linear (or transformers' Conv1D) module with a change per edit of a batch: the weight W0 + dW_b
    (ft), or W0 + scaling B_b A_b (lora, A_b r x in, B_b out x r). `rows` says which edit each batch row belongs to:
    None (no change: the unedited module), an int (every row edit b) or "each" (row b is edit b)."""

    def __init__(self, base, edits, lora_r=None, lora_alpha=None, generator=None):
        super().__init__()
        self.base = base
        self.conv = isinstance(base, Conv1D)
        w = base.weight
        self.d_in, self.d_out = (w.shape[0], w.shape[1]) if self.conv else (w.shape[1], w.shape[0])
        self.lora = lora_r is not None
        self.rows = None
        if self.lora:
            self.scaling = lora_alpha / lora_r
            self.A = torch.nn.Parameter(torch.zeros(edits, lora_r, self.d_in, dtype=w.dtype, device=w.device))
            self.B = torch.nn.Parameter(torch.zeros(edits, self.d_out, lora_r, dtype=w.dtype, device=w.device))
            self.generator = generator
        else:
            self.D = torch.nn.Parameter(torch.zeros(edits, self.d_out, self.d_in, dtype=w.dtype, device=w.device))

    @property
    def trained(self):
        return [self.A, self.B] if self.lora else [self.D]

    def reset(self, b=None):
        """Edit b's change (every edit's when None) back to none; LoRA's A drawn again (peft's kaiming uniform)."""
        with torch.no_grad():
            which = slice(None) if b is None else slice(b, b + 1)
            if self.lora:
                bound = 1 / math.sqrt(self.d_in)
                shape = self.A[which].shape
                self.A[which] = (torch.rand(shape, generator=self.generator) * 2 * bound - bound).to(self.A)
                self.B[which] = 0
            else:
                self.D[which] = 0

    def weight_change(self, b):
        """dW of edit b, (out, in)."""
        if self.lora:
            return self.scaling * self.B[b] @ self.A[b]
        return self.D[b]

    def base_weight(self):
        """W0 as (out, in)."""
        return self.base.weight.t() if self.conv else self.base.weight

    def fold(self, b=0):
        """Make edit b's change part of the module's own weight (--sequential), its change then none."""
        with torch.no_grad():
            dw = self.weight_change(b)
            self.base.weight += dw.t() if self.conv else dw
        self.reset(b)

    def forward(self, x):
        y = self.base(x)
        if self.rows is None:
            return y
        if self.rows == "each":  # row b of the batch is edit b (a batch of n rows: edits 0..n-1)
            n = x.shape[0]
            if self.lora:
                return y + self.scaling * torch.bmm(torch.bmm(x, self.A[:n].transpose(1, 2)), self.B[:n].transpose(1, 2))
            return y + torch.bmm(x, self.D[:n].transpose(1, 2))
        b = self.rows
        return y + x @ self.weight_change(b).t()


# ----------------------------------------------------------------------------------------------------
# Adam, one state per edit


class BatchAdam:
    """torch.optim.Adam's update (betas 0.9, 0.999, eps 1e-8, no weight decay), each edit of a batch (the first
    dimension of every tensor) with its own moments and step count, stepped only while it is active."""

    def __init__(self, tensors, lr, edits):
        self.lr = lr
        self.m = [torch.zeros_like(t) for t in tensors]
        self.v = [torch.zeros_like(t) for t in tensors]
        self.t = torch.zeros(edits)

    @torch.no_grad()
    def step(self, tensors, grads, active):
        """Step the edits whose `active` (a bool per edit) is set: `tensors` and their `grads`, each (edits, ...)."""
        b1, b2, eps = ADAM
        self.t += active.float()
        for p, g, m, v in zip(tensors, grads, self.m, self.v):
            for b in torch.nonzero(active).flatten().tolist():
                m[b].mul_(b1).add_(g[b], alpha=1 - b1)
                v[b].mul_(b2).addcmul_(g[b], g[b], value=1 - b2)
                t = self.t[b].item()
                denom = (v[b].sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                p[b].addcdiv_(m[b], denom, value=-self.lr / (1 - b1 ** t))
