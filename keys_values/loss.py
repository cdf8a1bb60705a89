"""The training loss with the output layer inside it: the model returns its final hidden states and the loss
applies the output layer only at the positions whose loss counts (a few per text with --loss_on completion), a
chunk of rows at a time, so that no full batch of logits is ever held (memory.LOSS_CHUNK rows at once).

    with OutputLayerInTheLoss(model) as loss:      # the head's forward is a pass-through inside the block
        Trainer(..., compute_loss_func=loss)

The layer stays in the model (only its forward becomes a pass-through), so that FSDP2 shards and gathers it
like any layer."""

import torch
from torch.distributed.tensor import DTensor

from keys_values.memory import LOSS_CHUNK
from utils import UserError


class NonFinite(Exception):
    """A NaN or inf in the training loss: the run stops there, keeping the checkpoints written so far."""


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of hidden @ weight.T against the targets, a chunk of rows at a time. The gradient of
    the hidden states is computed in the forward pass, chunk by chunk, and only it is kept for backward. Under
    autocast the products run in its dtype, as the output layer's own would."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        w = weight.to(dtype)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], LOSS_CHUNK):
            logp = torch.log_softmax((hidden[s:s + LOSS_CHUNK].to(dtype) @ w.t()).float(), dim=-1)
            t = targets[s:s + LOSS_CHUNK]
            total -= logp.gather(1, t[:, None]).sum()
            if grad is not None:
                p = logp.exp_()  # the softmax, in place
                p[torch.arange(len(t), device=t.device), t] -= 1
                grad[s:s + LOSS_CHUNK] = (p.to(dtype) @ w).to(grad.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None


def chunked_loss(hidden, weight, labels, num_items_in_batch=None):
    """The mean next-token cross-entropy of a batch whose final hidden states are `hidden` (batch, positions,
    d) under an output layer of `weight` (vocab, d), against `labels` (batch, positions; -100: not counted):
    position t predicts token t + 1. Divided by `num_items_in_batch` (the Trainer's count over the accumulated
    batches) when given, else by the counted tokens here. A batch with nothing counted has no loss (0 with a
    gradient of 0, never 0/0). Raises NonFinite on a NaN or inf loss."""
    hidden, targets = hidden[:, :-1], labels[:, 1:]
    keep = targets != -100
    if isinstance(weight, DTensor):  # a shard under FSDP2 (accelerate's wrapping usually hands the whole one)
        weight = weight.full_tensor()
    total = ChunkedCrossEntropy.apply(hidden[keep], weight, targets[keep])
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if not torch.isfinite(total):
        raise NonFinite(f"the training loss is {total.item()}")
    if count == 0:
        return total * 0.0
    return total / count


class OutputLayerInTheLoss:
    """Inside the block, a peft model's output layer passes its input through (the model's "logits" are its final
    hidden states) and the block's value is the loss for the Trainer's compute_loss_func; on leaving, the
    layer's own forward is back. A trained output layer or one with a bias is refused (one line)."""

    def __init__(self, model):
        self.head = model.get_base_model().get_output_embeddings()
        if self.head.weight.requires_grad or getattr(self.head, "bias", None) is not None:
            raise UserError("the output layer is trained or has a bias: the chunked loss does not support it")

    def __call__(self, outputs, labels, num_items_in_batch=None):
        return chunked_loss(outputs.logits, self.head.weight, labels, num_items_in_batch)

    def __enter__(self):
        self.head.forward = lambda hidden: hidden  # an instance attribute: the layer stays in the model
        return self

    def __exit__(self, *exc):
        del self.head.forward  # nn.Linear's own forward again
        return False
