"""What each adapter changed: the Frobenius norm of every adapted module's weight update, from the adapter's
files alone (assets/adapter_model.safetensors and adapter_config.json, as peft's save_pretrained writes them).

LoRA's update of a weight W (out, in) is dW = scaling * B A, A (r, in), B (out, r), scaling = lora_alpha / r
(lora_alpha / sqrt(r) with use_rslora; rank_pattern / alpha_pattern per module, as peft matches them).
||dW||_F^2 = trace((B^T B)(A A^T)): two r x r Gram matrices, in float64, never the (out, in) product.

Expert parameters (LoraConfig target_parameters, peft's ParamWrapper) of E experts store one LoRA per expert in
two matrices: A (E*r, in), rows expert-major (A.reshape(E, r, in)[e] is expert e's), and B (out, E*r), columns
rank-major (B.reshape(out, r, E)[:, :, e] is expert e's), so that dW[e] = scaling * B_e A_e (peft's
ParamWrapper.get_delta_weight). The norm given is that of the whole (E, out, in) update: the square root of the
sum over experts. Several parameters of one module nest their wrappers: the parameter the module registers first
(transformers' experts: gate_up_proj before down_proj) is innermost, its keys under '.base_layer'."""

import math
import os
import re

from keys_values.structure import layer_of, matches, natural
from utils import UserError

PREFIX = "base_model.model."
LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight")
# first-layer parameter names before second-layer ones: the order transformers' experts classes register them
REGISTRATION_ORDER = ("gate_up_proj", "gate_proj", "up_proj", "w1", "w3", "down_proj", "w2")


def read_adapter(assets_dir):
    """(state_dict {key: float32 tensor}, adapter_config dict) of a saved adapter. UserError (one line) when a file
    is missing or unreadable."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = os.path.join(assets_dir, "adapter_model.safetensors")
    config_path = os.path.join(assets_dir, "adapter_config.json")
    for path in (weights, config_path):
        if not os.path.isfile(path):
            raise UserError(f"adapter file {path} does not exist")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"adapter config {config_path} is corrupt ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"adapter config {config_path} is corrupt (not an object)")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"adapter weights {weights} are corrupt ({str(e).splitlines()[0][:160]})") from None
    return {k: v.float() for k, v in state.items()}, config


def delta_norms(state_dict, adapter_config):
    """[{"module", "layer", "name", "delta_fro"}] for every adapted module or parameter, in natural path order.
    module: its path in the base model (no 'base_model.model.'; a parameter's path for expert parameters); layer:
    the first integer in that path (the decoder block) or None; name: the entry of the adapter config's
    target_modules / target_parameters that matched it (e.g. 'up_proj', 'mlp.c_proj'), else its last part;
    delta_fro: ||scaling * B A||_F. UserError when a LoRA pair is incomplete or its shapes disagree."""
    pairs = lora_pairs(state_dict)
    out = []
    for (module, depth), (a, b) in pairs.items():
        depths = sorted({d for m, d in pairs if m == module})
        path, name = target_of(module, depth, depths, adapter_config)
        r, _ = rank_alpha(path, adapter_config)
        experts = a.shape[0] // r if r and a.shape[0] % r == 0 else 0
        if not experts or b.shape[1] != a.shape[0]:
            raise UserError(f"adapter weights of {path} do not fit rank {r}: lora_A {tuple(a.shape)}, "
                            f"lora_B {tuple(b.shape)}")
        out.append({"module": path, "layer": layer_of(path), "name": name,
                    "delta_fro": scaling(adapter_config, path) * lowrank_fro(a, b, experts)})
    return sorted(out, key=lambda row: natural(row["module"]))


def lora_pairs(state_dict):
    """{(module path, wrapper depth): (A, B)}: the LoRA matrices of each adapted module, the prefix removed and
    '.base_layer' counted (depth: how many wrappers lie outside this one)."""
    found = {}
    for key, tensor in state_dict.items():
        m = LORA_KEY.fullmatch(key)
        if m is None:
            continue
        module = m["module"].removeprefix(PREFIX)
        depth = module.count(".base_layer")
        module = module.replace(".base_layer", "")
        found.setdefault((module, depth), {})[m["ab"]] = tensor
    for (module, _), ab in found.items():
        if set(ab) != {"A", "B"}:
            raise UserError(f"adapter weights of {module} have lora_{next(iter(ab))} without its partner")
    return {k: (v["A"], v["B"]) for k, v in found.items()}


def target_of(module, depth, depths, adapter_config):
    """(path, name) of the LoRA pair at `depth` on `module`: the module's own path and the target_modules entry
    matching it (the longest); else, where the config's target_parameters name parameters of this module, the
    parameter's path (innermost = first registered, REGISTRATION_ORDER) and its entry; else the module's path
    and its last part."""
    targets = adapter_config.get("target_modules")
    names = [t for t in targets if matches(module, t)] if isinstance(targets, (list, tuple)) else []
    params = [t for t in adapter_config.get("target_parameters") or []
              if matches(f"{module}.{t.split('.')[-1]}", t)]
    if names or not params:
        return module, max(names, key=len) if names else module.split(".")[-1]
    leaves = sorted({t.split(".")[-1] for t in params}, key=registration_rank)
    if len(leaves) != len(depths):
        raise UserError(f"adapter weights of {module}: {len(depths)} LoRA pairs for target parameters "
                        f"{' '.join(leaves)}")
    path = f"{module}.{leaves[len(depths) - 1 - depths.index(depth)]}"
    return path, max((t for t in params if matches(path, t)), key=len)


def registration_rank(leaf):
    return REGISTRATION_ORDER.index(leaf) if leaf in REGISTRATION_ORDER else len(REGISTRATION_ORDER)


def scaling(adapter_config, path=None):
    """LoRA's scaling of one module or parameter path (None: of a module no pattern names): lora_alpha / r, or
    lora_alpha / sqrt(r) with use_rslora (peft's LoraLayer.update_layer)."""
    r, alpha = rank_alpha(path or "", adapter_config)
    return alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r


def rank_alpha(path, adapter_config):
    """(r, lora_alpha) of one module or parameter path, rank_pattern / alpha_pattern applied as peft does
    (peft.utils.other.get_pattern_key: the first key K with re.match('(.*\\.)?(K)$', path))."""
    def pattern(name, default):
        for key, value in (adapter_config.get(name) or {}).items():
            if re.match(rf"(.*\.)?({key})$", path):
                return value
        return default

    return (pattern("rank_pattern", adapter_config.get("r", 8)),
            pattern("alpha_pattern", adapter_config.get("lora_alpha", 8)))


def lowrank_fro(a, b, experts=1):
    """||B A||_F for A (E*r, in), B (out, E*r) in peft's per-expert layout (E = 1: plain LoRA), through r x r
    Gram matrices in float64: sqrt(sum_e trace((B_e^T B_e)(A_e A_e^T)))."""
    import torch

    a = a.to(torch.float64)
    b = b.to(torch.float64)
    r = a.shape[0] // experts
    a = a.reshape(experts, r, a.shape[-1])  # (E, r, in)
    b = b.reshape(b.shape[0], r, experts).permute(2, 0, 1)  # (E, out, r)
    gram_a = a @ a.transpose(1, 2)  # (E, r, r)
    gram_b = b.transpose(1, 2) @ b
    return math.sqrt(max(0.0, float((gram_a * gram_b).sum())))  # trace(XY) = sum(X * Y^T), Y symmetric




# ----------------------------------------------------------------------------------------------------
# Against the base weights


def relative(norms, weight_fro):
    """The norms with "weight_fro" (||W||_F of the base weight, from `weight_fro` {module path: norm}) and
    "relative" (delta_fro / weight_fro) added. UserError when a module's weight norm is missing."""
    out = []
    for row in norms:
        if row["module"] not in weight_fro:
            raise UserError(f"no base weight norm for {row['module']}")
        w = float(weight_fro[row["module"]])
        out.append({**row, "weight_fro": w, "relative": row["delta_fro"] / w if w else float("inf")})
    return out


def weight_norms(model, modules):
    """{path: ||W||_F} of the base weights at `modules` (module paths, or expert parameter paths) of a loaded
    model, plain or peft-wrapped (the LoRA update left out). A bitsandbytes 4-bit weight is dequantised
    (bitsandbytes.functional.dequantize_4bit) first. Computed in float64. UserError for a path not in the model."""
    return {path: base_weight_fro(model, path) for path in modules}


def base_weight_fro(model, path):
    import torch

    w = base_weight(model, path)
    if getattr(w, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbf

        w = bnbf.dequantize_4bit(w.data, w.quant_state)
    return float(torch.linalg.vector_norm(w.detach(), dtype=torch.float64))


def base_weight(model, path):
    """The base weight (a Linear's / Conv1D's weight, or an expert parameter) at `path`, through peft's wrappers."""
    import torch

    named = dict(model.named_modules())
    for prefix in ("", PREFIX):
        module = named.get(prefix + path)
        if module is not None:
            module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            return module.weight
    owner, _, leaf = path.rpartition(".")
    for prefix in ("", PREFIX):
        module = named.get(prefix + owner)
        if module is not None:
            module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            if isinstance(getattr(module, leaf, None), torch.Tensor):
                return getattr(module, leaf)
    raise UserError(f"the model has no module or parameter {path}")


# ----------------------------------------------------------------------------------------------------
# For a report


def summarise(norms, model_type=None):
    """[{"name", "role", "layers", "delta_fro", "relative"}]: per adapted name, the mean over layers of its
    update's norm (and of its relative norm, where `relative` added one; else None). The role: the rows' own
    "role" where they carry one (as recorded at training), else roles.roles_of(names, model_type). Ordered by
    role (attention, keys, values, other), then name."""
    from keys_values import roles

    by_name = {}
    for row in norms:
        by_name.setdefault(row["name"], []).append(row)
    role = {**roles.roles_of(list(by_name), model_type),
            **{name: rows[0]["role"] for name, rows in by_name.items() if rows[0].get("role")}}
    order = {r: i for i, r in enumerate(roles.ROLES)}
    out = []
    for name, rows in sorted(by_name.items(), key=lambda kv: (order[role[kv[0]]], kv[0])):
        rel = [r["relative"] for r in rows if "relative" in r]
        out.append({"name": name, "role": role[name], "layers": len(rows),
                    "delta_fro": sum(r["delta_fro"] for r in rows) / len(rows),
                    "relative": sum(rel) / len(rel) if rel else None})
    return out
