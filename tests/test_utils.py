"""Shared pieces: folder names, packing and loss masks, metrics on hand-computed examples, model-name
checks, files. Fast: the only model touched is the embedded one's config and tokenizer."""

import json
import os

import pytest

import prompts
import utils
from conftest import ROOT
from prompts import TASKS, UserError

MODEL = os.path.join(ROOT, utils.EMBEDDED_MODEL)


def test_experiment_folder_name():
    name = utils.experiment_dir("experiments", ["20_Newsgroups_Fixed", "boolq"], 0.99, 5, 8, 0.1,
                                ["q_proj", "v_proj", "up_proj"], True)
    assert name == ("experiments/20_Newsgroups_Fixed,boolq/classification-sampleFraction-0.99_epochs-5_rank-8_"
                    "dropout-0.1-q_proj,v_proj,up_proj-4bit")
    assert utils.experiment_dir("e", ["CB"], 0.5, 1, 4, 0.0, None, False) == \
        "e/CB/classification-sampleFraction-0.5_epochs-1_rank-4_dropout-0.0-standard"
    assert utils.experiment_dir("e", ["CB"], 0.99, 1, 8, 0.1, ["q_proj"], False, "completion").endswith(
        "dropout-0.1-q_proj-loss-completion-standard")


def toy_examples():
    # (ids, mask): prompt tokens have mask 0, label tokens and EOS (id 2) mask 1
    return [([10, 11, 12, 30, 2], [0, 0, 0, 1, 1]), ([20, 21, 31, 32, 2], [0, 0, 1, 1, 1]),
            ([40, 41, 42, 43, 44, 33, 2], [0, 0, 0, 0, 0, 1, 1])]


def test_pack_keeps_every_token_in_fixed_blocks():
    examples = toy_examples()
    blocks = utils.pack(examples, block_size=4, pad_id=0, loss_on="all", seed=3)
    assert all(len(b["input_ids"]) == len(b["labels"]) == len(b["attention_mask"]) == 4 for b in blocks)
    flat = [t for b in blocks for t, m in zip(b["input_ids"], b["attention_mask"]) if m]
    assert sorted(flat) == sorted(t for ids, _ in examples for t in ids)  # every token, once
    assert flat.count(2) == 3  # EOS ends each example
    for b in blocks:  # 'all': labels are the inputs, padding ignored
        assert b["labels"] == [t if m else -100 for t, m in zip(b["input_ids"], b["attention_mask"])]
    assert blocks[-1]["attention_mask"] == [1, 0, 0, 0]  # 17 tokens: the last block is padded
    seqs = [tuple(flat[i:i + n]) for i in range(len(flat)) for n in (5, 7)]
    for ids, _ in examples:  # examples stay whole and in one piece across block boundaries
        assert tuple(ids) in seqs


def test_pack_shuffles_with_the_seed():
    examples = [([i, 2], [0, 1]) for i in range(10, 40)]
    a = utils.pack(examples, 8, 0, seed=1)
    assert a == utils.pack(examples, 8, 0, seed=1) and a != utils.pack(examples, 8, 0, seed=2)


def test_completion_mask_across_block_boundaries():
    examples = toy_examples()
    blocks = utils.pack(examples, block_size=4, pad_id=0, loss_on="completion", seed=3)
    flat_ids = [t for b in blocks for t in b["input_ids"]]
    flat_labels = [t for b in blocks for t in b["labels"]]
    answer_tokens = {30, 31, 32, 33, 2}
    for t, y in zip(flat_ids, flat_labels):
        assert y == (t if t in answer_tokens else -100)
    assert sum(y != -100 for y in flat_labels) == 2 + 3 + 2
    assert any(b["labels"][0] != -100 for b in blocks[1:])  # some block starts inside an answer


def test_encode_example_masks_label_and_eos():
    tok = utils.load_tokenizer(MODEL)
    task = TASKS["CB"]
    fields, label = {"premise": "It rained.", "hypothesis": "It was wet."}, "not_a_label_but_long"
    ids, mask = utils.encode_example(tok, task, fields, label, max_len=512)
    answer = [t for t, m in zip(ids, mask) if m]
    assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]) == label
    assert tok.decode([t for t, m in zip(ids, mask) if not m]) == prompts.prompt_text(task, fields)


def test_long_texts_are_shortened_in_the_text_field_never_the_cue():
    tok = utils.load_tokenizer(MODEL)
    task = TASKS["20_Newsgroups_Fixed"]
    fields = {"text": "word " * 3000}
    ids = utils.encode_prompt(tok, task, fields, budget=100)
    assert len(ids) <= 100 and tok.decode(ids).endswith(" ### Class:") and tok.decode(ids).startswith("### Sentence:word")
    ids, mask = utils.encode_example(tok, task, fields, "sci.space", max_len=64)
    assert len(ids) <= 64 and tok.decode(ids).endswith("### Class:sci.space<|im_end|>")


def test_target_module_names_checked_against_the_model():
    config = utils.load_config(MODEL)
    assert utils.linear_module_names(config) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                 "v_proj"]
    utils.check_target_modules(["q_proj", "v_proj", "gate_proj"], config)
    with pytest.raises(UserError, match="unknown target module 'up_prj'; this model's linear modules are: down_proj"):
        utils.check_target_modules(["q_proj", "up_prj"], config)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        utils.resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="run `make model`"):
        utils.resolve_checkpoint(str(tmp_path / utils.EMBEDDED_MODEL))
    with pytest.raises(UserError, match="no config.json"):
        utils.resolve_checkpoint(str(tmp_path))
    with pytest.raises(UserError, match="cannot load it"):  # a hub id while offline
        utils.load_config("NoSuchOrg/no-such-model-xyz")


def test_metrics_on_a_hand_computed_example():
    labels = ["true", "true", "false", "true"]
    preds = ["true", "false", "false", "maybe"]
    m = utils.metrics(labels, preds, ["true", "false", "False", "maybe"], ["true", "false"])
    assert m["accuracy"] == 0.5 and m["accuracy_strict"] == 0.25
    assert m["micro_f1"] == m["precision"] == m["recall"] == 0.5
    # macro F1 over the labels that occur: true P=1 R=1/3 -> 1/2; false P=1/2 R=1 -> 2/3; maybe 0
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["majority_baseline"] == 0.75 and m["invalid_rate"] == 0.25 and m["n"] == 4
    lo, hi = m["accuracy_ci95"]
    assert lo == pytest.approx(0.1500, abs=1e-3) and hi == pytest.approx(0.8500, abs=1e-3)  # Wilson, 2 of 4


def test_squad_scores():
    assert utils.squad_scores("The Eiffel tower!", "eiffel tower") == (1.0, 1.0)
    em, f1 = utils.squad_scores("red apples and pears", "green apples")
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2))
    m = utils.metrics(["rice", "fish"], ["rice", "the fish soup"], ["rice", "the fish soup"])
    assert m["exact_match"] == 0.5 and m["f1"] == pytest.approx((1 + 2 * 0.5 * 1 / 1.5) / 2)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "m.json"
    utils.write_json(str(path), {"a": 1})

    class Boom:
        def __repr__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        utils.write_json(str(path), {"a": Boom()})
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["m.json"]


def test_read_experiment_errors(tmp_path):
    with pytest.raises(UserError, match="has no assets/"):
        utils.read_experiment(str(tmp_path))
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "adapter_config.json").write_text("{not json")
    with pytest.raises(UserError, match="adapter_config.json is corrupt"):
        utils.read_experiment(str(tmp_path))
