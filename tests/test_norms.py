"""What each adapter changed: ||dW||_F from the adapter's files alone, checked on hand-made adapters against
numpy, and on real peft adapters (a tiny Llama; a tiny Qwen2-MoE with expert parameters) against peft's own
get_delta_weight; the base weights' norms, also of a 4-bit model; the per-name summary."""

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from keys_values import norms, roles, structure
from tiny_models import tiny_model, tiny_model_folder
from utils import UserError

PREFIX = "base_model.model."


def write_adapter(folder, tensors, config):
    """An adapter folder as peft's save_pretrained writes it."""
    os.makedirs(folder, exist_ok=True)
    save_file({k: torch.as_tensor(v, dtype=torch.float32).contiguous() for k, v in tensors.items()},
              os.path.join(folder, "adapter_model.safetensors"))
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


def pair(rng, r, n_in, n_out):
    """(A (r, in), B (out, r)), float32 values (as saved) held in float64."""
    return tuple(rng.standard_normal(s).astype(np.float32).astype(np.float64) for s in ((r, n_in), (n_out, r)))


def lora_keys(module, a, b, prefix=PREFIX):
    return {f"{prefix}{module}.lora_A.weight": a, f"{prefix}{module}.lora_B.weight": b}


# ---- hand-made adapters against numpy ------------------------------------------------------------------

def test_hand_made_adapter_norms_layers_names_and_patterns(tmp_path):
    rng = np.random.default_rng(0)
    q0, q1, c_proj, o_proj = pair(rng, 4, 6, 6), pair(rng, 4, 6, 6), pair(rng, 2, 10, 6), pair(rng, 4, 6, 6)
    tensors = {**lora_keys("transformer.h.0.attn.c_attn", *q0), **lora_keys("transformer.h.10.attn.c_attn", *q1),
               **lora_keys("transformer.h.10.mlp.c_proj", *c_proj), **lora_keys("transformer.h.2.attn.c_proj", *o_proj)}
    config = {"r": 4, "lora_alpha": 16, "target_modules": ["c_attn", "c_proj", "mlp.c_proj"],
              "rank_pattern": {"mlp.c_proj": 2}, "alpha_pattern": {"mlp.c_proj": 3}}
    state, cfg = norms.read_adapter(write_adapter(tmp_path / "a", tensors, config))
    rows = norms.delta_norms(state, cfg)
    expected = [("transformer.h.0.attn.c_attn", 0, "c_attn", 16 / 4 * np.linalg.norm(q0[1] @ q0[0])),
                ("transformer.h.2.attn.c_proj", 2, "c_proj", 16 / 4 * np.linalg.norm(o_proj[1] @ o_proj[0])),
                ("transformer.h.10.attn.c_attn", 10, "c_attn", 16 / 4 * np.linalg.norm(q1[1] @ q1[0])),
                ("transformer.h.10.mlp.c_proj", 10, "mlp.c_proj", 3 / 2 * np.linalg.norm(c_proj[1] @ c_proj[0]))]
    assert [(r["module"], r["layer"], r["name"]) for r in rows] == [e[:3] for e in expected]
    for row, e in zip(rows, expected):
        assert row["delta_fro"] == pytest.approx(e[3], rel=1e-9)


def test_rslora_scaling(tmp_path):
    rng = np.random.default_rng(1)
    a, b = pair(rng, 8, 5, 7)
    config = {"r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": ["up_proj"]}
    rows = norms.delta_norms(*norms.read_adapter(write_adapter(tmp_path / "a", lora_keys("model.layers.3.mlp.up_proj",
                                                                                          a, b), config)))
    assert rows == [{"module": "model.layers.3.mlp.up_proj", "layer": 3, "name": "up_proj",
                     "delta_fro": pytest.approx(16 / math.sqrt(8) * np.linalg.norm(b @ a), rel=1e-9)}]
    assert norms.scaling(config) == pytest.approx(16 / math.sqrt(8))
    assert norms.scaling({"r": 8, "lora_alpha": 16}) == 2.0
    patterned = {"r": 8, "lora_alpha": 16, "alpha_pattern": {"v_proj": 4}}
    assert norms.scaling(patterned, "model.layers.0.self_attn.v_proj") == 0.5 and norms.scaling(patterned) == 2.0


def test_expert_parameters_layout(tmp_path):
    """Two expert parameters on one module (E = 3 experts, rank 2): A (E*r, in) expert-major, B (out, E*r)
    rank-major; the first registered (gate_up_proj) is the inner wrapper, under '.base_layer'. The norm is that
    of the whole (E, out, in) update."""
    rng = np.random.default_rng(2)
    e, r, d, f = 3, 2, 5, 4
    gate_up, down = pair(rng, e * r, d, 2 * f), pair(rng, e * r, f, d)

    def whole(a, b):
        return math.sqrt(sum(np.linalg.norm(b.reshape(-1, r, e)[:, :, k] @ a.reshape(e, r, -1)[k]) ** 2
                             for k in range(e)))

    tensors = {**lora_keys("model.layers.0.mlp.experts.base_layer", *gate_up),
               **lora_keys("model.layers.0.mlp.experts", *down)}
    config = {"r": r, "lora_alpha": 4, "target_modules": [],
              "target_parameters": ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]}
    rows = norms.delta_norms(*norms.read_adapter(write_adapter(tmp_path / "a", tensors, config)))
    assert [(x["module"], x["name"]) for x in rows] == [
        ("model.layers.0.mlp.experts.down_proj", "mlp.experts.down_proj"),
        ("model.layers.0.mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj")]
    assert rows[0]["delta_fro"] == pytest.approx(2 * whole(*down), rel=1e-9)
    assert rows[1]["delta_fro"] == pytest.approx(2 * whole(*gate_up), rel=1e-9)
    assert whole(*gate_up) != pytest.approx(np.linalg.norm(gate_up[1] @ gate_up[0]))  # not one plain LoRA


def test_broken_adapters_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        norms.read_adapter(str(tmp_path / "nothing"))
    folder = write_adapter(tmp_path / "a", lora_keys("m.0.q_proj", *pair(np.random.default_rng(3), 2, 3, 3)),
                           {"r": 2, "lora_alpha": 2})
    with open(os.path.join(folder, "adapter_model.safetensors"), "wb") as f:
        f.write(b"not safetensors")
    with pytest.raises(UserError, match="are corrupt") as e:
        norms.read_adapter(folder)
    assert "\n" not in str(e.value)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        f.write("{")
    with pytest.raises(UserError, match="adapter config .* is corrupt"):
        norms.read_adapter(folder)
    a, b = pair(np.random.default_rng(4), 2, 3, 3)
    state = {k: torch.tensor(v) for k, v in lora_keys("m.0.q_proj", a, b).items()}
    with pytest.raises(UserError, match="do not fit rank 4"):
        norms.delta_norms(state, {"r": 4, "lora_alpha": 2})
    with pytest.raises(UserError, match="without its partner"):
        norms.delta_norms({f"{PREFIX}m.0.q_proj.lora_A.weight": state[f"{PREFIX}m.0.q_proj.lora_A.weight"]}, {"r": 2})


# ---- real peft adapters against peft's own delta ------------------------------------------------------------

def peft_deltas(peft_model):
    """{module or parameter path: ||get_delta_weight('default')||_F} of every LoRA layer of a peft model."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            path = name.removeprefix(PREFIX).replace(".base_layer", "")
            path += "." + module.parameter_name if hasattr(module, "parameter_name") else ""
            out[path] = float(module.get_delta_weight("default").detach().double().norm())
    return out


def randomise_lora_b(peft_model, seed=0):
    """LoRA starts with B = 0 (no change); a trained adapter has B != 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3, generator=g)


def test_real_llama_adapter_and_relative_norms(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_folder(tmp_path, "llama"), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, rank_pattern={"v_proj": 2},
                        target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    randomise_lora_b(peft_model)
    peft_model.save_pretrained(str(tmp_path / "assets"))
    rows = norms.delta_norms(*norms.read_adapter(str(tmp_path / "assets")))
    want = peft_deltas(peft_model)
    assert [r["module"] for r in rows] == sorted(want, key=structure.natural) and len(rows) == 8
    for r in rows:
        assert r["delta_fro"] == pytest.approx(want[r["module"]], rel=1e-5), r["module"]
        assert r["name"] == r["module"].split(".")[-1] and r["layer"] == int(r["module"].split(".")[2])
    weights = norms.weight_norms(peft_model, [r["module"] for r in rows])
    for path, w in weights.items():
        assert w == pytest.approx(float(model.get_submodule(path).get_base_layer().weight.double().norm()), rel=1e-9)
    with_rel = norms.relative(rows, weights)
    assert all(r["relative"] == pytest.approx(r["delta_fro"] / weights[r["module"]]) for r in with_rel)
    with pytest.raises(UserError, match="no base weight norm for model.layers.0.mlp.down_proj"):
        norms.relative(rows, {})
    with pytest.raises(UserError, match="no module or parameter model.layers.0.mlp.nothing"):
        norms.weight_norms(peft_model, ["model.layers.0.mlp.nothing"])


def test_real_moe_adapter_with_expert_parameters(tmp_path):
    """qwen2_moe, the keys and values of the routed experts (parameters, nested on one module), of the shared
    expert and of the dense block (modules), with rslora: every norm is peft's, and the experts' base weights
    are read through peft's wrappers."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("qwen2_moe")
    t = roles.resolve(["keys", "values"], model, dropout=0.0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_rslora=True,
                                                  target_modules=t.target_modules,
                                                  target_parameters=t.target_parameters))
    randomise_lora_b(peft_model)
    peft_model.save_pretrained(str(tmp_path / "assets"))
    rows = norms.delta_norms(*norms.read_adapter(str(tmp_path / "assets")))
    want = peft_deltas(peft_model)
    assert {r["module"] for r in rows} == set(want) == {p for p, _ in t.paths}
    for r in rows:
        assert r["delta_fro"] == pytest.approx(want[r["module"]], rel=1e-5), r["module"]
    names = {r["module"]: r["name"] for r in rows}
    assert names["model.layers.0.mlp.experts.gate_up_proj"] == "mlp.experts.gate_up_proj"
    assert names["model.layers.0.mlp.experts.down_proj"] == "mlp.experts.down_proj"
    assert names["model.layers.1.mlp.down_proj"] == "down_proj"
    experts = model.model.layers[0].mlp.experts.get_base_layer()  # inside peft's two ParamWrappers
    w = norms.weight_norms(peft_model, ["model.layers.0.mlp.experts.gate_up_proj"])
    assert w["model.layers.0.mlp.experts.gate_up_proj"] == pytest.approx(float(experts.gate_up_proj.double().norm()))


def test_4bit_weights_are_dequantised(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    folder = tiny_model_folder(tmp_path, "llama")
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    quantised = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=nf4)
    paths = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    assert quantised.get_submodule(paths[0]).weight.dtype == torch.uint8  # packed: its own norm means nothing
    exact, dequantised = norms.weight_norms(full, paths), norms.weight_norms(quantised, paths)
    for p in paths:
        assert dequantised[p] == pytest.approx(exact[p], rel=0.15)  # nf4's error on 32-wide rows


# ---- the summary --------------------------------------------------------------------------------------------

def test_summary_means_over_layers_by_role():
    rows = [{"module": f"model.layers.{i}.{m}", "layer": i, "name": m.split(".")[-1], "delta_fro": d,
             "relative": d / 10} for i, (m, d) in enumerate([("mlp.down_proj", 1.0), ("mlp.down_proj", 3.0)])]
    rows += [{"module": "model.layers.0.self_attn.q_proj", "layer": 0, "name": "q_proj", "delta_fro": 5.0},
             {"module": "model.layers.0.mlp.up_proj", "layer": 0, "name": "up_proj", "delta_fro": 7.0}]
    assert norms.summarise(rows) == [
        {"name": "q_proj", "role": "attention_q", "layers": 1, "delta_fro": 5.0, "relative": None},
        {"name": "up_proj", "role": "keys_up", "layers": 1, "delta_fro": 7.0, "relative": None},
        {"name": "down_proj", "role": "values", "layers": 2, "delta_fro": 2.0, "relative": pytest.approx(0.2)}]
    assert norms.summarise([{**rows[0], "name": "mlp.c_proj"}], "gpt2")[0]["role"] == "values"
    assert norms.summarise([{**rows[0], "name": "w2", "role": "values"}])[0]["role"] == "values"  # as recorded
    assert norms.summarise([{**rows[0], "name": "w2"}])[0]["role"] == "other"
