"""The study runner: the recipe it resolves, the settings it checks, the runs it plans (skipping what is done,
evaluating again what changed) and its dry run. Runs nothing heavy: launch.run_all is replaced where a test
would train."""

import dataclasses
import json
import os

import pytest

import study
import utils
from conftest import SAMPLE
from keys_values import config, models
from keys_values.evaluation.plan import plan_evaluation
from keys_values.experiment import layout
from keys_values.study import recipe
from keys_values.study.plan import StudyPlan
from test_report import fake_run
from utils import UserError

TASKS = ["boolq", "CB"]


def parse(argv):
    return recipe.parse(study.build_parser(), argv)


def plan(root, *extra):
    own, argv, _ = parse(["--tasks", *TASKS, "--output_root", root, "--max_test_samples", "3", *extra])
    return StudyPlan(own, argv, study.SCRIPTS)


def finished_study(root, seeds, *extra):
    """Every run of a study on TASKS finished and evaluated as the study evaluates (3 rows a task), with the
    identities the study computes: what a finished study leaves."""
    p = plan(root, "--seeds", *map(str, seeds), *extra)
    right = {"boolq": [True, False, True], "CB": [True, True, False]}

    def metrics(exp, eval_argv, record):
        fake_run(root, ",".join(TASKS), os.path.basename(exp), record, right)
        evaluation = plan_evaluation(config.evaluation_config(eval_argv))
        folder, ids = evaluation.metrics_folder, evaluation.identities
        if folder != "metrics":
            os.replace(os.path.join(exp, "metrics"), os.path.join(exp, folder))
        for t in TASKS:
            m = json.load(open(layout.metrics_path(exp, t, folder)))
            utils.write_json(layout.metrics_path(exp, t, folder), {**m, "identity": ids[t]})

    base_argv = p.base_evaluation()
    base = layout.base_dir(root, TASKS, p.t.pretrained_ckpt)
    metrics(base, base_argv, {"kind": "base", "args": {}})
    for r in p.runs:
        record = {"kind": "lora", "target_modules": r.plan.adapted_names, "trainable_params": 1,
                  "module_roles": dict(r.plan.targets.roles), "identity": r.plan.identity,
                  "args": dataclasses.asdict(r.plan.config)}
        metrics(r.folder, p.run_evaluation(r), record)
    return p


def test_the_small_recipe_applies_to_the_embedded_model_only():
    own, argv, why = parse([])
    t = config.training_config(argv)
    assert (t.pretrained_ckpt, t.epochs, t.loss_on, t.learning_rate, t.per_device_train_batch_size,
            t.gradient_accumulation_steps, t.tasks) == (config.EMBEDDED_MODEL, 3, "completion", 2e-3, 4, 1,
                                                        ["boolq", "COPA", "CB"])
    assert "small study" in why
    _, argv, why = parse(["--pretrained_ckpt", "NousResearch/Llama-2-7b-hf", "--bnb", "--data_root", "data"])
    t = config.training_config(argv)  # any other model: the training script's defaults, the original's
    assert (t.epochs, t.loss_on, t.learning_rate, t.per_device_train_batch_size, t.gradient_accumulation_steps,
            t.max_seq_length, t.tasks) == (5, "all", 2e-4, 32, 2, 512, ["20_Newsgroups_Fixed"])
    assert "original" in why


def test_a_flag_given_replaces_the_recipes_and_abbreviations_count(tmp_path):
    _, argv, _ = parse(["--tasks", "CB", "--lora_r", "4", "--learning_rate", "1e-4", "--epoch", "2",
                        "--gradient_checkpointing", "--output_root", str(tmp_path)])
    t = config.training_config(argv)
    assert (t.lora_r, t.learning_rate, t.epochs, t.gradient_checkpointing, t.loss_on) == (4, 1e-4, 2, True, "completion")
    assert argv.count("--learning_rate") == 1 and "2e-3" not in argv and "--epochs" not in argv  # --epoch replaced it


@pytest.mark.parametrize("argv,message", [
    (["--seed", "4"], "use --seeds"),
    (["--target_modules", "q_proj", "v_proj"], "use --settings"),
    (["--resume"], "resumes by itself"),
    (["--lora_rank", "4"], "unrecognized arguments: --lora_rank 4"),
    (["--tasks", "nope"], "unknown task 'nope'"),
])
def test_flags_the_study_sets_or_does_not_know_are_one_line_errors(argv, message):
    with pytest.raises(UserError, match=message):
        study.main(argv)


@pytest.mark.parametrize("settings,message", [
    (["q_proj", "v_proj", "up_proj"], "quote each setting"),  # unquoted: three one-module settings
    (["q_proj v_proj up_prj"], "unknown target module 'up_prj'"),
    (["q_proj v_proj", "q_proj v_proj"], "twice"),
    (["q_proj,v_proj", "q_proj,v_proj,up_proj"], "space-separated, as --target_modules takes them: --settings "
                                                 "'q_proj v_proj'"),  # refused as the training script refuses it
])
def test_settings_are_checked_against_the_model(tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        plan(str(tmp_path), "--settings", *settings)


def test_default_settings_are_the_four_arms_in_role_words(tmp_path):
    p = plan(str(tmp_path))
    assert p.settings == [["attention_qv"], ["attention_qv", "keys_up"], ["attention_qv", "keys_gate"],
                          ["attention_qv", "values"]]
    assert [r.plan.config.target_modules for r in p.runs] == p.settings
    assert [os.path.basename(r.folder).split("-")[6] for r in p.runs] == [  # on Llama: the original's folders
        "q_proj,v_proj", "q_proj,v_proj,up_proj", "q_proj,v_proj,gate_proj", "q_proj,v_proj,down_proj"]


def test_finished_study_runs_nothing_and_rewrites_the_same_report(tmp_path, monkeypatch):
    root = str(tmp_path)
    finished_study(root, [42, 7])
    launched = []
    monkeypatch.setattr(study.launch, "run_all", lambda runs, *a, **k: launched.extend(runs) or [])
    study.main(["--tasks", *TASKS, "--output_root", root, "--seeds", "42", "7", "--max_test_samples", "3"])
    assert launched == []
    summary = os.path.join(root, ",".join(TASKS), "summary.md")
    first = open(summary).read()
    for row in ("base (no adapter)", "q,v", "q,v+up (keys)", "q,v+gate (keys)", "q,v+down (values)"):
        assert f"\n| {row} | " in first
    assert first.count(" vs q,v+down (values) |") == 2  # each keys setting against the values setting
    assert "seeds 7, 42" in first and "| q,v | 7 | " in first
    study.main(["--tasks", *TASKS, "--output_root", root, "--seeds", "42", "7", "--max_test_samples", "3"])
    assert open(summary).read() == first


def test_changed_evaluation_settings_are_evaluated_again_beside_the_first(tmp_path, monkeypatch):
    root = str(tmp_path)
    finished_study(root, [42])
    launched = []
    monkeypatch.setattr(study.launch, "run_all", lambda runs, *a, **k: launched.extend(runs) or [])
    study.main(["--tasks", *TASKS, "--output_root", root, "--max_test_samples", "3", "--scoring", "rank"])
    assert len(launched) == 5  # the base and four settings: evaluated again with rank scoring, nothing trained
    assert all(len(r.commands) == 1 and "--scoring" in r.commands[0] and "rank" in r.commands[0] for r in launched)
    assert not any("llama2_classification_multi_tasks.py" in " ".join(r.commands[0]) for r in launched)


def test_a_changed_recipe_is_a_new_run_not_the_finished_one(tmp_path, monkeypatch):
    """A smoke test with --max_steps 1, then the same study with --max_steps 2 --learning_rate 1e-4: new runs."""
    root = str(tmp_path)
    first = finished_study(root, [42], "--max_steps", "1")
    again = plan(root, "--max_steps", "2", "--learning_rate", "1e-4")
    assert all(r.state == "new" for r in again.runs)
    assert {r.folder for r in again.runs}.isdisjoint(r.folder for r in first.runs)
    launched = []
    monkeypatch.setattr(study.launch, "run_all", lambda runs, *a, **k: launched.extend(runs) or [])
    study.main(["--tasks", *TASKS, "--output_root", root, "--max_test_samples", "3", "--max_steps", "2",
                "--learning_rate", "1e-4"])
    trained = [r for r in launched if "llama2_classification_multi_tasks.py" in " ".join(r.commands[0])]
    assert len(trained) == 4 and all("--resume" in r.commands[0] for r in trained)


def test_dry_run_writes_nothing_and_loads_no_weights(tmp_path, monkeypatch, capsys):
    root = tmp_path / "out"
    monkeypatch.setattr(models, "load_base", lambda *a, **k: (_ for _ in ()).throw(AssertionError("weights loaded")))
    monkeypatch.setattr(study.launch, "run_all", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    before = sorted(tmp_path.rglob("*"))
    study.main(["--tasks", "CB", "--output_root", str(root), "--seeds", "1", "2", "--dry_run"])
    out = capsys.readouterr().out
    assert sorted(tmp_path.rglob("*")) == before
    lines = [line for line in out.splitlines() if line.startswith(("attention_qv", "q_proj"))]
    assert len(lines) == 8 and all(" new " in line for line in lines)
    assert "total:" in out and "optimizer steps" in out and "peak memory per device" in out


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "opt", "falcon", "gpt_neox", "phi3"])
def test_dry_run_of_a_study_on_other_architectures(model_type, tmp_path, monkeypatch, capsys):
    """study.py --dry_run on architectures whose configs name their widths otherwise (GPT-2's n_inner, OPT's
    ffn_dim, Falcon's ffn_hidden_size...): every setting of the role words planned, with a memory estimate that
    counts the LoRA activations of the modules adapted, from a config and a tokenizer alone."""
    from tiny_models import tiny_config, tokenizer

    folder = str(tmp_path / model_type)
    tiny_config(model_type).save_pretrained(folder)
    tokenizer().save_pretrained(folder)  # no weights: none may load
    monkeypatch.setattr(models, "load_base", lambda *a, **k: (_ for _ in ()).throw(AssertionError("weights loaded")))
    study.main(["--pretrained_ckpt", folder, "--data_root", SAMPLE, "--tasks", "CB", "--output_root",
                str(tmp_path / "out"), "--settings", "attention_qv", "attention_qv keys", "attention_qv values",
                "--max_steps", "2", "--dropout", "0", "--dry_run"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " new " in line]
    assert len(rows) == 3 and "peak memory per device" in out and "Traceback" not in out
    assert not os.path.exists(tmp_path / "out")
