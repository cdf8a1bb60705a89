"""The aggregation and comparison report on a synthetic experiments tree (no model)."""

import json
import os

import pytest

import get_eval_tasks
import utils

TASKS = ["race_high", "race_middle", "20_Newsgroups_Fixed"]


def fake_run(root, folder, record, right):
    """An experiment folder whose predictions are right where `right[task][i]` is True."""
    exp = os.path.join(root, ",".join(TASKS), folder)
    os.makedirs(os.path.join(exp, "metrics"))
    utils.write_json(os.path.join(exp, "experiment.json"), record)
    for task, flags in right.items():
        rows = [{"id": i, "label": "A", "generation": "A" if r else "B", "prediction": "A" if r else "B"}
                for i, r in enumerate(flags)]
        utils.write_jsonl(os.path.join(exp, "metrics", f"{task}_predictions.jsonl"), rows)
        m = utils.metrics([r["label"] for r in rows], [r["prediction"] for r in rows],
                          [r["prediction"] for r in rows], ["A", "B", "C", "D"])
        m["scoring"] = "generate"
        utils.write_json(os.path.join(exp, "metrics", f"{task}_metrics_update.json"), m)
    return exp


def lora(modules, params):
    return {"kind": "lora", "target_modules": modules, "trainable_params": params,
            "args": {"pretrained_ckpt": "m", "loss_on": "completion", "learning_rate": 0.002, "epochs": 3,
                     "max_steps": -1, "lora_r": 8, "dropout": 0.1, "bnb": False, "seed": 42, "data_root": "d"}}


def name(modules):
    return "classification-sampleFraction-0.99_epochs-3_rank-8_dropout-0.1-" + ",".join(modules) + "-standard"


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path)
    n = 10
    fake_run(root, "base-SmolLM2", {"kind": "base", "trainable_params": 0}, {t: [False] * n for t in TASKS})
    fake_run(root, name(["q_proj", "v_proj"]), lora(["q_proj", "v_proj"], 100),
             {t: [True] * 5 + [False] * 5 for t in TASKS})
    fake_run(root, name(["q_proj", "v_proj", "up_proj"]), lora(["q_proj", "up_proj", "v_proj"], 200),
             {"race_high": [True] * 9 + [False], "race_middle": [True] * 2 + [False] * 8,
              "20_Newsgroups_Fixed": [True] * 6 + [False] * 4})
    fake_run(root, name(["q_proj", "v_proj", "down_proj"]), lora(["down_proj", "q_proj", "v_proj"], 300),
             {"race_high": [True, True, True] + [False] * 7, "race_middle": [True] * 8 + [False] * 2,
              "20_Newsgroups_Fixed": [True] * 6 + [False] * 4})
    return root


def test_all_eval_results_keys_full_task_names(tree):
    get_eval_tasks.main(["--root", tree, "--no_plot"])
    results = json.load(open(os.path.join(tree, "all_eval_results.json")))
    [folder] = results
    assert folder == ",".join(TASKS)
    short = "f0.99_e3_r8_d0.1-q_proj,v_proj,up_proj-standard"  # the original's short name
    assert set(results[folder]) == {"base-SmolLM2", short, "f0.99_e3_r8_d0.1-q_proj,v_proj-standard",
                                    "f0.99_e3_r8_d0.1-q_proj,v_proj,down_proj-standard"}
    assert set(results[folder][short]) == set(TASKS)  # race_high and race_middle apart, 20_Newsgroups_Fixed whole
    assert results[folder][short]["race_high"]["accuracy"] == 0.9
    assert results[folder][short]["race_middle"]["accuracy"] == 0.2


def test_summary_rows_cells_and_paired_tests(tree):
    get_eval_tasks.main(["--root", tree])
    md = open(os.path.join(tree, ",".join(TASKS), "summary.md")).read()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    settings = [line.split(" | ")[0][2:] for line in table[1:6]]
    assert settings == ["base (no adapter)", "q,v", "q,v+up (keys)", "q,v+down (values)", "majority class"]
    up = table[3].split(" | ")
    assert up[1].startswith("90.0 [59.6, 98.2]") and up[2].startswith("20.0 [5.7, 51.0]")
    assert up[4] == "56.7" and up[5] == "200"
    # race_high: up right on 0-8, down on 0-2 -> b=6 (up only), c=0 -> p = 2 / 2**6
    comp = [line for line in table if line.startswith("| q,v+up (keys) vs q,v+down (values)")][0].split(" | ")
    assert comp[1] == "+60.0 (6/0, p=0.0312)"
    assert comp[2] == "-60.0 (0/6, p=0.0312)" and comp[3].rstrip(" |") == "+0.0 (0/0, p=1)"
    assert os.path.getsize(os.path.join(tree, ",".join(TASKS), "summary.png")) > 10_000


def test_rerun_rewrites_the_same_report(tree):
    get_eval_tasks.main(["--root", tree, "--no_plot"])
    first = open(os.path.join(tree, ",".join(TASKS), "summary.md")).read()
    get_eval_tasks.main(["--root", tree, "--no_plot"])
    assert open(os.path.join(tree, ",".join(TASKS), "summary.md")).read() == first


def test_mcnemar_hand_checked():
    # b=1, c=6: two-sided exact p = 2 * (C(7,0) + C(7,1)) / 2**7 = 0.125
    a = [True] + [False] * 6 + [True, False]
    b = [False] + [True] * 6 + [True, False]
    assert get_eval_tasks.mcnemar(a, b) == (1, 6, 0.125)
    assert get_eval_tasks.mcnemar([True] * 3, [True] * 3) == (0, 0, 1.0)
    # b=c=5: the two-sided p is capped at 1
    assert get_eval_tasks.mcnemar([True] * 5 + [False] * 5, [False] * 5 + [True] * 5)[2] == 1.0


def test_setting_names():
    assert get_eval_tasks.setting_name(lora(["q_proj", "v_proj", "gate_proj"], 1)) == "q,v+gate (keys)"
    assert get_eval_tasks.setting_name(lora(["down_proj", "q_proj", "v_proj"], 1)) == "q,v+down (values)"
    assert get_eval_tasks.setting_name({"kind": "base"}) == "base (no adapter)"
