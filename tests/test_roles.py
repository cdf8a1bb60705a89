"""Keys and values of every architecture: the table checked against transformers' real modules (tiny models on
the meta device), role words resolved per architecture, the structural fallback giving the table's answer, the
refusals, the original's Llama names, peft adapting exactly the resolved paths, and a real mixture-of-experts
adapter trained one step, saved and reloaded."""

import functools
import os
import types

import pytest
import torch

from conftest import MODEL
from keys_values import arms, models, roles
from tiny_models import MODEL_TYPES, meta_model, tiny_model, tiny_model_folder
from utils import UserError

GATED = {"attention_qv": (["q_proj", "v_proj"], []), "keys": (["up_proj", "gate_proj"], []),
         "keys_up": (["up_proj"], []), "keys_gate": (["gate_proj"], []), "values": (["down_proj"], [])}
NO_GATE, FUSED = "no gate", "fuses"  # what the refusal of keys_gate / of keys_up and keys_gate says
EXPERTS = ["mlp.experts.gate_up_proj"], ["mlp.experts.down_proj"]
# the study's settings and folder names in the original code (get_eval_tasks.SETTINGS before role words)
ORIGINAL_SETTINGS = [["q_proj", "v_proj"], ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "gate_proj"],
                     ["q_proj", "v_proj", "down_proj"]]
# model_type -> role word -> (target_modules, target_parameters), or the refusal's words
EXPECTED = {
    **{t: GATED for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo2")},
    "phi3": {"attention_qv": (["qkv_proj"], []), "keys": (["gate_up_proj"], []), "keys_up": FUSED,
             "keys_gate": FUSED, "values": (["down_proj"], [])},
    "phi": {"attention_qv": (["q_proj", "v_proj"], []), "keys": (["fc1"], []), "keys_up": (["fc1"], []),
            "keys_gate": NO_GATE, "values": (["fc2"], [])},
    "gpt2": {"attention_qv": (["c_attn"], []), "keys": (["c_fc"], []), "keys_up": (["c_fc"], []),
             "keys_gate": NO_GATE, "values": (["mlp.c_proj"], [])},
    "gptj": {"attention_qv": (["q_proj", "v_proj"], []), "keys": (["fc_in"], []), "keys_up": (["fc_in"], []),
             "keys_gate": NO_GATE, "values": (["fc_out"], [])},
    "gpt_neox": {"attention_qv": (["query_key_value"], []), "keys": (["dense_h_to_4h"], []),
                 "keys_up": (["dense_h_to_4h"], []), "keys_gate": NO_GATE, "values": (["dense_4h_to_h"], [])},
    "opt": {"attention_qv": (["q_proj", "v_proj"], []), "keys": (["fc1"], []), "keys_up": (["fc1"], []),
            "keys_gate": NO_GATE, "values": (["fc2"], [])},
    "falcon": {"attention_qv": (["query_key_value"], []), "keys": (["dense_h_to_4h"], []),
               "keys_up": (["dense_h_to_4h"], []), "keys_gate": NO_GATE, "values": (["dense_4h_to_h"], [])},
    "mixtral": {"attention_qv": (["q_proj", "v_proj"], []), "keys": ([], EXPERTS[0]), "keys_up": FUSED,
                "keys_gate": FUSED, "values": ([], EXPERTS[1])},
    # the shared expert (layer 0) and the dense block (layer 1) are Linear; the routed experts are parameters
    "qwen2_moe": {"attention_qv": (["q_proj", "v_proj"], []), "keys": (["up_proj", "gate_proj"], EXPERTS[0]),
                  "keys_up": FUSED, "keys_gate": FUSED, "values": (["down_proj"], EXPERTS[1])},
    # peft rewrites qwen3_moe's gate_proj/up_proj/down_proj names into the experts' parameters: the dense block
    # (mlp_only_layers) cannot be adapted
    "qwen3_moe": {"attention_qv": (["q_proj", "v_proj"], []), "keys": "peft rewrites", "keys_up": FUSED,
                  "keys_gate": FUSED, "values": "peft rewrites"},
}


@functools.lru_cache(maxsize=None)
def meta(model_type, layers=2, sparse=False):
    """The tiny model on the meta device (cached); sparse: Qwen's MoE models with every block sparse."""
    return meta_model(model_type, layers, **({"mlp_only_layers": []} if sparse else {}))


def outcome(word, model):
    """(target_modules, target_parameters) of a role word, or its refusal's message."""
    try:
        t = roles.resolve([word], model)
    except UserError as e:
        return str(e)
    return t.target_modules, t.target_parameters


def everything(targets, model):
    """All of a resolution, or its refusal's message."""
    try:
        t = roles.resolve(targets, model)
    except UserError as e:
        return str(e)
    return t.target_modules, t.target_parameters, t.roles, t.paths


def widths(config):
    """(query width, value width) of the attention: heads x head size, key-value heads x head size."""
    d, heads = config.hidden_size, config.num_attention_heads
    head = getattr(config, "head_dim", None) or d // heads
    kv = 1 if getattr(config, "multi_query", False) else getattr(config, "num_key_value_heads", None) or heads
    return heads * head, kv * head


def blocks_of(model_type, rel):
    """The blocks of a tiny model (2 layers) that hold `rel`: every one, but Qwen's MoE models have their last
    block dense (mlp_only_layers): experts and shared expert in block 0, the dense feed-forward in block 1."""
    if model_type in ("qwen2_moe", "qwen3_moe") and rel.startswith("mlp."):
        return {0} if rel.startswith(("mlp.experts.", "mlp.shared_expert.")) else {1}
    return {0, 1}


# ---- the table, against transformers' modules ----------------------------------------------------------------

def test_every_architecture_of_the_table_is_tested():
    assert set(roles.TABLE) == set(MODEL_TYPES) == set(EXPECTED)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_table_entries_exist_with_their_shapes(model_type):
    """Every path of the table is a module (or, for mlp.experts.*, a 3D parameter) of the real architecture, in
    every block that has its parent; keys go d -> f (d -> 2f fused), values f -> d, attention from d."""
    model = meta(model_type)
    d = model.config.hidden_size
    q_width, v_width = widths(model.config)
    found = roles.parts(model)
    for rel, kind in roles.TABLE[model_type].items():
        mine = [p for p in found if p.rel == rel]
        assert {p.layer for p in mine} == blocks_of(model_type, rel), f"{model_type}: {rel}"
        assert all(p.parameter == rel.startswith("mlp.experts.") for p in mine)
        size = mine[0].size
        value_widths = {p.size[0] for p in found if p.layer == mine[0].layer and
                        roles.TABLE[model_type].get(p.rel) == "values"}
        if kind in ("keys_up", "keys_gate", "keys"):
            assert size[0] == d and size[1] in value_widths and size[1] != d
        elif kind == "keys_gate_up":
            assert size[0] == d and size[1] // 2 in value_widths and size[1] % 2 == 0
        elif kind == "values":
            assert size[1] == d and size[0] != d
        elif kind == "attention_q":
            assert size == (d, q_width)
        elif kind == "attention_v":
            assert size == (d, v_width)
        elif kind == "attention_qv":
            assert size == (d, q_width + 2 * v_width)
        else:
            assert kind == "other" and rel == "attn.c_proj" and size == (d, d)


def test_gpt2_conv1d_weights_are_read_transposed():
    model = meta("gpt2")
    sizes = {p.rel: p.size for p in roles.parts(model)}
    assert tuple(model.transformer.h[0].mlp.c_fc.weight.shape) == (32, 56)  # Conv1D: (in, out)
    assert sizes["mlp.c_fc"] == (32, 56) and sizes["mlp.c_proj"] == (56, 32)


def test_expert_parameters_are_read_as_experts_out_in():
    model = meta("mixtral")
    assert tuple(model.model.layers[0].mlp.experts.gate_up_proj.shape) == (4, 112, 32)  # (experts, 2 x 56, 32)
    sizes = {p.rel: p.size for p in roles.parts(model)}
    assert sizes["mlp.experts.gate_up_proj"] == (32, 112) and sizes["mlp.experts.down_proj"] == (56, 32)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_role_words_per_architecture(model_type):
    model = meta(model_type)
    for word, expected in EXPECTED[model_type].items():
        got = outcome(word, model)
        if isinstance(expected, str):
            assert isinstance(got, str) and expected in got and "\n" not in got, (word, got)
        else:
            assert got == expected, (word, got)


def test_resolved_paths_and_roles_on_llama():
    t = roles.resolve(["attention_qv", "keys_up"], meta("llama"))
    assert t.target_modules == ["q_proj", "v_proj", "up_proj"] and t.target_parameters == [] and t.derivation is None
    assert t.roles == {"q_proj": "attention_q", "v_proj": "attention_v", "up_proj": "keys_up"}
    assert t.paths == [(f"model.layers.{i}.{m}", r) for i in (0, 1) for m, r in
                       (("mlp.up_proj", "keys_up"), ("self_attn.q_proj", "attention_q"),
                        ("self_attn.v_proj", "attention_v"))]


def test_resolved_paths_of_a_moe_model():
    t = roles.resolve(["values"], meta("qwen2_moe"))
    assert t.roles == {"down_proj": "values", "mlp.experts.down_proj": "values"}
    assert t.paths == [("model.layers.0.mlp.experts.down_proj", "values"),
                       ("model.layers.0.mlp.shared_expert.down_proj", "values"),
                       ("model.layers.1.mlp.down_proj", "values")]


def test_paths_are_in_layer_order():
    t = roles.resolve(["q_proj"], meta("llama", layers=12))
    assert [p for p, _ in t.paths][1:3] == ["model.layers.1.self_attn.q_proj", "model.layers.2.self_attn.q_proj"]
    assert t.paths[-1][0] == "model.layers.11.self_attn.q_proj"


# ---- the original's names, plain names, peft's default -----------------------------------------------------

def test_llama_study_arms_are_the_originals_settings():
    """The study's found resolve to the module lists the original commands (and their folder names) use."""
    model = meta("llama")
    found = arms.study_arms(model)
    assert found == [("attention_qv", None), ("attention_qv keys_up", None), ("attention_qv keys_gate", None),
                    ("attention_qv values", None)]
    assert [roles.resolve(a.split(), model).target_modules for a, _ in found] == ORIGINAL_SETTINGS


def test_study_arms_where_the_feed_forward_has_no_separate_gate_and_up():
    for model_type, why in (("gpt2", "no gate in its feed-forward (mlp.c_fc"), ("phi3", "fuses"), ("mixtral", "fuses")):
        found = arms.study_arms(meta(model_type))
        assert [a for a, _ in found] == ["attention_qv", "attention_qv keys", "attention_qv values"]
        assert why in found[1][1] and found[0][1] is None and found[2][1] is None


def test_study_arms_leave_out_what_the_model_refuses():
    found = arms.study_arms(meta("qwen3_moe"))  # its dense block's gate/up/down names are rewritten by peft
    assert found[0] == ("attention_qv", None) and [a for a, _ in found[1:]] == [None, None]
    assert found[1][1].startswith("'attention_qv keys' left out: target module up_proj (model.layers.1.mlp.up_proj)")
    assert [a for a, _ in arms.study_arms(meta("qwen3_moe", sparse=True))] == [
        "attention_qv", "attention_qv keys", "attention_qv values"]


def test_plain_names_pass_through_with_their_roles():
    t = roles.resolve(["q_proj", "k_proj", "down_proj"], meta("llama"))
    assert t.target_modules == ["q_proj", "k_proj", "down_proj"]
    assert t.roles == {"q_proj": "attention_q", "k_proj": "other", "down_proj": "values"}
    t = roles.resolve(["mlp.c_proj", "c_attn"], meta("gpt2"))
    assert t.target_modules == ["mlp.c_proj", "c_attn"]
    assert t.roles == {"mlp.c_proj": "values", "c_attn": "attention_qv"}
    t = roles.resolve(["gate_up_proj"], meta("mixtral"))  # a plain name of an expert parameter
    assert t.target_modules == [] and t.target_parameters == ["gate_up_proj"] and t.roles == {"gate_up_proj": "keys"}


def test_none_is_peft_default():
    t = roles.resolve(None, meta("llama"))
    assert t.target_modules is None and t.target_parameters == []
    assert t.roles == {"q_proj": "attention_q", "v_proj": "attention_v"} and len(t.paths) == 4
    assert roles.resolve(None, meta("phi")).roles == {"q_proj": "attention_q", "v_proj": "attention_v",
                                                      "fc1": "keys", "fc2": "values"}
    with pytest.raises(UserError, match="peft has no default target modules for model_type 'phi3'"):
        roles.resolve(None, meta("phi3"))


# ---- refusals: one line each --------------------------------------------------------------------------------

def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_gpt2_bare_c_proj_is_refused():
    with pytest.raises(UserError) as e:
        roles.resolve(["c_attn", "c_proj"], meta("gpt2"))
    message = one_line(e)
    assert "transformer.h.0.attn.c_proj" in message and "transformer.h.0.mlp.c_proj" in message
    assert "mlp.c_proj" in message and "role word values" in message


def test_keys_up_and_keys_gate_are_refused_where_fused():
    for model_type, layer in (("phi3", "mlp.gate_up_proj"), ("mixtral", "mlp.experts.gate_up_proj")):
        for word in ("keys_up", "keys_gate"):
            with pytest.raises(UserError) as e:
                roles.resolve(["attention_qv", word], meta(model_type))
            assert f"({layer})" in one_line(e) and "cannot adapt one half" in one_line(e) and "use keys" in one_line(e)


def test_keys_gate_is_refused_without_a_gate():
    with pytest.raises(UserError) as e:
        roles.resolve(["keys_gate"], meta("gpt2"))
    assert "has no gate" in one_line(e) and "mlp.c_fc" in one_line(e)


def test_unknown_names_and_duplicates_are_one_line_errors():
    model = meta("llama")
    with pytest.raises(UserError) as e:
        roles.resolve(["q_proj", "query"], model)
    assert "unknown target module 'query'" in one_line(e) and "up_proj" in one_line(e) and "keys_gate" in one_line(e)
    with pytest.raises(UserError, match="its expert parameters: mlp.experts.down_proj mlp.experts.gate_up_proj;"):
        roles.resolve(["w2"], meta("mixtral"))
    for targets, twice in ((["q_proj", "q_proj"], "self_attn.q_proj twice (through q_proj and q_proj)"),
                           (["keys", "up_proj"], "mlp.up_proj twice (through up_proj and up_proj)"),
                           (["up_proj", "mlp.up_proj"], "reaches model.layers.0.mlp.up_proj twice"),
                           (["values", "values"], "mlp.down_proj twice")):
        with pytest.raises(UserError) as e:
            roles.resolve(targets, model)
        assert twice in one_line(e)


def test_expert_parameters_refuse_lora_dropout():
    with pytest.raises(UserError) as e:
        roles.resolve(["attention_qv", "values"], meta("mixtral"), dropout=0.1)
    assert "--dropout 0.1" in one_line(e) and "mlp.experts.down_proj" in one_line(e)
    assert roles.resolve(["attention_qv", "values"], meta("mixtral"), dropout=0.0).target_parameters == EXPERTS[1]
    assert roles.resolve(["attention_qv", "values"], meta("llama"), dropout=0.1).target_modules[-1] == "down_proj"


def test_names_peft_would_rewrite_into_expert_parameters_are_refused():
    """peft 0.21 turns target module names ending in gate_proj / up_proj / down_proj into qwen3_moe's expert
    parameters; a dense block's modules of those names cannot be adapted, so they are refused."""
    assert roles.peft_rewrites("qwen3_moe")["up_proj"] == "gate_up_proj" and roles.peft_rewrites("llama") == {}
    with pytest.raises(UserError) as e:
        roles.resolve(["down_proj"], meta("qwen3_moe"))
    assert "model.layers.1.mlp.down_proj" in one_line(e) and "peft rewrites" in one_line(e)
    sparse = meta("qwen3_moe", sparse=True)  # every block sparse, as in the released Qwen3-MoE models
    assert outcome("keys", sparse) == ([], EXPERTS[0]) and outcome("values", sparse) == ([], EXPERTS[1])


# ---- the structural fallback --------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_fallback_gives_the_table_answer(model_type, monkeypatch):
    model = meta(model_type)
    cases = [[w] for w in roles.ROLE_WORDS] + [["attention_qv", "keys"], ["attention_qv", "values"]]
    table = [everything(c, model) for c in cases]
    monkeypatch.delitem(roles.TABLE, model_type)
    assert [everything(c, model) for c in cases] == table
    assert roles.resolve(["attention_qv"], model).derivation.startswith(
        f"roles of model_type {model_type!r} derived from its structure: hidden size 32: ")


def test_fallback_leaves_attention_out_of_the_feed_forward(monkeypatch):
    """Gemma's attention can be wider than the model (q_proj d -> 2d, o_proj 2d -> d): shaped like a key and a
    value, it is still attention."""
    model = meta_model("gemma", head_dim=16)
    assert {p.rel: p.size for p in roles.parts(model)}["self_attn.o_proj"] == (64, 32)
    table = everything(["attention_qv", "keys", "values"], model)
    monkeypatch.delitem(roles.TABLE, "gemma")
    assert everything(["attention_qv", "keys", "values"], model) == table


def test_fallback_on_an_architecture_not_in_the_table():
    model = meta_model("starcoder2", hidden_size=32, intermediate_size=56, num_attention_heads=4, num_key_value_heads=2)
    t = roles.resolve(["attention_qv", "values"], model)
    assert t.target_modules == ["q_proj", "v_proj", "c_proj"]
    assert t.derivation == ("roles of model_type 'starcoder2' derived from its structure: hidden size 32: "
                            "attention_q = self_attn.q_proj, attention_v = self_attn.v_proj, "
                            "keys = mlp.c_fc (32 -> 56), values = mlp.c_proj (56 -> 32)")


def test_fallback_leaves_state_space_mixers_out_of_the_feed_forward():
    """A Mamba mixer's in_proj (d -> 2f) and out_proj (f -> d) are shaped like a fused gate_up key and a value;
    they are not a feed-forward: pure Mamba has no roles, and a hybrid (Jamba) has its feed-forward's alone."""
    mamba = meta_model("mamba", hidden_size=32)
    with pytest.raises(UserError, match="role word keys: model_type 'mamba' has no such layer"):
        roles.resolve(["keys"], mamba)
    jamba = meta_model("jamba", hidden_size=32, intermediate_size=56, num_attention_heads=4, num_key_value_heads=2,
                       attn_layer_period=2, attn_layer_offset=1, expert_layer_period=4, expert_layer_offset=3,
                       mamba_d_state=4, use_mamba_kernels=False)
    t = roles.resolve(["keys", "values"], jamba)
    assert t.target_modules == ["up_proj", "gate_proj", "down_proj"]
    assert all(".feed_forward." in path for path, _ in t.paths) and "mamba" not in t.derivation


class Block(torch.nn.Module):
    def __init__(self, d, f, fused):
        super().__init__()
        self.attn = torch.nn.ModuleDict({"wq": torch.nn.Linear(d, d), "wv": torch.nn.Linear(d, d),
                                         "wo": torch.nn.Linear(d, d), "mix_in": torch.nn.Linear(d, f),
                                         "mix_out": torch.nn.Linear(f, d)})  # shaped like a key and a value
        first = {"w13": torch.nn.Linear(d, 2 * f)} if fused else \
            {"w1": torch.nn.Linear(d, f), "w3": torch.nn.Linear(d, f)}
        self.ffn = torch.nn.ModuleDict({**first, "w2": torch.nn.Linear(f, d)})


class Toy(torch.nn.Module):
    """A model of no known type: blocks of attn.{wq,wv,wo,mix_in,mix_out} and ffn.{w1,w3,w2} (or a fused
    ffn.w13), and a ModuleList that is not the blocks."""

    def __init__(self, fused=False, d=8, f=12):
        super().__init__()
        self.config = types.SimpleNamespace(model_type="toy", hidden_size=d)
        self.embed = torch.nn.Embedding(10, d)
        self.blocks = torch.nn.ModuleList(Block(d, f, fused) for _ in range(2))
        self.heads = torch.nn.ModuleList([torch.nn.Linear(d, f), torch.nn.Linear(f, d)])  # not decoder blocks


def test_fallback_reads_fused_and_nameless_gated_layers():
    fused = roles.resolve(["attention_qv", "keys"], Toy(fused=True))
    assert fused.target_modules == ["wq", "wv", "w13"] and fused.roles["w13"] == "keys"
    assert [p for p, _ in fused.paths] == [f"blocks.{i}.{m}" for i in (0, 1) for m in ("attn.wq", "attn.wv", "ffn.w13")]
    assert "keys = ffn.w13 (8 -> 24)" in fused.derivation
    gated = roles.resolve(["keys", "values"], Toy())
    assert gated.target_modules == ["w1", "w3", "w2"] and set(gated.roles.values()) == {"keys", "values"}
    assert "attn.mix" not in gated.derivation  # under attn: attention, whatever its shape
    with pytest.raises(UserError, match="cannot be told apart by name"):
        roles.resolve(["keys_up"], Toy())
    with pytest.raises(UserError, match="fuses"):
        roles.resolve(["keys_gate"], Toy(fused=True))


# ---- peft adapts exactly what resolve says -------------------------------------------------------------------

def adapted(peft_model):
    """Full paths of what peft put a LoRA on: modules, and expert parameters (module path + parameter name)."""
    from peft.tuners.lora import LoraLayer

    out = set()
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            path = name.removeprefix("base_model.model.").replace(".base_layer", "")
            out.add(path + ("." + module.parameter_name if hasattr(module, "parameter_name") else ""))
    return out


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_peft_adapts_exactly_the_resolved_paths(model_type):
    from peft import LoraConfig, get_peft_model

    sparse = model_type == "qwen3_moe"  # its dense block's modules are refused (peft rewrites their names)
    for arm, _ in arms.study_arms(meta(model_type, sparse=sparse)):
        t = roles.resolve(arm.split(), meta(model_type, sparse=sparse))
        config = LoraConfig(r=2, lora_dropout=0.0, target_modules=t.target_modules,
                            target_parameters=t.target_parameters)
        peft_model = get_peft_model(meta_model(model_type, **({"mlp_only_layers": []} if sparse else {})), config)
        assert adapted(peft_model) == {p for p, _ in t.paths}, arm


def test_moe_experts_train_save_and_reload(tmp_path):
    """qwen2_moe: q,v and the values (the experts' down_proj parameter, the shared expert's and the dense block's
    down_proj modules): one forward and backward gives every expert LoRA a gradient; the saved adapter reloads
    into a fresh model with the same outputs."""
    from peft import LoraConfig, PeftModel, get_peft_model

    t = roles.resolve(["attention_qv", "values"], meta("qwen2_moe"), dropout=0.0)
    peft_model = get_peft_model(tiny_model("qwen2_moe"), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=t.target_modules, target_parameters=t.target_parameters))
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    experts = {n: p.grad for n, p in peft_model.named_parameters() if "experts.lora_B" in n}
    assert len(experts) == 1 and all(g is not None and g.abs().sum() > 0 for g in experts.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in peft_model.named_parameters()
               if "lora_B" in n)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits
    assert (tuned - base).abs().max() > 1e-3
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(tiny_model("qwen2_moe"), str(tmp_path / "adapter")).eval()
    assert adapted(reloaded) == {p for p, _ in t.paths}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, tuned)


# ---- without a model: records, arms, labels -----------------------------------------------------------------

def test_roles_of_recorded_module_lists():
    assert roles.roles_of(["q_proj", "v_proj", "up_proj", "gate_proj", "down_proj", "k_proj"]) == {
        "q_proj": "attention_q", "v_proj": "attention_v", "up_proj": "keys_up", "gate_proj": "keys_gate",
        "down_proj": "values", "k_proj": "other"}  # the original's folders: no model type
    assert roles.roles_of(["c_attn", "c_fc", "mlp.c_proj", "c_proj"], "gpt2") == {
        "c_attn": "attention_qv", "c_fc": "keys", "mlp.c_proj": "values", "c_proj": "other"}
    assert roles.roles_of(["mlp.experts.gate_up_proj", "down_proj"], "mixtral") == {
        "mlp.experts.gate_up_proj": "keys", "down_proj": "values"}
    assert roles.roles_of(["model.layers.3.mlp.up_proj", "fc1"], "unknown_type") == {
        "model.layers.3.mlp.up_proj": "keys_up", "fc1": "keys"}
    assert roles.roles_of(["q_proj", "fc1", "c_fc"], "gpt2") == {"q_proj": "other", "fc1": "other", "c_fc": "keys"}


def test_setting_role():
    assert arms.setting_role(["attention_q", "attention_v"]) == "core"
    assert arms.setting_role(["attention_qv", "keys"]) == "keys"
    assert arms.setting_role(["attention_q", "attention_v", "keys_up", "keys_gate"]) == "keys"
    assert arms.setting_role(["attention_qv", "values"]) == "values"
    assert arms.setting_role(["attention_q", "keys_up", "values"]) == "other"
    assert arms.setting_role(["attention_q", "other"]) == "other"
    assert arms.setting_role(["keys_up"]) == "other" and arms.setting_role([]) == "other"
    assert arms.setting_role({"c_attn": "attention_qv", "mlp.c_proj": "values"}) == "values"  # a {name: role}


# recorded Llama module lists -> (the report's setting name, its arm) as the original get_eval_tasks gave them
LLAMA_RECORDS = [
    (["q_proj", "v_proj"], "q,v", "core"), (["q_proj", "up_proj", "v_proj"], "q,v+up (keys)", "keys"),
    (["gate_proj", "q_proj", "v_proj"], "q,v+gate (keys)", "keys"),
    (["down_proj", "q_proj", "v_proj"], "q,v+down (values)", "values"),
    (["down_proj", "q_proj", "up_proj", "v_proj"], "q,v+down,up (keys,values)", "other"),
    (["k_proj"], "default+k (other)", "other"), (["q_proj"], "q", "core"),
    (["o_proj", "q_proj", "v_proj"], "q,v+o (other)", "other"), (["v_proj", "q_proj"], "q,v", "core"),
    (["q_proj", "v_proj", "up_proj", "gate_proj"], "q,v+gate,up (keys)", "keys")]


def test_setting_labels_and_roles_on_llama_are_the_originals():
    for modules, label, arm in LLAMA_RECORDS:
        assert arms.setting_label(modules) == label, modules
        assert arms.setting_label(modules, model_type="llama") == label, modules
        assert arms.setting_label(modules, roles.roles_of(modules, "llama")) == label, modules
        assert arms.setting_role(roles.roles_of(modules)) == arm, modules
    assert arms.setting_label(None, base=True) == "base (no adapter)"


def test_setting_labels_use_recorded_roles():
    recorded = {"wq": "attention_q", "wv": "attention_v", "w2": "values"}  # a model type no table knows
    assert arms.setting_label(["wq", "wv", "w2"], recorded) == "wq,wv+w2 (values)"
    assert arms.setting_label(["wq", "wv", "w2"]) == "default+w2,wq,wv (other)"


def test_setting_labels_elsewhere():
    assert arms.setting_label(["c_attn", "c_fc"], model_type="gpt2") == "c_attn (q,k,v)+c_fc (keys)"
    assert arms.setting_label(["c_attn", "mlp.c_proj"], model_type="gpt2") == "c_attn (q,k,v)+mlp.c_proj (values)"
    assert arms.setting_label(["qkv_proj", "gate_up_proj"], model_type="phi3") == "qkv (q,k,v)+gate_up (keys)"
    assert arms.setting_label(["attn.v_proj", "q_proj", "fc_in"], model_type="gptj") == "q,v+fc_in (keys)"
    t = roles.resolve(["attention_qv", "values"], meta("qwen2_moe"))
    assert arms.setting_label(t.target_modules + t.target_parameters, t.roles) == "q,v+down,experts.down (values)"


def test_tiny_model_folders_load_and_run(tmp_path):
    """Every architecture's tiny folder: under 10 MB, loads with its tokenizer, gives a finite loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for model_type in MODEL_TYPES:
        folder = tiny_model_folder(tmp_path, model_type)
        weights = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
        assert weights < 10e6, (model_type, weights)
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.model_type == model_type and model.config.vocab_size == 49152
        ids = AutoTokenizer.from_pretrained(folder)("keys and values", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids, labels=ids).loss), model_type


def test_target_module_names_checked_against_the_model():
    from keys_values import roles

    model = models.meta_model(models.load_config(MODEL))
    res = roles.resolve(["q_proj", "v_proj", "gate_proj"], model)
    assert res.target_modules == ["q_proj", "v_proj", "gate_proj"] and len(res.paths) == 3 * 30
    with pytest.raises(UserError, match="unknown target module 'up_prj'; this model's linear modules are: down_proj"):
        roles.resolve(["q_proj", "up_prj"], model)


@pytest.mark.parametrize("model_type,fused", [("gpt2", "c_attn"), ("gpt_neox", "query_key_value"), ("phi3", "qkv_proj"),
                                              ("llama", None)])
def test_a_fused_qkv_layer_says_that_the_key_projection_is_adapted_too(model_type, fused):
    t = roles.resolve(["attention_qv", "values"], meta(model_type))
    label = arms.setting_label(t.target_modules, t.roles)
    if fused is None:
        assert "(q,k,v)" not in label and not (t.derivation or "").count("fused query")
    else:
        assert "(q,k,v)+" in label and f"{fused}: the fused query, key and value projection" in t.derivation
