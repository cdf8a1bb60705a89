"""scripts/get_real_data.py with a stand-in hub: the files it writes are read by --data_root, and each split is
checked against the rows the figures used (count and content fingerprint)."""

import importlib.util
import json
import os
import re

import pytest

from conftest import ROOT, SAMPLE
from keys_values import data
from utils import UserError


@pytest.fixture
def script(monkeypatch):
    spec = importlib.util.spec_from_file_location("get_real_data", os.path.join(ROOT, "scripts", "get_real_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_rows(task, split):
    """Stand-in hub rows: the sample data's (BoolQ's validation split repeated to the official 3,270 rows)."""
    with open(os.path.join(SAMPLE, task, f"{split}.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return (rows * (3270 // len(rows) + 1))[:3270] if task == "boolq" else rows


def test_rows_are_written_where_data_root_reads_them_and_checked(script, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(script, "hub_reachable", lambda: True)
    monkeypatch.setattr(script, "hub_rows", lambda task, split: calls.append((task, split)) or sample_rows(task, split))
    script.main(["--root", str(tmp_path), "--tasks", "CB", "boolq"])
    assert calls == [("CB", "train"), ("CB", "validation"), ("boolq", "validation")]  # BoolQ: validation only
    out = capsys.readouterr().out
    assert os.path.isfile(tmp_path / "CB" / "train.jsonl") and "DIFFERENT (expected 250 rows, 96f112ae476f)" in out
    boolq = [json.loads(line) for line in open(tmp_path / "boolq" / "train.jsonl")]
    assert len(boolq) == script.BOOLQ_TRAIN and re.search(r"boolq/validation.jsonl +500 ", out)
    # rows equal to the figures' (here: the fingerprint of these very rows) are said to be the same
    import prompts
    from keys_values import identity

    examples, _ = data.load(prompts.TASKS["CB"], str(tmp_path), "train")
    monkeypatch.setitem(script.EXPECTED, ("CB", "train"), (len(examples), identity.data_fingerprint({"CB": examples})))
    script.main(["--root", str(tmp_path / "again"), "--tasks", "CB"])
    assert "train.jsonl" in capsys.readouterr().out.split("the same")[0]


def test_offline_is_one_line(script, monkeypatch, tmp_path):
    monkeypatch.setattr(script, "hub_reachable", lambda: False)
    with pytest.raises(UserError, match="the hub cannot be reached"):
        script.main(["--root", str(tmp_path)])
    assert not os.listdir(tmp_path)
