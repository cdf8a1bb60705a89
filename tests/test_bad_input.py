"""Every bad input is one line on stderr, exit code 2, naming the bad value, and nothing written."""

import json
import os
import subprocess
import sys

import pytest

import llama2_classification_multi_tasks as train
import llama2_classification_multi_tasks_inference as inference
import study
from conftest import MODEL, ROOT, SAMPLE
from keys_values import models
from utils import run_main

CB_ROW = {"premise": "p", "hypothesis": "h", "label": 0}


def data_root(tmp_path, rows):
    os.makedirs(tmp_path / "data" / "CB", exist_ok=True)
    with open(tmp_path / "data" / "CB" / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(tmp_path / "data")


def fake_experiment(tmp_path, adapter_config, record=True):
    exp = tmp_path / "exp"
    (exp / "assets").mkdir(parents=True)
    if adapter_config is not None:
        (exp / "assets" / "adapter_config.json").write_text(adapter_config)
    if record:
        (exp / "experiment.json").write_text(json.dumps({"args": {"tasks": ["CB"], "pretrained_ckpt": MODEL}}))
    return str(exp)


# (name, script, argv builder(tmp_path), text the message must contain)
CASES = [
    ("unknown task", train, lambda t: ["--tasks", "boolqq"], "unknown task 'boolqq'; choose from: 20_Newsgroups_Fixed"),
    ("unknown task, dry run", train, lambda t: ["--tasks", "boolqq", "--dry_run"],
     "unknown task 'boolqq'; choose from: 20_Newsgroups_Fixed"),
    ("misspelt module, dry run", train, lambda t: ["--tasks", "CB", "--target_modules", "q_proj", "up_prj", "--dry_run"],
     "unknown target module 'up_prj'; this model's linear modules are"),
    ("plan_json without a dry run", train, lambda t: ["--tasks", "CB", "--plan_json"],
     "--plan_json goes with --dry_run: it prints the plan, it does not train"),
    ("unknown flag", train, lambda t: ["--tasks", "CB", "--lora_rank", "4"], "unrecognized arguments: --lora_rank 4"),
    ("bad choice", train, lambda t: ["--tasks", "CB", "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    ("misspelt module", train, lambda t: ["--tasks", "CB", "--target_modules", "q_proj", "up_prj"],
     "unknown target module 'up_prj'; this model's linear modules are"),
    ("lora_r 0", train, lambda t: ["--tasks", "CB", "--lora_r", "0"], "--lora_r must be a positive integer, got 0"),
    ("lora_r negative", train, lambda t: ["--tasks", "CB", "--lora_r", "-4"], "--lora_r must be a positive integer, got -4"),
    ("fraction 0", train, lambda t: ["--tasks", "CB", "--train_sample_fraction", "0"],
     "--train_sample_fraction must be in (0, 1], got 0.0"),
    ("fraction above 1", train, lambda t: ["--tasks", "CB", "--train_sample_fraction", "1.5"],
     "--train_sample_fraction must be in (0, 1], got 1.5"),
    ("dropout 1", train, lambda t: ["--tasks", "CB", "--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    ("dropout negative", train, lambda t: ["--tasks", "CB", "--dropout", "-0.1"], "--dropout must be in [0, 1), got -0.1"),
    ("missing column", train, lambda t: ["--tasks", "CB", "--data_root", data_root(t, [CB_ROW, {"premise": "p", "label": 0}])],
     "train.jsonl row 1: missing column 'hypothesis'"),
    ("label outside the map", train, lambda t: ["--tasks", "CB", "--data_root", data_root(t, [{**CB_ROW, "label": 5}])],
     "train.jsonl row 0: label 5 is not one of [0, 1, 2]"),
    ("empty split", train, lambda t: ["--tasks", "CB", "--data_root", data_root(t, [])], "no usable rows for task CB"),
    ("missing dataset", train, lambda t: ["--tasks", "CB", "--data_root", str(t)], "no data for task 'CB' split 'train'"),
    ("missing base model", train, lambda t: ["--tasks", "CB", "--pretrained_ckpt", str(t / "no-model")],
     "no-model: no such model folder"),
    ("experiment without assets", inference, lambda t: ["--experiment_dir", str(t)], "holds no training run (no assets/ folder)"),
    ("corrupt adapter config", inference, lambda t: ["--experiment_dir", fake_experiment(t, "{\"target_mod")],
     "adapter_config.json is corrupt"),
    ("eval task without data", inference,
     lambda t: ["--experiment_dir", fake_experiment(t, '{"target_modules": ["q_proj"]}'), "--tasks", "RTE",
                "--data_root", str(t)], "no data for task 'RTE' split 'validation'"),
    ("eval unknown task", inference,
     lambda t: ["--experiment_dir", fake_experiment(t, '{"target_modules": ["q_proj"]}'), "--tasks", "XYZ"],
     "unknown task 'XYZ'"),
    ("eval folder neither ours nor the original's", inference,
     lambda t: ["--experiment_dir", fake_experiment(t, '{"target_modules": ["q_proj"]}', record=False)],
     "has no experiment.json and its name is not the original's"),
    ("study: unknown training flag", study, lambda t: ["--output_root", str(t / "out"), "--lora_rank", "4"],
     "unrecognized arguments: --lora_rank 4"),
    ("output root under a file", train, lambda t: ["--tasks", "CB", "--output_root", a_file(t) + "/runs"],
     "is a file, not a folder"),
    ("study: output root under a file", study, lambda t: ["--tasks", "CB", "--output_root", a_file(t) + "/runs"],
     "is a file, not a folder"),
    ("block of one token", train, lambda t: ["--tasks", "CB", "--max_seq_length", "1"],
     "--max_seq_length must be at least 2, got 1"),
    ("negative seed", train, lambda t: ["--tasks", "CB", "--seed", "-1"], "--seed must be in [0, 2**32 - 1]"),
    ("seed past 2**32 - 1", train, lambda t: ["--tasks", "CB", "--seed", str(2**32)], "got 4294967296"),
    ("study: plan_json", study, lambda t: ["--output_root", str(t / "out"), "--plan_json", "--dry_run"],
     "study.py has no --plan_json: its --dry_run prints a table of every run"),
    ("study: negative seed", study, lambda t: ["--output_root", str(t / "out"), "--seeds", "42", "-1", "--dry_run"],
     "--seeds: -1 is outside [0, 2**32 - 1]"),
    ("study: a seed twice", study, lambda t: ["--output_root", str(t / "out"), "--seeds", "42", "43", "42", "--dry_run"],
     "--seeds names 42 twice"),
    ("truncated data line", train, lambda t: ["--tasks", "CB", "--data_root", truncated(t)],
     "train.jsonl line 7: not valid JSON"),
]


def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    return str(path)


def truncated(tmp_path):
    """D/CB/train.jsonl: 6 good rows and a 7th line cut in the middle."""
    root = data_root(tmp_path, [CB_ROW] * 6)
    with open(os.path.join(root, "CB", "train.jsonl"), "a") as f:
        f.write('{"premise": "p", "hypo')
    return root


@pytest.mark.parametrize("name,script,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, script, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = argv(tmp_path)
    if script is train:
        args = ["--pretrained_ckpt", MODEL, "--data_root", SAMPLE, *args]
        args += [] if "--output_root" in args else ["--output_root", str(out)]
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        run_main(lambda: script.main(args))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists() and sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.slow  # a real process
def test_a_real_process_exits_2_with_one_line(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "llama2_classification_multi_tasks.py"), "--tasks", "CB",
                        "--target_modules", "q_proj", "v_prj", "--pretrained_ckpt", MODEL, "--data_root", SAMPLE,
                        "--output_root", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(lines) == 1 and "'v_prj'" in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", [train, inference, study], ids=["train", "evaluate the base model", "study"])
def test_an_output_root_the_system_refuses_is_one_line_before_any_model_loads(script, tmp_path, capsys, monkeypatch):
    """A read-only mount (or a file system that refuses, where os.access says yes): the error names the folder and
    the cause, exit 2, and nothing loads a model."""
    import errno



    refused = str(tmp_path / "readonly")
    os.makedirs(refused)
    real_mkdir = os.mkdir

    def mkdir(path, *a, **k):
        if os.path.abspath(path).startswith(refused):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.chdir(tmp_path)
    args = ["--pretrained_ckpt", MODEL, "--data_root", SAMPLE, "--tasks", "CB", "--output_root", refused + "/runs"]
    args += ["--max_test_samples", "4"] if script is inference else []
    with pytest.raises(SystemExit) as e:
        run_main(lambda: script.main(args))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    assert refused in err and "Read-only file system" in err
    assert ("--output_root" in err) == (script is not inference)  # training and the study check it first of all
    assert os.listdir(refused) == []
