"""The study's arms and their names, from roles: which arm (core, keys, values) a set of adapted roles is, a
setting's short readable name ('q,v+up (keys)'), and the four arms an architecture can run."""

from keys_values.roles import SHORT_ROLE, half_problem, kinds_of, resolve, roles_of
from utils import UserError


def setting_role(roles):
    """The study arm a set of adapted roles belongs to: 'core' (attention only), 'keys' (attention and some keys
    role, no values), 'values' (attention and values, no keys), else 'other'. `roles`: {name: role} (as
    Targets.roles or roles_of give it) or an iterable of roles."""
    roles = set(roles.values() if isinstance(roles, dict) else roles)
    attention = {r for r in roles if r.startswith("attention_")}
    rest = roles - attention
    if not attention or "other" in rest:
        return "other"
    if not rest:
        return "core"
    keys = {r for r in rest if SHORT_ROLE.get(r) == "keys"}
    if keys == rest:
        return "keys"
    return "values" if rest == {"values"} else "other"


def setting_label(modules, roles=None, model_type=None, base=False):
    """A short readable name of a setting: 'base (no adapter)' with base=True; else the attention modules (q
    before v, '_proj' dropped) then '+' the others sorted, with their roles: on Llama 'q,v', 'q,v+up (keys)',
    'q,v+down (values)'; on GPT-2 'c_attn (q,k,v)+c_fc (keys)', 'c_attn (q,k,v)+mlp.c_proj (values)' (a fused q,k,v layer says so). `roles`: {module: role} as
    recorded (Targets.roles); names it lacks get roles_of(names, model_type)."""
    if base:
        return "base (no adapter)"
    roles = {**roles_of(modules, model_type), **(roles or {})}
    order = {"attention_q": 0, "attention_v": 1, "attention_qv": 2}
    attention = sorted((m for m in modules if roles[m] in order), key=lambda m: (order[roles[m]], m))
    extra = sorted(m for m in modules if m not in attention)
    short = short_names(list(modules))
    # a fused q,k,v layer says so (GPT-2's c_attn adapts the key projection too)
    name = ",".join(short[m] + (" (q,k,v)" if roles[m] == "attention_qv" else "") for m in attention) or "default"
    if extra:
        kinds = sorted({SHORT_ROLE.get(roles[m], "other") for m in extra})
        name += "+" + ",".join(short[m] for m in extra) + f" ({','.join(kinds)})"
    return name


def short_names(modules):
    """{name: its last part without '_proj' (but GPT-2's c_proj: 'c' says nothing)}; names whose last parts
    collide keep one more part."""
    def short(m, k):
        last = ".".join(m.split(".")[-k:])
        if last == "c_proj":  # GPT-2's c_proj is in the attention and in the feed-forward: the part says which
            return m if "." in m else "mlp.c_proj"
        return last if last.split(".")[-1] == "c_proj" else last.replace("_proj", "")

    out = {m: short(m, 1) for m in modules}
    for m in modules:
        if "." in m and sum(short(o, 1) == out[m] for o in modules) > 1:
            out[m] = short(m, 2)
    return out


def study_arms(model):
    """[(arm, note)]: the study's four arms in role words (attention_qv; with keys_up; with keys_gate; with
    values) as this architecture can run them. Where the feed-forward has no separate gate and up (a fused
    gate_up layer, or no gate) the two keys arms become one, 'attention_qv keys', and the note says why; an arm
    resolve() refuses on this model is (None, why it is left out); note is None for an arm as the study has it."""
    kinds, _ = kinds_of(model)
    model_type = getattr(model.config, "model_type", None)
    why = half_problem("keys_up", model_type, kinds) or half_problem("keys_gate", model_type, kinds)
    if why:
        keys = [("attention_qv keys", f"{why}: one keys arm in place of keys_up and keys_gate")]
    else:
        keys = [("attention_qv keys_up", None), ("attention_qv keys_gate", None)]
    return [runnable(arm, note, model) for arm, note in [("attention_qv", None), *keys, ("attention_qv values", None)]]


def runnable(arm, note, model):
    try:
        resolve(arm.split(), model)
    except UserError as e:
        return None, f"{arm!r} left out: {e}"
    return arm, note
