"""The study runner skips what is done: a finished study retrains and re-evaluates nothing."""

import os

import pytest

import study
import utils
from test_report import fake_run, lora


def test_finished_study_runs_nothing_and_rewrites_the_same_report(tmp_path, monkeypatch):
    import test_report

    monkeypatch.setattr(test_report, "TASKS", ["boolq", "CB"])
    root = str(tmp_path)
    right = {"boolq": [True, False, True], "CB": [True, True, False]}
    fake_run(root, os.path.basename(utils.base_dir(root, ["boolq", "CB"], utils.EMBEDDED_MODEL)), {"kind": "base"}, right)
    for setting in study.SETTINGS:
        argv = ["--tasks", "boolq", "CB", "--target_modules", *setting, "--output_root", root, "--epochs", "3",
                "--loss_on", "completion"]
        exp = study.train.experiment_folder(study.train.parse_args(argv))
        fake_run(root, os.path.basename(exp), lora(setting, 1), right)

    def no_run(script, args):
        raise AssertionError(f"the study ran {script} again")

    monkeypatch.setattr(study, "run", no_run)
    study.main(["--tasks", "boolq", "CB", "--output_root", root])
    summary = os.path.join(root, "boolq,CB", "summary.md")
    first = open(summary).read()
    for row in ("base (no adapter)", "q,v", "q,v+up (keys)", "q,v+gate (keys)", "q,v+down (values)"):
        assert f"\n| {row} | " in first
    assert first.count(" vs q,v+down (values) |") == 2  # each keys setting against the values setting
    study.main(["--tasks", "boolq", "CB", "--output_root", root])
    assert open(summary).read() == first


def test_study_rejects_unknown_task():
    with pytest.raises(utils.UserError, match="unknown task"):
        study.main(["--tasks", "nope"])
