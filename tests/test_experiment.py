"""keys_values/experiment/: checkpoints that cannot be resumed from, files written whole, the records read back
(the original code's folders too)."""

import json
import os

import pytest

import utils
from keys_values import config, models
from keys_values.experiment import records
from utils import UserError


def test_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        models.resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="run `make model`"):
        models.resolve_checkpoint(str(tmp_path / config.EMBEDDED_MODEL))
    with pytest.raises(UserError, match="no config.json"):
        models.resolve_checkpoint(str(tmp_path))
    with pytest.raises(UserError, match="cannot load it"):  # a hub id while offline
        models.load_config("NoSuchOrg/no-such-model-xyz")


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
