"""Tiny random models of every architecture roles.TABLE knows, built from each one's real config class: the
real module names and code paths in a few MB. Hidden size 32, feed-forward width 56 (Qwen's experts 24, Qwen2-
MoE's shared expert 40), 4 heads of 8, the embedded model's tokenizer and vocabulary (49,152 tokens), tied
embeddings: about 6.5 MB in fp32. The mixture-of-experts models have 4 experts (2 per token); Qwen's have their last layer
dense (mlp_only_layers), so both kinds of block are there."""

import functools
import os

from conftest import MODEL

HIDDEN, WIDTH, HEADS = 32, 56, 4
MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 24}
# each architecture's own names for the shape
SHAPES = {
    "gpt2": {"n_embd": HIDDEN, "n_inner": WIDTH, "n_head": HEADS},
    "gptj": {"n_embd": HIDDEN, "n_inner": WIDTH, "n_head": HEADS, "rotary_dim": 4},
    "opt": {"hidden_size": HIDDEN, "ffn_dim": WIDTH, "num_attention_heads": HEADS, "word_embed_proj_dim": HIDDEN},
    "falcon": {"hidden_size": HIDDEN, "ffn_hidden_size": WIDTH, "num_attention_heads": HEADS},
    "gpt_neox": {"hidden_size": HIDDEN, "intermediate_size": WIDTH, "num_attention_heads": HEADS},
    "mixtral": {"num_local_experts": 4, **MOE},
    "qwen2_moe": {"num_experts": 4, "shared_expert_intermediate_size": 40, **MOE},
    "qwen3_moe": {"num_experts": 4, **MOE},
}
DEFAULT_SHAPE = {"hidden_size": HIDDEN, "intermediate_size": WIDTH, "num_attention_heads": HEADS,
                 "num_key_value_heads": 2, "head_dim": HIDDEN // HEADS}
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo2", "phi3", "phi", "gpt2", "gptj",
               "gpt_neox", "opt", "falcon", "mixtral", "qwen2_moe", "qwen3_moe")


@functools.lru_cache(maxsize=1)
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL)


def tiny_config(model_type, layers=2, **overrides):
    """The real config class of `model_type` with a tiny shape and the embedded tokenizer's vocabulary and
    special tokens (eos = pad = 2, bos = 1 for SmolLM2's); `overrides` replace any of its settings."""
    from transformers import AutoConfig

    tok = tokenizer()
    shape = SHAPES.get(model_type, {})
    if model_type not in ("gpt2", "gptj", "opt", "falcon", "gpt_neox"):
        shape = {**DEFAULT_SHAPE, **shape}
    if model_type in ("qwen2_moe", "qwen3_moe"):
        shape["mlp_only_layers"] = [layers - 1] if layers > 1 else []
    settings = {"num_hidden_layers": layers, "vocab_size": len(tok), "max_position_embeddings": 2048,
                "tie_word_embeddings": True, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                "pad_token_id": tok.pad_token_id, **shape, **overrides}
    return AutoConfig.for_model(model_type, **settings)


def tiny_model(model_type, layers=2, seed=0, **overrides):
    """A random tiny model in fp32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, layers, **overrides), dtype=torch.float32)


def meta_model(model_type, layers=2, **overrides):
    """The tiny model's modules on the meta device: names and shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(tiny_config(model_type, layers, **overrides))


def tiny_model_folder(tmp_path, model_type, layers=2, seed=0):
    """A random tiny model saved (save_pretrained) with the embedded tokenizer to <tmp_path>/tiny-<model_type>;
    returns the folder's path."""
    folder = os.path.join(str(tmp_path), f"tiny-{model_type}")
    tiny_model(model_type, layers, seed).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder
