"""Peak memory of one LoRA training run per device, estimated from the model's config alone (no weights).

The terms, in bytes:
  weights                 the base model: 4-bit nf4 linear layers (0.5 byte a weight + double-quantised
                          scales) with every other weight in fp32 (as peft's prepare_model_for_kbit_training
                          leaves them), or every weight in the dtype it is loaded in; under FSDP 1/N of it, plus
                          what FSDP gathers whole (one decoder layer, the embeddings and output layer)
  adapter_and_optimizer   LoRA's trainable weights in fp32: weight, gradient and AdamW's two moments (16 bytes)
  activations             what autograd keeps from the forward pass for the backward pass (below)
  backward                one layer's activations again: the layer recomputed under checkpointing, and a
                          layer's gradients while the backward pass runs through it
  logits                  the output layer and loss, computed in chunks of rows (the training script's loss
                          never holds a full batch of logits): one chunk's fp32 logits and probabilities, and
                          the gradient of the counted positions' hidden states
  runtime                 on a GPU, the CUDA context, kernels' workspaces and the allocator's slack: 1 GiB

Saved activations of one decoder layer, per token (d: hidden size, f: MLP width, d_kv: key/value width,
h: heads, r: LoRA rank), for a Llama-architecture layer (RMSNorm, rotary attention with SDPA, SwiGLU MLP):
  each of the two RMSNorms    its fp32 input (4d bytes) and the inverse root mean square (4)
  attention (SDPA)            q, k, v and the output (2d + 2 d_kv values) and the fp32 log-sum-exp (4h)
  MLP                         gate output, its SiLU and the up output (3f values)
  each LoRA-adapted module    with input width i: the dropout mask (i: 1 byte on a GPU, a value on a CPU),
                              the dropped input (i) and the rank-r projection (r)
Under bf16 autocast over an fp32 base (training without --bnb, as the original), autograd also keeps the bf16
copy autocast makes of each weight a layer multiplies by (2 bytes a weight, per layer, not per token).
With checkpointing a layer keeps only its input (d values at the residual stream's width) and the rest is
the `backward` term. A "value" is 4 bytes in fp32, 2 in bf16; in a 4-bit run under bf16 autocast (a GPU) the
residual stream, the linear layers' outputs and the MLP stay fp32 (bitsandbytes casts back to the input's
dtype) while what autocast feeds to matrix products (attention, LoRA) is bf16. tests/test_memory.py checks
the activation term against autograd's saved tensors, counted with saved_tensors_hooks.
"""

import math

GIB = 2**30
LLAMA2_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
              "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
              "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
              "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}  # Llama-2-70B, by hand
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
             "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}  # the paper's model, by hand
RUNTIME_CUDA = GIB
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values, 8-bit scale per 64, fp32 scale per 256 blocks
LOSS_CHUNK = 1024  # rows of the output layer computed at once by the training script's loss


def value_bytes(prec, cuda):
    """(act, mm, mask, residual): bytes of an ordinary activation value, of a value autocast feeds to a matrix
    product, of a dropout-mask element, and of the residual stream's values."""
    if prec.bnb and prec.autocast:
        return 4, 2, 1 if cuda else 4, 4
    if prec.autocast and getattr(prec, "weights", prec.dtype) == "fp32":  # fp32 base under bf16 autocast: the
        return 2, 2, 1 if cuda else 2, 4  # linear layers' outputs are bf16, the residual stream stays fp32
    size = 2 if prec.dtype in ("bf16", "fp16") and not prec.bnb else 4
    return size, size, 1 if cuda else size, size


def shapes(config, ffn_width=None):
    """The widths the estimate needs, from the config; the feed-forward's width from the model's structure
    (`ffn_width`, model_widths) where the config does not call it intermediate_size (GPT-2's n_inner, OPT's
    ffn_dim, Falcon's ffn_hidden_size...)."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    f = ffn_width or getattr(config, "intermediate_size", None) or 4 * d
    return {"d": d, "f": f, "d_kv": kv * head_dim, "d_attn": heads * head_dim, "h": heads,
            "layers": config.num_hidden_layers, "vocab": config.vocab_size}


def model_widths(model, adapted_paths):
    """(feed-forward width, [input width of each module adapted in one decoder layer], products the MLP keeps
    per token in units of its width) of a (meta-device) model, read from its structure and its roles (roles.py's
    table or derivation): the same for every architecture, not Llama's names. `adapted_paths` are the full paths
    LoRA adapts (roles.Targets.paths' first items)."""
    from keys_values import roles, structure

    all_parts = structure.parts(model)
    kinds, _ = roles.kinds_of(model, all_parts)
    values = [p for p in all_parts if kinds.get(p.rel) == "values"]
    ffn = values[0].size[0] if values else None
    gated = any(k in ("keys_up", "keys_gate", "keys_gate_up", "keys_gated") for k in kinds.values())
    size = {p.path: p.size[0] for p in all_parts}
    layers = [structure.layer_of(path) for path in adapted_paths if structure.layer_of(path) is not None]
    first = min(layers) if layers else None
    inputs = [size[path] for path in adapted_paths if path in size and structure.layer_of(path) == first]
    return ffn, inputs, 3 if gated else 2


LLAMA_INPUTS = {"q_proj": "d", "k_proj": "d", "v_proj": "d", "o_proj": "d_attn", "gate_proj": "d", "up_proj": "d",
                "down_proj": "f"}


def lora_inputs(s, targets):
    """The input width of each adapted module of a layer: `targets` is a list of widths (model_widths, any
    architecture), or of Llama module names (for a config alone)."""
    return [t if isinstance(t, int) else s[LLAMA_INPUTS[t]] for t in targets if isinstance(t, int) or t in LLAMA_INPUTS]


def layer_activation_bytes(s, targets, r, dropout, prec, cuda, mlp_products=3):
    """Bytes autograd saves per token for one decoder layer (whose input needs a gradient); `mlp_products` is 3
    for a gated feed-forward (gate, its activation, up), 2 for an ungated one (first layer, its activation)."""
    act, mm, mask, _ = value_bytes(prec, cuda)
    norms = 2 * (4 * s["d"] + 4)
    attention = (s["d_attn"] * 2 + s["d_kv"] * 2) * mm + 4 * s["h"]
    mlp = mlp_products * s["f"] * act
    lora = sum((mask * i if dropout > 0 else 0) + mm * i + mm * r for i in lora_inputs(s, targets))
    return norms + attention + mlp + lora


def estimate(config, targets, lora_r, dropout, prec, cuda, batch, seq, gradient_checkpointing, counted_fraction,
             trainable, weights, shards=1, ffn_width=None, mlp_products=3):
    """The estimate's terms in bytes (see the module's docstring), and their total: the peak on one device.
    `weights` is (linear weights in the decoder layers, every other weight) and `counted_fraction` the share of
    positions whose loss is counted (1 for --loss_on all). `shards` > 1: FSDP over that many processes, each
    holding 1/shards of the weights, adapter and optimizer state, plus what FSDP gathers whole: one decoder
    layer at a time, and the embeddings, final norm and output layer (kept gathered after their forward).
    `targets`, `ffn_width`, `mlp_products`: as model_widths gives them (Llama's module names do for a config
    alone)."""
    s = shapes(config, ffn_width)
    act, mm, _, residual = value_bytes(prec, cuda)
    tokens = batch * seq
    linear, other = weights
    layer = layer_activation_bytes(s, targets, lora_r, dropout, prec, cuda, mlp_products) * tokens
    if prec.autocast and not prec.bnb and getattr(prec, "weights", prec.dtype) == "fp32":
        layer += linear / s["layers"] * mm  # autocast's bf16 copy of each fp32 weight, kept for the backward pass
    outside = (4 * s["d"] + 4) * tokens  # the final norm's saved input
    if gradient_checkpointing:
        activations = s["layers"] * s["d"] * residual * tokens + outside
    else:
        activations = s["layers"] * layer + outside
    if prec.bnb:
        weight_bytes = linear * NF4_BYTES_PER_WEIGHT + other * 4
    else:
        weight_bytes = (linear + other) * (2 if getattr(prec, "weights", prec.dtype) in ("bf16", "fp16") else 4)
    counted = max(1, math.ceil(counted_fraction * tokens))
    chunk = min(counted, LOSS_CHUNK)
    logits = chunk * s["vocab"] * (4 + 4 + mm) + 2 * counted * s["d"] * act
    if prec.autocast:
        logits += s["vocab"] * s["d"] * mm  # the output layer's weight cast once for the loss
    adapter = 16 * trainable
    if shards > 1:
        per_linear = NF4_BYTES_PER_WEIGHT if prec.bnb else weight_bytes / max(1, linear + other)
        per_other = 4 if prec.bnb else per_linear
        gathered = linear / s["layers"] * per_linear + other * per_other
        weight_bytes = weight_bytes / shards + gathered
        adapter = adapter / shards
    terms = {"weights": int(weight_bytes), "adapter_and_optimizer": int(adapter), "activations": int(activations),
             "backward": int(layer), "logits": int(logits), "runtime": RUNTIME_CUDA if cuda else 0}
    terms["total"] = sum(terms.values())
    return terms


def weight_counts(model):
    """(linear weights inside the decoder layers, every other weight) of a (meta-device) model: the first are
    what --bnb stores in 4 bits; tied weights count once."""
    import torch

    seen, linear, other = set(), 0, 0
    layers = {id(p) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in name
              for p in m.parameters(recurse=False) if p.dim() == 2}
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in layers:
            linear += p.numel()
        else:
            other += p.numel()
    return linear, other


def fits(total, gib):
    return total <= gib * GIB
