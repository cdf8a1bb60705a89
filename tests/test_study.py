"""The study runner: seeds, flags passed through to the training script, and skipping what is done."""

import os

import pytest

import get_eval_tasks
import study
import utils
from common import UserError
from test_report import fake_run, lora

TASKS = ["boolq", "CB"]


def finished_study(root, seeds):
    """Every run of a study on TASKS finished and evaluated with the study's default evaluation settings."""
    right = {"boolq": [True, False, True], "CB": [True, True, False]}
    base = utils.base_dir(root, TASKS, utils.EMBEDDED_MODEL)
    fake_run(root, ",".join(TASKS), os.path.basename(base), {"kind": "base", "args": {}}, right)
    folders = []
    for seed in seeds:
        for setting in get_eval_tasks.SETTINGS:
            own, argv = study.parse_args(["--tasks", *TASKS, "--output_root", root, "--seeds", str(seed)])
            exp = study.train.experiment_folder(study.train.parse_args(argv + ["--target_modules", *setting,
                                                                               "--seed", str(seed)]))
            folders.append(os.path.basename(exp))
            fake_run(root, ",".join(TASKS), os.path.basename(exp), lora(setting, 1, seed, TASKS), right)
    return folders


def test_finished_study_runs_nothing_and_rewrites_the_same_report(tmp_path, monkeypatch):
    root = str(tmp_path)
    folders = finished_study(root, [42, 7])
    assert sum(f.endswith("-seed7-standard") for f in folders) == 4 and sum("-seed" in f for f in folders) == 4

    def no_run(script, args):
        raise AssertionError(f"the study ran {script} again")

    monkeypatch.setattr(study, "run", no_run)
    study.main(["--tasks", *TASKS, "--output_root", root, "--seeds", "42", "7"])
    summary = os.path.join(root, ",".join(TASKS), "summary.md")
    first = open(summary).read()
    for row in ("base (no adapter)", "q,v", "q,v+up (keys)", "q,v+gate (keys)", "q,v+down (values)"):
        assert f"\n| {row} | " in first
    assert first.count(" vs q,v+down (values) |") == 2  # each keys setting against the values setting
    assert "seeds 7, 42" in first and "| q,v | 7 | " in first
    study.main(["--tasks", *TASKS, "--output_root", root, "--seeds", "42", "7"])
    assert open(summary).read() == first


def test_changed_evaluation_settings_are_evaluated_again(tmp_path, monkeypatch):
    root = str(tmp_path)
    finished_study(root, [42])
    ran = []
    monkeypatch.setattr(study, "run", lambda script, args: ran.append((script, args)))
    study.main(["--tasks", *TASKS, "--output_root", root, "--scoring", "rank", "--settings", "q_proj v_proj"])
    assert [s for s, _ in ran] == ["llama2_classification_multi_tasks_inference.py"] * 2  # base and q,v: rank now
    assert all("rank" in a for _, a in ran)


def test_training_flags_pass_through_and_the_small_recipe_can_be_overridden(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(study, "run", lambda script, args: ran.append((script, args)))
    monkeypatch.setattr(study.inference, "pending_tasks", lambda argv: ["CB"])
    monkeypatch.setattr(study.get_eval_tasks, "main", lambda argv: None)
    study.main(["--tasks", "CB", "--output_root", str(tmp_path), "--lora_r", "4", "--learning_rate", "1e-4",
                "--gradient_checkpointing", "--settings", "q_proj v_proj up_proj", "--seeds", "3"])
    [(_, base), (script, targs), _] = ran
    assert "--pretrained_ckpt" in base and "--tasks" in base
    assert script == "llama2_classification_multi_tasks.py"
    parsed = study.train.parse_args(targs)
    assert (parsed.lora_r, parsed.learning_rate, parsed.gradient_checkpointing, parsed.seed) == (4, 1e-4, True, 3)
    assert parsed.loss_on == "completion" and parsed.epochs == 3  # the small study's recipe where not overridden
    assert parsed.target_modules == ["q_proj", "v_proj", "up_proj"]
    assert targs.count("--learning_rate") == 1 and "2e-3" not in targs  # a flag given replaces the recipe's


def test_unknown_flags_and_tasks_are_one_line_errors():
    with pytest.raises(UserError, match="unrecognized arguments: --lora_rank 4"):
        study.parse_args(["--lora_rank", "4"])
    with pytest.raises(UserError, match="--seeds"):
        study.parse_args(["--seed", "4"])
    with pytest.raises(UserError, match="unknown task"):
        study.main(["--tasks", "nope"])
