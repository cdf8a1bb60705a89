"""Keys and values of any architecture: the one place that knows module names.

Geva et al. 2021 (arXiv 2012.14913) read a transformer feed-forward layer as key-value memories: its first layer
(hidden -> intermediate; up_proj and gate_proj where gated) holds the keys, its second (intermediate -> hidden)
the values. The study (Qiu et al., arXiv 2402.12233) adds LoRA to one of them on top of the attention's query
and value projections. Here a role word of --target_modules (ROLE_WORDS) becomes the module names of the
architecture at hand: from TABLE, keyed by config.model_type, or, for a model type not in it, from the model's
structure (layer shapes, found on the meta device). Plain module names keep working as peft reads them.

Roles of an adapted module or parameter: keys_up, keys_gate (the two halves of a gated first layer), keys (a
fused gate_up layer, or the single first layer of an ungated feed-forward), values, attention_q, attention_v,
attention_qv (a fused q,k,v layer) and other.

Mixture-of-experts models: transformers 5 stores the routed experts of Mixtral and Qwen2/3-MoE as two 3D
parameters of one module, mlp.experts.gate_up_proj (experts, 2 x width, hidden; gate half first) and
mlp.experts.down_proj (experts, hidden, width). peft (>= 0.17) adapts them through LoraConfig(target_parameters=
...), one rank-r LoRA per expert; it refuses lora_dropout > 0 there (resolve's `dropout` check). Shared
experts and dense layers stay nn.Linear and go through target_modules, except where peft rewrites their names
(peft_rewrites: qwen3_moe and the other model types transformers converts like qwen2_moe's checkpoints). The
experts' gate and up halves are one parameter, so keys_up / keys_gate are refused on these models."""

import re
from dataclasses import dataclass

from keys_values.structure import hidden_size, matches, natural, parts
from utils import UserError

ROLE_WORDS = ("keys", "keys_up", "keys_gate", "values", "attention_qv")
ROLES = ("attention_q", "attention_v", "attention_qv", "keys_up", "keys_gate", "keys", "values", "other")

# The table's kinds of part, finer than the public roles: a fused gate_up layer and a gated first layer whose
# gate and up halves cannot be told apart are both role "keys", but keys_up / keys_gate cannot adapt them.
KINDS = ("attention_q", "attention_v", "attention_qv", "keys_up", "keys_gate", "keys_gate_up", "keys_gated", "keys",
         "values", "other")
ROLE_OF_KIND = {"keys_gate_up": "keys", "keys_gated": "keys"}
WORD_KINDS = {
    "attention_qv": ("attention_q", "attention_v", "attention_qv"),
    "keys": ("keys_up", "keys_gate", "keys_gate_up", "keys_gated", "keys"),
    "keys_up": ("keys_up", "keys"),  # where not gated, the single first layer
    "keys_gate": ("keys_gate",),
    "values": ("values",),
}

_QV = {"self_attn.q_proj": "attention_q", "self_attn.v_proj": "attention_v"}
_GATED = {**_QV, "mlp.up_proj": "keys_up", "mlp.gate_proj": "keys_gate", "mlp.down_proj": "values"}
_EXPERTS = {"mlp.experts.gate_up_proj": "keys_gate_up", "mlp.experts.down_proj": "values"}  # 3D parameters

# model_type -> {path relative to a decoder block: kind}, checked against transformers 5.23's modules on the
# meta device (tests/test_roles.py). Paths are peft target suffixes. Parameters (not modules): mlp.experts.*.
TABLE = {
    **{t: _GATED for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo2")},
    "phi3": {"self_attn.qkv_proj": "attention_qv", "mlp.gate_up_proj": "keys_gate_up", "mlp.down_proj": "values"},
    "phi": {**_QV, "mlp.fc1": "keys", "mlp.fc2": "values"},
    # transformers' Conv1D (weight (in, out)); attn.c_proj, the attention's output, shares the values' name
    "gpt2": {"attn.c_attn": "attention_qv", "mlp.c_fc": "keys", "mlp.c_proj": "values", "attn.c_proj": "other"},
    "gptj": {"attn.q_proj": "attention_q", "attn.v_proj": "attention_v", "mlp.fc_in": "keys", "mlp.fc_out": "values"},
    "gpt_neox": {"attention.query_key_value": "attention_qv", "mlp.dense_h_to_4h": "keys",
                 "mlp.dense_4h_to_h": "values"},
    "opt": {**_QV, "fc1": "keys", "fc2": "values"},  # the feed-forward sits directly in the decoder layer
    "falcon": {"self_attention.query_key_value": "attention_qv", "mlp.dense_h_to_4h": "keys",
               "mlp.dense_4h_to_h": "values"},
    "mixtral": {**_QV, **_EXPERTS},
    # the shared expert, and the dense blocks of mlp_only_layers, are plain gated feed-forwards
    "qwen2_moe": {**_QV, **_EXPERTS, "mlp.shared_expert.up_proj": "keys_up", "mlp.shared_expert.gate_proj": "keys_gate",
                  "mlp.shared_expert.down_proj": "values", "mlp.up_proj": "keys_up", "mlp.gate_proj": "keys_gate",
                  "mlp.down_proj": "values"},
    "qwen3_moe": {**_QV, **_EXPERTS, "mlp.up_proj": "keys_up", "mlp.gate_proj": "keys_gate", "mlp.down_proj": "values"},
}

ARCHITECTURES = tuple(TABLE)  # the model types whose roles are known without looking at the structure

# names the structural derivation reads as attention
Q_NAMES, V_NAMES = {"q_proj", "query", "q", "wq"}, {"v_proj", "value", "v", "wv"}
QKV_NAMES = {"qkv_proj", "c_attn", "query_key_value", "qkv", "wqkv", "w_pack"}
ATTENTION_PART = re.compile(r"attn|attention", re.I)
MIXER_PART = re.compile(r"mamba|mixer|ssm", re.I)  # a state-space layer's projections are not a feed-forward
ATTENTION_LEAVES = Q_NAMES | V_NAMES | QKV_NAMES | {"k_proj", "o_proj", "key", "k", "wk", "wo"}
SHORT_ROLE = {"keys_up": "keys", "keys_gate": "keys", "keys": "keys", "values": "values"}


@dataclass(frozen=True)
class Targets:
    """What a --target_modules list adapts on one model.
    target_modules: LoraConfig(target_modules=...): peft names (suffixes), or None for peft's default.
    target_parameters: LoraConfig(target_parameters=...): 3D expert parameters, [] when none.
    roles: {name as given to peft: role}. paths: [(full module or parameter path, role)] that will be adapted,
    in natural order (layer 2 before layer 10). derivation: how the roles were found where TABLE lacks the
    model type, and what a fused q,k,v layer adapts (one line), else None."""
    target_modules: list
    target_parameters: list
    roles: dict
    paths: list
    derivation: str = None


# ----------------------------------------------------------------------------------------------------
# Which part plays which role: the table, or the structure


def kinds_of(model, all_parts=None):
    """({relative path: kind} of the model's role parts, derivation text or None): TABLE's entries present in
    the model, or, for a model type not in TABLE, what derive() finds."""
    all_parts = parts(model) if all_parts is None else all_parts
    model_type = getattr(model.config, "model_type", None)
    if model_type in TABLE:
        present = {p.rel for p in all_parts}
        return {rel: kind for rel, kind in TABLE[model_type].items() if rel in present}, None
    kinds, text = derive(all_parts, hidden_size(model))
    return kinds, f"roles of model_type {model_type!r} derived from its structure: {text}"


def is_attention(rel):
    """Whether a block-relative path is part of the attention: under a module named *attn* / *attention*, or
    named like a projection of one."""
    *parents, leaf = rel.split(".")
    return any(ATTENTION_PART.search(p) for p in parents) or leaf.lower() in ATTENTION_LEAVES


def derive(all_parts, d):
    """({relative path: kind}, text) from layer shapes in the decoder blocks, d the hidden size. Attention by
    name: q_proj/query -> attention_q, v_proj/value -> attention_v, c_attn/qkv_proj/query_key_value ->
    attention_qv. Elsewhere: a layer d -> f (f != d) is a key when a layer of its block goes f -> d (a value);
    d -> 2f with an f -> d partner is a fused gate_up. Two keys of one parent and width are a gated pair: 'gate'
    in the name -> keys_gate, the other keys_up; names that do not tell them apart -> keys_gated."""
    kinds = {}
    for layer in sorted({p.layer for p in all_parts if p.layer is not None}):
        block = [p for p in all_parts if p.layer == layer and p.rel]
        for rel, kind in block_kinds(block, d).items():
            kinds.setdefault(rel, kind)
    shown = {p.rel: f" ({p.size[0]} -> {p.size[1]}{' per expert' if p.parameter else ''})" for p in all_parts}
    text = ", ".join(f"{ROLE_OF_KIND.get(kind, kind)} = {rel}" + ("" if kind.startswith("attention") else shown[rel])
                     for kind in KINDS for rel, k in kinds.items() if k == kind)
    return kinds, f"hidden size {d}: " + (text or "no attention or feed-forward layer found")


def block_kinds(block, d):
    """{relative path: kind} of one decoder block's parts (see derive)."""
    kinds = {}
    for p in block:
        leaf = p.rel.split(".")[-1].lower()
        if is_attention(p.rel):
            kind = "attention_q" if leaf in Q_NAMES else "attention_v" if leaf in V_NAMES else \
                "attention_qv" if leaf in QKV_NAMES else None
            if kind:
                kinds[p.rel] = kind
    ffn = [p for p in block if not is_attention(p.rel) and not any(MIXER_PART.search(x) for x in p.rel.split(".")[:-1])]
    back = {p.size[0] for p in ffn if p.size[1] == d and p.size[0] != d}  # widths f of f -> d layers
    firsts = [p for p in ffn if p.size[0] == d and p.size[1] != d]
    used = set()
    for p in firsts:
        f = p.size[1]
        if f in back:
            twins = [q for q in firsts if q.size[1] == f and parent(q.rel) == parent(p.rel)]
            kinds[p.rel] = "keys" if len(twins) == 1 else gated_kind(p, twins)
            used.add(f)
        elif f % 2 == 0 and f // 2 in back:
            kinds[p.rel] = "keys_gate_up"
            used.add(f // 2)
    for p in ffn:
        if p.size[1] == d and p.size[0] in used:
            kinds[p.rel] = "values"
    return kinds


def parent(rel):
    return rel.rpartition(".")[0]


def gated_kind(p, twins):
    """keys_gate / keys_up for one of a gated pair, told apart by 'gate' in exactly one name; else keys_gated."""
    gates = [q for q in twins if "gate" in q.rel.split(".")[-1].lower()]
    if len(twins) != 2 or len(gates) != 1:
        return "keys_gated"
    return "keys_gate" if gates[0] is p else "keys_up"


# ----------------------------------------------------------------------------------------------------
# From --target_modules to peft's arguments


def resolve(targets, model, dropout=None):
    """Targets for `targets`, the user's --target_modules (role words and/or module names, in order; None for
    peft's default), on `model` (its modules only are read: build it on the meta device). Role words expand in
    place to the shortest names that match their role's modules and no others (on Llama: attention_qv keys_up
    -> q_proj v_proj up_proj); a plain name is kept as given. `dropout` (LoRA dropout, when given) must be 0
    where expert parameters are adapted: peft's ParamWrapper refuses any other. Raises UserError (one line):
    an unknown name, a name matching modules of different roles, a module reached twice, a role word the
    architecture cannot serve (keys_up of a fused gate_up layer, keys_gate without a gate), a module name peft
    would rewrite into an expert parameter (peft_rewrites), LoRA dropout on expert parameters."""
    all_parts = parts(model)
    kinds, derivation = kinds_of(model, all_parts)
    model_type = getattr(model.config, "model_type", None)
    if targets is None:
        return default_targets(model_type, all_parts, kinds, derivation)
    modules, parameters, roles = [], [], {}
    for target in targets:
        if target in ROLE_WORDS:
            expanded = expand(target, model_type, all_parts, kinds)
        else:
            expanded = [plain(target, model_type, all_parts, kinds)]
        for name, role, is_parameter in expanded:
            (parameters if is_parameter else modules).append(name)
            roles[name] = role
    fused = sorted({n for n, r in roles.items() if r == "attention_qv" and n.split(".")[-1] in QKV_NAMES})
    if fused:  # say that the attention's key projection is adapted too
        note = (f"{', '.join(fused)}: the fused query, key and value projection of {model_type or 'this model'}: "
                "LoRA adapts all three (there are no separate query and value layers to adapt alone)")
        derivation = f"{derivation}; {note}" if derivation else note
    result = targets_of(modules, parameters, roles, all_parts, kinds, derivation)
    check_once(result, targets, all_parts)
    check_not_rewritten(result, model_type)
    if dropout and result.target_parameters:
        raise UserError(f"--dropout {dropout}: peft adapts the experts' parameters "
                        f"({' '.join(result.target_parameters)}) only without LoRA dropout; pass --dropout 0")
    return result


def default_targets(model_type, all_parts, kinds, derivation):
    """Targets of peft's default target modules for the model type (peft's own table)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    names = DEFAULTS.get(model_type)
    if not names:
        raise UserError(f"peft has no default target modules for model_type {model_type!r}: pass --target_modules "
                        f"(role words: {' '.join(ROLE_WORDS)})")
    roles = {n: role_of_parts([p for p in all_parts if not p.parameter and matches(p.path, n)], kinds) for n in names}
    result = targets_of(list(names), [], roles, all_parts, kinds, derivation)
    return Targets(None, [], result.roles, result.paths, derivation)


def targets_of(modules, parameters, roles, all_parts, kinds, derivation):
    paths = sorted(((p.path, role_of_parts([p], kinds)) for p in all_parts
                    if any(matches(p.path, n) for n in (parameters if p.parameter else modules))),
                   key=lambda x: natural(x[0]))
    return Targets(modules, parameters, roles, paths, derivation)


def check_once(result, targets, all_parts):
    """A module reached twice (one name given twice, or two names or role words reaching it) is an error."""
    for p in all_parts:
        hits = [n for n in (result.target_parameters if p.parameter else result.target_modules) if matches(p.path, n)]
        if len(hits) > 1:
            raise UserError(f"--target_modules {' '.join(targets)} reaches {p.path} twice (through {hits[0]} and "
                            f"{hits[1]})")


def peft_rewrites(model_type):
    """{module name: expert parameter} that peft (0.21) rewrites in target_modules on this model type: its
    conversion of adapters trained under transformers 4, where the experts were Linear modules, turns e.g.
    qwen3_moe's gate_proj / up_proj into the parameter gate_up_proj (rank and alpha doubled) and down_proj into
    down_proj, whatever module the name meant. {} where peft has no such conversion."""
    try:
        from peft.utils.transformers_weight_conversion import (
            _MODEL_TO_CONVERSION_PATTERN,
            _MOE_FUSED_TARGETS,
            _MOE_TARGET_MODULE_MAPPING,
            get_checkpoint_conversion_mapping,
        )
    except ImportError:
        return {}
    base = _MODEL_TO_CONVERSION_PATTERN.get(model_type)
    if get_checkpoint_conversion_mapping(model_type) is None or not _MOE_FUSED_TARGETS.get(base):
        return {}
    return dict(_MOE_TARGET_MODULE_MAPPING.get(base, {}))


def check_not_rewritten(result, model_type):
    """A module name that peft would rewrite into an expert parameter (peft_rewrites) cannot adapt the module
    it names (e.g. the dense blocks' mlp.down_proj of a qwen3_moe with mlp_only_layers): one-line UserError."""
    rewrites = peft_rewrites(model_type)
    for name in result.target_modules:
        old = next((o for o in rewrites if matches(name, o)), None)
        if old is not None:
            hit = next(path for path, _ in result.paths if matches(path, name))
            raise UserError(f"target module {name} ({hit}): on model_type {model_type!r} peft rewrites module names "
                            f"ending in {old} into the experts' parameter {rewrites[old]} (its conversion of adapters "
                            "trained under transformers 4), so this module cannot be adapted; adapt the experts "
                            f"only (a model with no dense blocks), or leave {name} out")


def role_of_parts(matched, kinds):
    """The public role of the matched parts: the one they share, else 'other'."""
    roles = {ROLE_OF_KIND.get(kinds.get(p.rel, "other"), kinds.get(p.rel, "other")) for p in matched}
    return roles.pop() if len(roles) == 1 else "other"


def expand(word, model_type, all_parts, kinds):
    """[(peft name, role, is parameter)] a role word stands for on this model: by kind (KINDS' order: q before
    v, up before gate), then by path."""
    refuse_half(word, model_type, kinds)
    found = []
    for kind in KINDS:
        if kind not in WORD_KINDS[word]:
            continue
        for rel in sorted(r for r, k in kinds.items() if k == kind):
            name, is_parameter = shortest_name(rel, all_parts, kinds)
            if name not in [f[0] for f in found]:
                found.append((name, ROLE_OF_KIND.get(kind, kind), is_parameter))
    if not found:
        raise UserError(f"role word {word}: model_type {model_type!r} has no such layer "
                        f"(its roles: {describe(kinds) or 'none found'})")
    return found


def refuse_half(word, model_type, kinds):
    """Raise UserError (one line) where keys_up / keys_gate cannot be served."""
    why = half_problem(word, model_type, kinds)
    if why:
        raise UserError(f"role word {word}: {why}: use keys")


def half_problem(word, model_type, kinds):
    """Why the role word keys_up / keys_gate cannot adapt one half of this feed-forward's first layer, or None."""
    if word not in ("keys_up", "keys_gate"):
        return None
    fused = [rel for rel, k in kinds.items() if k == "keys_gate_up"]
    if fused:
        return (f"model_type {model_type!r} fuses the feed-forward's gate and up projections into one layer "
                f"({fused[0]}), and LoRA cannot adapt one half of it")
    gated = [rel for rel, k in kinds.items() if k == "keys_gated"]
    if gated:
        return (f"model_type {model_type!r} has a gated feed-forward ({' '.join(gated)}) whose gate and up layers "
                "cannot be told apart by name")
    single = [rel for rel, k in kinds.items() if k == "keys"]
    if word == "keys_gate" and single and "keys_gate" not in kinds.values():
        return f"model_type {model_type!r} has no gate in its feed-forward ({single[0]} is its only first layer)"
    return None


def shortest_name(rel, all_parts, kinds):
    """(peft name, is parameter) for a block-relative path: modules get the shortest suffix whose every match
    has the same kind (gpt2: c_fc, but mlp.c_proj since attn.c_proj is not a value); expert parameters keep
    their block-relative path (mlp.experts.gate_up_proj), as peft's documentation writes them."""
    mine = [p for p in all_parts if p.rel == rel]
    is_parameter = mine[0].parameter
    if is_parameter:
        return rel, True
    pieces = rel.split(".")
    for k in range(1, len(pieces) + 1):
        name = ".".join(pieces[-k:])
        hits = [p for p in all_parts if not p.parameter and matches(p.path, name)]
        if all(kinds.get(p.rel) == kinds[rel] for p in hits):
            return name, False
    return rel, False


def plain(name, model_type, all_parts, kinds):
    """(name, role, is parameter) of a plain module or parameter name, matched as peft matches it."""
    hits = [p for p in all_parts if not p.parameter and matches(p.path, name)]
    is_parameter = not hits
    if not hits:
        hits = [p for p in all_parts if p.parameter and matches(p.path, name)]
    if not hits:
        names = sorted({p.path.split(".")[-1] for p in all_parts if not p.parameter})
        params = sorted({p.rel for p in all_parts if p.parameter})
        raise UserError(f"unknown target module {name!r}; this model's linear modules are: {' '.join(names)}"
                        + (f"; its expert parameters: {' '.join(params)}" if params else "")
                        + f"; role words: {' '.join(ROLE_WORDS)}")
    by_role = {}
    for p in hits:
        by_role.setdefault(role_of_parts([p], kinds), p)
    if len(by_role) > 1:
        (r1, p1), (r2, p2) = sorted(by_role.items())[:2]
        fix = " or ".join(f"{shortest_name(p.rel, all_parts, kinds)[0]} for the {r}" + word_hint(r)
                          for r, p in ((r1, p1), (r2, p2)))
        raise UserError(f"target module {name!r} matches both {p1.path} ({r1}) and {p2.path} ({r2}): name one: {fix}")
    return name, next(iter(by_role)), is_parameter


def word_hint(role):
    word = {"values": "values", "keys": "keys", "keys_up": "keys_up", "keys_gate": "keys_gate"}.get(role)
    return f" (or the role word {word})" if word else ""


def describe(kinds):
    return ", ".join(f"{ROLE_OF_KIND.get(k, k)} = {rel}" for rel, k in kinds.items() if k != "other")


# ----------------------------------------------------------------------------------------------------
# Without a model: recorded module lists, the study's arms and their names


def roles_of(modules, model_type=None):
    """{module name: role} of a recorded target-module list, without a model: each name matched against
    TABLE[model_type]'s paths as peft matches it (a name may also be a longer, full path). For a model type not
    in TABLE (or None: the original code's folders, Llama names), the role every TABLE entry agrees on; a name
    matching parts of several roles, or none, is 'other'."""
    tables = [TABLE[model_type]] if model_type in TABLE else list(TABLE.values())
    out = {}
    for name in modules:
        found = {ROLE_OF_KIND.get(k, k) for table in tables for rel, k in table.items()
                 if matches(rel, name) or matches(name, rel)}
        out[name] = found.pop() if len(found) == 1 else "other"
    return out
