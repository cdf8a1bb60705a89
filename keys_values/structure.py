"""A model's structure as the roles see it: its Linear / Conv1D modules and 3D expert parameters (Parts), the
decoder blocks that hold them, and peft's rule for matching a target name. Read on the meta device: names and
shapes, no weights."""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    path: str  # full module or parameter path
    rel: str  # relative to its decoder block, "" outside one
    layer: int  # the block's index, None outside one
    size: tuple  # (in features, out features) of one expert
    parameter: bool  # a 3D expert parameter (target_parameters), else a Linear / Conv1D module


def natural(path):
    """Sort key: digit runs compared as numbers (layers.2 before layers.10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def layer_of(path):
    """The decoder block of a module path: its first all-digit part ('model.layers.3.mlp.up_proj' -> 3), or None."""
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", path)
    return int(m[1]) if m else None


def parts(model):
    """Every Linear / Conv1D module and every 3D parameter (a fused experts' stack) of the model, lm_head left
    out, as Parts. Linear sizes come from in_features/out_features (a 4-bit layer's weight is packed);
    transformers' Conv1D stores its weight (in, out); a 3D parameter is (experts, out, in), or (experts, in,
    out) where its module says is_transposed (peft's reading)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    blocks = blocks_of(model)
    out = []
    for name, module in model.named_modules():
        rel, layer = relative(name, blocks)
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] != "lm_head":
            out.append(Part(name, rel, layer, (module.in_features, module.out_features), False))
        elif isinstance(module, Conv1D):
            out.append(Part(name, rel, layer, tuple(module.weight.shape), False))
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3:
                e, a, b = p.shape
                size = (a, b) if getattr(module, "is_transposed", False) else (b, a)
                prel, _ = relative(f"{name}.{pname}", blocks)
                out.append(Part(f"{name}.{pname}", prel, layer, size, True))
    return out


def blocks_of(model):
    """Path of the ModuleList holding the decoder blocks: the one with the most parameters."""
    import torch

    lists = [(sum(p.numel() for p in m.parameters()), n) for n, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m)]
    return max(lists)[1] if lists else None


def relative(path, blocks):
    """(path relative to its decoder block, block index) or ("", None) outside the blocks."""
    if blocks is None:
        return "", None
    m = re.fullmatch(re.escape(blocks) + r"\.(\d+)(?:\.(.+))?", path)
    return (m[2] or "", int(m[1])) if m else ("", None)


def matches(path, name):
    """peft's rule for a target name: the whole path, or its end after a dot."""
    return path == name or path.endswith("." + name)


def hidden_size(model):
    size = getattr(model.config, "hidden_size", None)
    return size or model.get_input_embeddings().embedding_dim
