"""Shared pieces: folder names, tokenising whole texts and packing them, metrics on hand-computed examples,
model-name checks, files, and the precision and placement decisions. Fast: the only model touched is the
embedded one's config and tokenizer (and a SentencePiece tokenizer the test trains itself)."""

import json
import os
import random

import pytest

import prompts
import utils
from conftest import MODEL, SAMPLE
from keys_values import config, data, identity, models, packing, precision, scoring
from keys_values.experiment import layout, records
from keys_values.training import trainer
from prompts import TASKS
from utils import UserError


def ident(**changes):
    """The identity of the original's paper run (4-bit, q,v,up on two tasks) with `changes`."""
    args = config.training_config(["--tasks", "20_Newsgroups_Fixed", "boolq", "--bnb"])
    base = identity.training(args, ["q_proj", "v_proj", "up_proj"], "bf16", 1, "d" * 12)
    return {**base, **changes}


def test_the_originals_settings_keep_the_originals_folder_name():
    assert layout.experiment_dir("experiments", ident()) == (
        "experiments/20_Newsgroups_Fixed,boolq/classification-sampleFraction-0.99_epochs-5_rank-8_dropout-0.1-"
        "q_proj,v_proj,up_proj-4bit")
    standard = ident(bnb=False, per_device_train_batch_size=4, gradient_accumulation_steps=16, target_modules=None,
                     tasks=["CB"], train_sample_fraction=0.5, epochs=1, lora_r=4, dropout=0.0)
    assert layout.experiment_dir("e", standard) == "e/CB/classification-sampleFraction-0.5_epochs-1_rank-4_dropout-0.0-standard"
    named = layout.experiment_dir("e", ident(loss_on="completion", shorten_to_block=True, max_steps=3, seed=43))
    assert named.endswith("-q_proj,v_proj,up_proj-loss-completion-shortened-steps3-seed43-4bit")


# every setting that changes the trained adapter, and a value other than the original's
RECIPE_CHANGES = {"model": "SmolLM2-135M-Instruct", "max_samples": 100, "per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": 1, "processes": 2, "learning_rate": 2e-3, "lora_alpha": 32,
                  "max_seq_length": 256, "dtype": "fp32"}


@pytest.mark.parametrize("key,value", RECIPE_CHANGES.items())
def test_every_recipe_setting_changes_the_folder_by_a_stable_suffix(key, value):
    base = layout.folder_name(ident())
    changed = layout.folder_name(ident(**{key: value}))
    assert changed != base and changed.startswith(base[: -len("-4bit")]) and changed.endswith("-4bit")
    assert changed == layout.folder_name(ident(**{key: value}))  # stable
    suffix = changed[len(base) - len("-4bit"): -len("-4bit")]
    assert len(suffix) == len("-h12345678") and identity.hashed_part(ident(**{key: value}))[0] == {key: value}


def test_every_training_setting_is_in_the_identity_and_compared():
    """A reuse check that ignores a recipe setting would reuse a run made another way: each differs."""
    a = ident()
    for key, value in {**RECIPE_CHANGES, "epochs": 3, "lora_r": 4, "dropout": 0.05, "train_sample_fraction": 0.5,
                       "target_modules": ["q_proj"], "bnb": False, "loss_on": "completion", "shorten_to_block": True,
                       "max_steps": 5, "seed": 7, "tasks": ["CB"], "data": "e" * 12}.items():
        assert key in identity.TRAINING
        differ = identity.differences(a, {**a, key: value})
        assert len(differ) == 1 and (key in differ[0] or key == "data"), (key, differ)
    assert identity.differences(a, dict(a)) == []


def test_tasks_of_either_folder_name():
    assert layout.tasks_of_folder("boolq,CB") == ["boolq", "CB"]
    assert layout.tasks_of_folder("['boolq', 'CB']") == ["boolq", "CB"]  # the original's list repr
    assert layout.tasks_of_folder("['broken") == []


# ---- tokenising whole texts and packing them ------------------------------------------------------------

def toy_encoded():
    # (ids, mask): the label tokens and EOS (id 2) have mask 1
    return [([10, 11, 12, 30, 2], [0, 0, 0, 1, 1]), ([20, 21, 31, 32, 2], [0, 0, 1, 1, 1]),
            ([40, 41, 42, 43, 44, 33, 2], [0, 0, 0, 0, 0, 1, 1])]


def test_pack_cuts_the_stream_and_drops_the_last_incomplete_block():
    encoded = toy_encoded()
    blocks = packing.pack(encoded, block_size=4, pad_id=0, loss_on="all", seed=3)
    assert len(blocks) == 4 and all(b["attention_mask"] == [1] * 4 for b in blocks)  # 17 tokens: 4 blocks, 1 dropped
    flat = [t for b in blocks for t in b["input_ids"]]
    order = [e for e in encoded]
    random.Random(3).shuffle(order)
    assert flat == [t for ids, _ in order for t in ids][:16]  # the texts one after another, cut anywhere
    for b in blocks:  # 'all': the labels are the inputs
        assert b["labels"] == b["input_ids"]
    padded = packing.pack(encoded, 4, 0, seed=3, drop_last=False)  # --shorten_to_block keeps and pads it
    assert len(padded) == 5 and padded[-1]["attention_mask"] == [1, 0, 0, 0] and padded[-1]["labels"][1:] == [-100] * 3


def test_pack_shuffles_with_the_seed():
    encoded = [([i, 2], [0, 1]) for i in range(10, 40)]
    a = packing.pack(encoded, 8, 0, seed=1)
    assert a == packing.pack(encoded, 8, 0, seed=1) and a != packing.pack(encoded, 8, 0, seed=2)


def test_completion_mask_across_block_boundaries():
    blocks = packing.pack(toy_encoded(), block_size=4, pad_id=0, loss_on="completion", seed=3, drop_last=False)
    flat_ids = [t for b in blocks for t in b["input_ids"]]
    flat_labels = [t for b in blocks for t in b["labels"]]
    answer_tokens = {30, 31, 32, 33, 2}
    for t, y in zip(flat_ids, flat_labels):
        assert y == (t if t in answer_tokens else -100)
    assert sum(y != -100 for y in flat_labels) == 2 + 3 + 2
    assert any(b["labels"][0] != -100 for b in blocks[1:])  # some block starts inside an answer


def sentencepiece_tokenizer(tmp_path):
    """A Llama tokenizer (SentencePiece BPE with byte fallback, BOS added, a dummy prefix) trained here in
    well under a second on the task templates, loaded through transformers' Llama tokenizer class."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import LlamaTokenizer

    rng = random.Random(0)
    words = "the river bridge is old Anna visited confirmed denied that whether it was yes no town".split()
    corpus = [prompts.training_text(TASKS[n], {k: " ".join(rng.choice(words) for _ in range(5)) for k in TASKS[n].fields},
                                    lab) for n in ("boolq", "COPA", "CB") for lab in prompts.choices(TASKS[n])] * 20
    (tmp_path / "corpus.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, character_coverage=1.0, minloglevel=2)
    tok = LlamaTokenizer.from_pretrained(str(tmp_path), add_bos_token=True)
    tok.pad_token = tok.eos_token
    return tok


def sample_examples(n=12):
    return {name: data.load(TASKS[name], SAMPLE, "train", n)[0] for name in ("boolq", "COPA", "CB")}


@pytest.mark.parametrize("which", ["embedded", "sentencepiece"])
def test_training_texts_are_tokenised_whole_as_the_original(which, tmp_path):
    tok = models.load_tokenizer(MODEL) if which == "embedded" else sentencepiece_tokenizer(tmp_path)
    per_task = sample_examples()
    args = config.training_config(["--tasks", "boolq", "COPA", "CB", "--max_seq_length", "64", "--loss_on", "completion"])
    blocks = packing.training_blocks(per_task, tok, args)
    texts = [(prompts.prompt_text(TASKS[n], e.fields), e.label) for n, es in per_task.items() for e in es]
    random.Random(args.seed).shuffle(texts)
    stream, mask = [], []
    for prompt, label in texts:  # each text tokenised in one call, then EOS; the label's tokens found by decoding
        ids = tok(prompt + label)["input_ids"]
        k = max(i for i in range(len(ids) + 1) if prompt.startswith(tok.decode(ids[:i], skip_special_tokens=True)))
        assert tok.decode(ids[k:]).strip() == label  # the label's tokens: what follows the prompt's
        stream += ids + [tok.eos_token_id]
        mask += [0] * k + [1] * (len(ids) - k) + [1]
    n = len(stream) // 64 * 64  # the last, incomplete block dropped
    cut = [(stream[s:s + 64], mask[s:s + 64]) for s in range(0, n, 64)]
    kept = [(ids, m) for ids, m in cut if any(m[1:])]  # a block in which no token is predicted teaches nothing
    assert len(blocks) == len(kept) > 0
    assert [b["input_ids"] for b in blocks] == [ids for ids, _ in kept]
    assert [[y != -100 for y in b["labels"]] for b in blocks] == [[bool(x) for x in m] for _, m in kept]
    if which == "sentencepiece":  # a label tokenised alone differs from the same label inside its text
        assert tok("true", add_special_tokens=False)["input_ids"] != \
            tok("### Answer:true")["input_ids"][-len(tok("true", add_special_tokens=False)["input_ids"]):]
        assert stream[0] == tok.bos_token_id  # every text starts with its BOS, as the original's


def test_shorten_to_block_keeps_every_text_within_a_block_with_its_label():
    tok = models.load_tokenizer(MODEL)
    task = TASKS["20_Newsgroups_Fixed"]
    per_task = {task.name: [prompts.Example({"text": "word " * 3000}, "sci.space", ("sci.space",))] * 3}
    args = config.training_config(["--tasks", task.name, "--max_seq_length", "64", "--shorten_to_block"])
    blocks = packing.training_blocks(per_task, tok, args)
    text = tok.decode([t for t, m in zip(blocks[0]["input_ids"], blocks[0]["attention_mask"]) if m])
    assert text.startswith("### Sentence:word") and text.count("### Class:sci.space<|im_end|>") >= 1
    assert len(blocks) == 3 and blocks[-1]["attention_mask"][-1] == 0  # one text a block, the last padded
    args = config.training_config(["--tasks", task.name, "--max_seq_length", "64"])  # the stream: long texts continue
    assert len(packing.training_blocks(per_task, tok, args)) > 100


def test_long_prompts_are_shortened_in_the_text_field_never_the_cue():
    tok = models.load_tokenizer(MODEL)
    task = TASKS["20_Newsgroups_Fixed"]
    fields, ids = packing.fit_prompt(tok, task, {"text": "word " * 3000}, budget=100)
    assert len(ids) <= 100 and tok.decode(ids).endswith(" ### Class:") and tok.decode(ids).startswith("### Sentence:word")
    assert ids == tok(prompts.prompt_text(task, fields))["input_ids"]


def test_target_module_names_checked_against_the_model():
    from keys_values import roles

    model = models.meta_model(models.load_config(MODEL))
    res = roles.resolve(["q_proj", "v_proj", "gate_proj"], model)
    assert res.target_modules == ["q_proj", "v_proj", "gate_proj"] and len(res.paths) == 3 * 30
    with pytest.raises(UserError, match="unknown target module 'up_prj'; this model's linear modules are: down_proj"):
        roles.resolve(["q_proj", "up_prj"], model)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        models.resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="run `make model`"):
        models.resolve_checkpoint(str(tmp_path / config.EMBEDDED_MODEL))
    with pytest.raises(UserError, match="no config.json"):
        models.resolve_checkpoint(str(tmp_path))
    with pytest.raises(UserError, match="cannot load it"):  # a hub id while offline
        models.load_config("NoSuchOrg/no-such-model-xyz")


# ---- metrics ---------------------------------------------------------------------------------------------

def test_metrics_on_a_hand_computed_example():
    gold = [("true",), ("true",), ("false",), ("true",)]
    preds = ["true", "false", "false", "maybe"]
    m = scoring.metrics(gold, preds, ["true", "false", "False", "maybe"], ["true", "false"])
    assert m["accuracy"] == 0.5 and m["accuracy_strict"] == 0.25
    assert m["micro_f1"] == m["precision"] == m["recall"] == 0.5
    # macro F1 over the labels that occur: true P=1 R=1/3 -> 1/2; false P=1/2 R=1 -> 2/3; maybe 0
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["majority_baseline"] == 0.75 and m["invalid_rate"] == 0.25 and m["n"] == 4
    lo, hi = m["accuracy_ci95"]
    assert lo == pytest.approx(0.1500, abs=1e-3) and hi == pytest.approx(0.8500, abs=1e-3)  # Wilson, 2 of 4
    assert "exact_match" not in m


def test_squad_scores_as_the_official_script():
    assert scoring.squad_normalize("The  Eiffel-Tower!") == "eiffeltower"  # punctuation removed, not spaced
    assert scoring.squad_scores("The Eiffel tower!", ["eiffel tower"]) == (1.0, 1.0)
    em, f1 = scoring.squad_scores("red apples and pears", ["green apples"])
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2))
    # several golds: the maximum of each score over them (EM from one gold, F1 possibly from another)
    em, f1 = scoring.squad_scores("the old town", ["old town hall", "The Old Town.", "new town"])
    assert em == 1.0 and f1 == 1.0  # the second gold matches exactly; against the first alone: EM 0, F1 0.8
    assert scoring.squad_scores("the old town", ["old town hall"]) == (0.0, pytest.approx(0.8))
    em, f1 = scoring.squad_scores("old harbour", ["old town hall", "harbour", "new town"])
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))  # 'harbour': P 1/2, R 1
    assert scoring.squad_scores("", ["x"]) == (0.0, 0.0) and scoring.squad_scores("a", ["the"]) == (1.0, 1.0)
    m = scoring.metrics([("rice",), ("fish", "fish soup")], ["rice", "the fish soup"], ["rice", "the fish soup"])
    assert m["exact_match"] == 1.0 and m["f1"] == 1.0 and m["accuracy"] == 0.5  # accuracy: the first gold only


# ---- files and folders -------------------------------------------------------------------------------------

def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    utils.write_json(str(path), {"a": 1})
    seen = []

    def failing_fsync(fd):  # fails inside the write, after the temporary file was created and written
        seen.extend(f for f in os.listdir(tmp_path) if f.startswith(".tmp-"))
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        utils.write_json(str(path), {"a": 2})
    assert seen and json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["m.json"]


def test_read_experiment_errors(tmp_path):
    with pytest.raises(UserError, match="holds no training run"):
        records.read_experiment(str(tmp_path))
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(UserError, match="its training did not finish .*--resume"):
        records.read_experiment(str(tmp_path))
    (tmp_path / "checkpoint-2").rmdir()
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "adapter_config.json").write_text("{not json")
    with pytest.raises(UserError, match="adapter_config.json is corrupt"):
        records.read_experiment(str(tmp_path))
    (tmp_path / "assets" / "adapter_config.json").write_text('{"target_modules": ["q_proj"]}')
    with pytest.raises(UserError, match="no experiment.json and its name is not the original's"):
        records.read_experiment(str(tmp_path))


def test_a_folder_written_by_the_original_is_read_from_its_names(tmp_path):
    exp = (tmp_path / "['boolq', 'CB']" /
           "classification-sampleFraction-0.99_epochs-5_rank-8_dropout-0.1-['q_proj', 'v_proj', 'up_proj']-4bit")
    (exp / "assets").mkdir(parents=True)
    (exp / "assets" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "NousResearch/Llama-2-7b-hf", "target_modules": ["v_proj", "up_proj", "q_proj"]}))
    (exp / "4194304_total_3504607232.txt").write_text("4194304\n3504607232\n0.0012\n")
    rec = records.read_experiment(str(exp))
    assert rec["layout"] == "original" and rec["trainable_params"] == 4194304 and rec["total_params"] == 3504607232
    a = rec["args"]
    assert a["tasks"] == ["boolq", "CB"] and a["bnb"] is True and a["pretrained_ckpt"] == "NousResearch/Llama-2-7b-hf"
    assert (a["epochs"], a["lora_r"], a["dropout"], a["train_sample_fraction"]) == (5, 8, 0.1, 0.99)
    assert rec["target_modules"] == ["q_proj", "up_proj", "v_proj"]
    standard = tmp_path / "x" / "classification-sampleFraction-0.5_epochs-1_rank-4_dropout-0.0-standard"
    (standard / "assets").mkdir(parents=True)
    (standard / "assets" / "adapter_config.json").write_text('{"target_modules": ["q_proj"]}')
    assert records.read_experiment(str(standard))["args"]["bnb"] is False


# ---- precision and placement ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,bnb,purpose,cpu_bf16,expected", [
    ("auto", False, "train", False, ("fp32", False, "fp32")),  # bf16 not faster on this CPU: fp32
    ("auto", False, "train", True, ("bf16", True, "fp32")),  # bf16 faster: autocast over an fp32 base, as the original
    ("auto", False, "generate", True, ("fp32", False, "fp32")),  # evaluation stays fp32 on a CPU
    ("auto", False, "rank", True, ("fp32", False, "fp32")),
    ("bf16", False, "generate", False, ("bf16", False, "bf16")),  # a given dtype wins; autocast only trains
    ("bf16", False, "train", False, ("bf16", True, "fp32")),
    ("fp16", False, "rank", False, ("fp16", False, "fp16")),
    ("auto", True, "train", False, ("fp32", False, "checkpoint")),  # 4-bit from the checkpoint's own weights
    ("auto", True, "train", True, ("bf16", False, "checkpoint")),  # 4-bit computing in bf16, no autocast on a CPU
    ("fp32", True, "train", True, ("fp32", False, "checkpoint")),  # a given dtype wins with 4-bit too
])
def test_precision_on_a_cpu(dtype, bnb, purpose, cpu_bf16, expected):
    if __import__("torch").cuda.is_available():
        pytest.skip("a CPU's rules")
    p = precision.precision(dtype, bnb, purpose, bf16_cpu=cpu_bf16)
    assert (p.dtype, p.autocast, p.weights) == expected and p.bnb == bnb and not p.tf32 and p.why


@pytest.mark.parametrize("speedup,chosen", [(2.3, "bf16"), (1.0, "fp32"), (0.01, "fp32")])
def test_auto_trains_in_bf16_where_the_probe_measures_it_faster(monkeypatch, speedup, chosen):
    if __import__("torch").cuda.is_available():
        pytest.skip("a CPU's rules")
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda shape=None, cache=True: speedup)
    p = precision.precision("auto", False, "train")
    assert p.dtype == chosen and f"{speedup}x" in p.why  # the measurement is the reason, recorded
    assert precision.precision("auto", False, "generate").dtype == "fp32"


def test_the_bf16_probe_measures_this_cpu_and_remembers(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "_probes", {})
    ratio = precision.cpu_bf16_speedup((256, 128, 384))
    assert ratio > 0
    assert (tmp_path / "kv-lora" / "bf16-probe.json").is_file()
    monkeypatch.setattr(precision, "_probes", {})  # another process on this machine: the same answer, not measured again
    monkeypatch.setattr("torch.randn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured again")))
    assert precision.cpu_bf16_speedup((256, 128, 384)) == ratio


def test_precision_planned_for_a_gpu():
    p = precision.precision("auto", True, "train", device="gpu")
    assert (p.dtype, p.bnb, p.autocast, p.tf32) == ("bf16", True, True, True)  # the original's bf16 + tf32
    assert precision.precision("auto", False, "generate", device="gpu").dtype == "bf16"


@pytest.mark.parametrize("gpus,distributed,rank,expected", [
    (0, False, 0, (None, 0, False)),
    (1, False, 0, ("auto", 1, False)),  # the original: device_map="auto"
    (4, False, 0, ("auto", 1, False)),  # split over the 4 GPUs in one process: never DataParallel
    (4, True, 3, ({"": 3}, 1, True)),  # accelerate launch: a full copy per process on its own GPU
    (0, True, 1, (None, 0, True)),
])
def test_placement(gpus, distributed, rank, expected):
    p = precision.placement(gpus, distributed, rank)
    assert (p.device_map, p.n_gpu, p.data_parallel) == expected and p.what


def test_training_arguments_follow_precision_and_placement(tmp_path):
    args = config.training_config(["--tasks", "CB", "--bnb"])
    targs = trainer.training_arguments(args, str(tmp_path), precision.precision("auto", True, "train", bf16_cpu=False),
                                     precision.placement(0, False))
    assert targs.use_cpu and targs.n_gpu == 0 and targs.optim == "adamw_torch" and not targs.bf16
    assert (targs.per_device_train_batch_size, targs.gradient_accumulation_steps) == (32, 2)  # the original's
    assert targs.lr_scheduler_type == "constant" and targs.max_grad_norm == 0.3 and targs.learning_rate == 2e-4


def test_the_identity_takes_every_recipe_flag_from_the_command_line():
    """Each flag that changes the trained adapter, given on the command line, is in the identity with its value
    (a flag left out of it would let a run made another way be reused)."""
    given = {"--max_samples": ("max_samples", 100), "--per_device_train_batch_size": ("per_device_train_batch_size", 8),
             "--gradient_accumulation_steps": ("gradient_accumulation_steps", 3), "--learning_rate": ("learning_rate", 1e-3),
             "--lora_alpha": ("lora_alpha", 32), "--max_seq_length": ("max_seq_length", 128), "--epochs": ("epochs", 2),
             "--lora_r": ("lora_r", 4), "--dropout": ("dropout", 0.05), "--train_sample_fraction": ("train_sample_fraction", 0.5),
             "--max_steps": ("max_steps", 7), "--seed": ("seed", 3), "--loss_on": ("loss_on", "completion")}
    argv = ["--tasks", "CB", "--pretrained_ckpt", "some/Model-X", "--shorten_to_block", "--bnb"]
    for flag, (_, value) in given.items():
        argv += [flag, str(value)]
    ident = identity.training(config.training_config(argv), ["q_proj"], "fp32", 2, "f" * 12)
    for flag, (key, value) in given.items():
        assert ident[key] == value, flag
    assert (ident["model"], ident["shorten_to_block"], ident["bnb"], ident["processes"], ident["dtype"], ident["data"],
            ident["target_modules"], ident["tasks"]) == ("Model-X", True, True, 2, "fp32", "f" * 12, ["q_proj"], ["CB"])
    assert set(ident) == set(identity.TRAINING)
