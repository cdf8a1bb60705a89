"""The memory estimate against measurement, gradient checkpointing, and --dry_run.

What autograd keeps from a forward pass is counted with torch.autograd.graph.saved_tensors_hooks (each
storage once, the model's own weights left out); under checkpointing autograd keeps nothing inside a layer,
and the checkpoint keeps each layer's input, counted with a forward pre-hook."""

import json
import os
import shutil

import pytest
import torch

import utils
from conftest import MODEL, SAMPLE, TRAIN, run
from keys_values import config, lora, memory, models, precision, structure
from tiny_models import MODEL_TYPES

MOE = ("mixtral", "qwen2_moe", "qwen3_moe")

LLAMA2_7B = memory.LLAMA2_7B
PAPER = ["--lora_r", "8", "--epochs", "5", "--dropout", "0.1", "--bnb", "--target_modules", "q_proj", "v_proj",
         "up_proj", "--tasks", "20_Newsgroups_Fixed", "boolq", "COPA", "CB", "race_high", "QNLI"]


def saved_bytes(model, input_ids):
    """Bytes autograd keeps for the backward pass after one forward pass of the model's decoder."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    def pack(t):
        keep(t)
        return t

    decoder = model.get_base_model().get_decoder()
    hooks = []
    if decoder.gradient_checkpointing:  # the checkpoint holds each layer's input for its recomputation
        hooks = [layer.register_forward_pre_hook(lambda m, a, kw: keep(a[0] if a else kw["hidden_states"]),
                                                 with_kwargs=True) for layer in decoder.layers]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        decoder(input_ids=input_ids)
    for h in hooks:
        h.remove()
    return sum(kept.values())


def lora_model(model, checkpointing, prec, modules=("q_proj", "v_proj", "up_proj"), dropout="0.1"):
    flag = "--gradient_checkpointing" if checkpointing else "--no-gradient_checkpointing"
    args = config.training_config(["--tasks", "CB", "--target_modules", *modules, "--dropout", dropout, flag,
                             *(["--bnb"] if prec.bnb else [])])
    model = lora.add_lora(model, args, prec)
    model.train()
    return model, args


def estimated(model, args, prec, batch, seq):
    trainable, _ = model.get_nb_trainable_parameters()
    return memory.estimate(model.config, args.target_modules, args.lora_r, args.dropout, prec, False, batch, seq,
                           args.gradient_checkpointing, 1.0, trainable, memory.weight_counts(model))["activations"]


def measure(model, prec, batch, seq):
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec.autocast):
        return saved_bytes(model, ids)


def within(measured, estimate, tolerance=0.25):
    print(f"measured {measured:,} estimate {estimate:,} ratio {estimate / measured:.3f}")  # shown with -s
    return abs(estimate - measured) <= tolerance * measured


FP32 = precision.precision("fp32", False, "train", bf16_cpu=False)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_matches_the_embedded_model(checkpointing):
    model = models.load_base(MODEL, FP32, precision.placement(0, False))
    model, args = lora_model(model, checkpointing, FP32)
    measured, estimate = measure(model, FP32, 2, 64), estimated(model, args, FP32, 2, 64)
    assert within(measured, estimate), (measured, estimate)


@pytest.fixture(scope="module")
def llama2_widths():
    """Two layers of Llama-2-7B's widths (hidden 4,096, MLP 11,008, 32 heads), weights zero: shapes are what count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**LLAMA2_7B, "num_hidden_layers": 2})
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.zero_()
    model.model.rotary_emb.inv_freq = 1.0 / (10000 ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128))
    return model


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_matches_llama2_widths(llama2_widths, checkpointing):
    import copy

    model, args = lora_model(copy.deepcopy(llama2_widths), checkpointing, FP32)
    measured, estimate = measure(model, FP32, 1, 32), estimated(model, args, FP32, 1, 32)
    assert within(measured, estimate), (measured, estimate)


@pytest.mark.parametrize("modules,dropout", [(("q_proj", "v_proj", "down_proj"), "0.1"), (("k_proj", "o_proj", "gate_proj"), "0.05")])
def test_estimate_follows_the_adapted_modules_and_bf16(tmp_path, modules, dropout):
    """Other modules (down_proj's input is the MLP's width), and bf16 weights under autocast, on a small Llama."""
    from conftest import small_llama

    folder = small_llama(tmp_path, layers=4)
    for prec in (FP32, precision.precision("bf16", False, "train", bf16_cpu=False)):
        model, args = lora_model(models.load_base(folder, prec, precision.placement(0, False)), False, prec, modules, dropout)
        measured, estimate = measure(model, prec, 2, 48), estimated(model, args, prec, 2, 48)
        assert within(measured, estimate, 0.15), (prec.dtype, measured, estimate)


def test_gradient_checkpointing_keeps_only_each_layers_input():
    model = models.load_base(MODEL, FP32, precision.placement(0, False))
    plain, _ = lora_model(model, False, FP32)
    without = measure(plain, FP32, 2, 64)
    model = models.load_base(MODEL, FP32, precision.placement(0, False))
    checkpointed, _ = lora_model(model, True, FP32)
    assert checkpointed.get_base_model().get_decoder().gradient_checkpointing
    with_gc = measure(checkpointed, FP32, 2, 64)
    layers, d = model.config.num_hidden_layers, model.config.hidden_size
    assert with_gc < without / 10
    assert with_gc >= layers * 2 * 64 * d * 4  # every layer's fp32 input is kept


def test_bnb_defaults_to_checkpointing_as_the_original():
    assert config.training_config(["--bnb"]).gradient_checkpointing is True
    assert config.training_config([]).gradient_checkpointing is False
    assert config.training_config(["--bnb", "--no-gradient_checkpointing"]).gradient_checkpointing is False
    assert config.training_config(["--gradient_checkpointing"]).gradient_checkpointing is True


@pytest.fixture(scope="module")
def llama2_folder(tmp_path_factory):
    """Llama-2-7B's shape written by hand: a config.json and a tokenizer, no weights."""
    folder = tmp_path_factory.mktemp("llama2") / "Llama-2-7b-hf"  # the paper's model by name: its folder is the original's
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA2_7B))
    for f in os.listdir(MODEL):
        if f.startswith(("tokenizer", "special_tokens")):
            shutil.copy(os.path.join(MODEL, f), folder / f)
    return str(folder)


def dry_run(folder, out, *extra):
    p = run(TRAIN, *PAPER, "--pretrained_ckpt", folder, "--data_root", SAMPLE, "--output_root", str(out),
            "--dry_run", "gpu", "--plan_json", *extra)
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stdout


def test_dry_run_of_the_papers_command_on_llama2_7b(llama2_folder, tmp_path):
    out = tmp_path / "experiments"
    before = sorted(tmp_path.rglob("*"))
    plan, text = dry_run(llama2_folder, out)
    gib = plan["memory_estimate_bytes"]["total"] / memory.GIB
    assert 4 < gib < 40 and plan["gradient_checkpointing"] is True, gib
    assert plan["fits_gib"] == {"24": True, "40": True, "48": True, "80": True}
    for key in ("experiment_dir", "tasks", "blocks", "optimizer_steps", "trainable_params", "gradient_checkpointing"):
        assert key in plan
    assert set(plan["memory_estimate_bytes"]) >= {"weights", "adapter_and_optimizer", "activations", "logits", "total"}
    assert plan["trainable_params"] == 32 * 8 * ((4096 + 4096) * 2 + (4096 + 11008))  # q, v, up at r=8
    assert plan["tasks"]["boolq"] == {"rows": 120, "source": os.path.join(SAMPLE, "boolq", "train.jsonl")}
    assert plan["experiment_dir"].endswith("classification-sampleFraction-0.99_epochs-5_rank-8_dropout-0.1-"
                                           "q_proj,v_proj,up_proj-4bit")
    assert "peak memory per device" in text and sorted(tmp_path.rglob("*")) == before  # nothing written
    no_gc, _ = dry_run(llama2_folder, out, "--no-gradient_checkpointing")
    assert no_gc["memory_estimate_bytes"]["total"] > 40 * memory.GIB and no_gc["fits_gib"]["80"] is False
    assert no_gc["memory_estimate_bytes"]["weights"] == plan["memory_estimate_bytes"]["weights"]


def test_dry_run_prints_words_and_json_only_when_asked(tmp_path, capsys):
    """--dry_run prints the plan in short lines of words; the whole plan as one line of JSON comes only with
    --plan_json, as the last line, and holds what the words say."""
    import llama2_classification_multi_tasks as train

    argv = ["--pretrained_ckpt", MODEL, "--data_root", SAMPLE, "--tasks", "CB", "--target_modules", "up_proj",
            "--max_samples", "8", "--max_seq_length", "64", "--dtype", "fp32", "--dry_run", "--output_root",
            str(tmp_path / "out")]
    capsys.readouterr()
    train.main(argv)
    words = capsys.readouterr().out.strip().splitlines()
    assert words[-1].startswith("  ") and "peak memory per device" in "\n".join(words)
    assert not any(line.lstrip().startswith("{") for line in words) and max(map(len, words)) < 300
    train.main([*argv, "--plan_json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:-1] == words
    plan = json.loads(lines[-1])
    assert plan["target_modules"] == ["up_proj"] and plan["tasks"]["CB"]["rows"] == 8
    assert f"{plan['optimizer_steps']} optimizer steps" in "\n".join(words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_dry_run_on_every_architecture_counts_its_lora_activations(model_type, tmp_path, capsys):
    """--dry_run on a tiny model of every architecture the roles table knows: it plans (no missing config
    attribute: GPT-2's n_inner, OPT's ffn_dim, Falcon's ffn_hidden_size...) and its activation term holds each
    adapted module's dropout mask, input and rank-r projection, with the input widths read from the model."""
    import llama2_classification_multi_tasks as train
    from tiny_models import tiny_model_folder

    # qwen3_moe's dense block (its last, mlp_only_layers) has names peft rewrites: one block of experts only
    folder = tiny_model_folder(tmp_path, model_type, layers=1 if model_type == "qwen3_moe" else 2)
    capsys.readouterr()
    train.main(["--pretrained_ckpt", folder, "--data_root", SAMPLE, "--tasks", "CB", "--target_modules",
                "attention_qv", "values", "--dropout", "0" if model_type in MOE else "0.1", "--max_samples", "8",
                "--per_device_train_batch_size", "2", "--max_seq_length", "64", "--dtype", "fp32", "--dry_run",
                "--plan_json", "--output_root", str(tmp_path / "out")])
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = models.meta_model(models.load_config(folder))
    inputs = {}
    for path, _ in plan["adapted"]:  # the input width of each adapted module or expert parameter, by hand
        parent, _, leaf = path.rpartition(".")
        try:
            module = model.get_submodule(path)
            width = module.in_features if isinstance(module, torch.nn.Linear) else module.weight.shape[0]  # Conv1D
        except AttributeError:  # a 3D parameter of the experts: (experts, out, in), or (experts, in, out)
            owner = model.get_submodule(parent)
            width = getattr(owner, leaf).shape[1 if getattr(owner, "is_transposed", False) else 2]
        inputs.setdefault(structure.layer_of(path), []).append(width)
    widths = inputs[min(inputs)]
    assert widths and all(w > 0 for w in widths)
    prec = precision.precision("fp32", False, "train", bf16_cpu=False)
    s = memory.shapes(model.config, memory.model_widths(model, [p for p, _ in plan["adapted"]])[0])
    with_lora = memory.layer_activation_bytes(s, widths, 8, 0.1 if model_type not in MOE else 0, prec, False)
    without = memory.layer_activation_bytes(s, [], 8, 0.1 if model_type not in MOE else 0, prec, False)
    mask = 4 if model_type not in MOE else 0
    assert with_lora - without == sum(mask * w + 4 * w + 4 * 8 for w in widths) > 0
    layers, tokens = model.config.num_hidden_layers, 2 * 64
    ffn, planned_inputs, products = memory.model_widths(model, [p for p, _ in plan["adapted"]])
    assert sorted(planned_inputs) == sorted(widths) and ffn > 0
    assert plan["memory_estimate_bytes"]["activations"] == layers * tokens * memory.layer_activation_bytes(
        s, planned_inputs, 8, 0.1 if model_type not in MOE else 0, prec, False, products) + (4 * s["d"] + 4) * tokens


# how each architecture of the roles table encodes positions, by its modelling code: a learned table (GPT-2's wpe,
# OPT's embed_positions) or rotary; Falcon with alibi=True runs on ALiBi
ABSOLUTE = {"gpt2", "opt"}


@pytest.mark.parametrize("model_type,alibi", [(t, False) for t in MODEL_TYPES] + [("falcon", True)])
def test_blocks_longer_than_the_models_positions(model_type, alibi, tmp_path, capsys):
    """--max_seq_length past the model's positions: one line before any weight loads where positions are a
    learned table, a warning naming the extrapolation (RoPE, ALiBi) where they are not; within them, nothing."""
    import llama2_classification_multi_tasks as train
    from tiny_models import tiny_config, tokenizer

    folder = str(tmp_path / model_type)
    layers = 1 if model_type == "qwen3_moe" else 2  # its dense block has names peft rewrites: experts only
    tiny_config(model_type, layers, **({"alibi": True} if alibi else {}),
                max_position_embeddings=32).save_pretrained(folder)
    tokenizer().save_pretrained(folder)  # a config and a tokenizer, no weights: nothing may load them
    argv = ["--pretrained_ckpt", folder, "--data_root", SAMPLE, "--tasks", "CB", "--target_modules", "values",
            "--dropout", "0", "--max_samples", "8", "--dtype", "fp32", "--dry_run", "--output_root", str(tmp_path / "out")]
    kind = "alibi" if alibi else "absolute" if model_type in ABSOLUTE else "rope"
    assert models.position_kind(models.load_config(folder)) == kind
    if kind == "absolute":
        with pytest.raises(utils.UserError, match=f"--max_seq_length 64 is more than the 32 positions of {folder} "
                                                  f"\\(a learned table"):
            train.main([*argv, "--max_seq_length", "64"])
    else:
        capsys.readouterr()
        train.main([*argv, "--max_seq_length", "64"])
        out = capsys.readouterr().out
        assert f"warning: --max_seq_length 64 is more than the 32 positions {folder} was trained with: " \
               f"{'RoPE' if kind == 'rope' else 'ALiBi'} extrapolates" in out
    capsys.readouterr()
    train.main([*argv, "--max_seq_length", "32"])
    assert "positions" not in capsys.readouterr().out.split("{")[0]
