"""The aggregation and comparison report on synthetic experiment trees (no model): this project's folders, the
original's, several seeds, hand-computed tests, learning curves."""

import json
import os

import pytest

import get_eval_tasks
import utils
from keys_values import identity, scoring, statistics
from keys_values.experiment import layout, records
from keys_values.report import collect, compare, figures

TASKS = ["race_high", "race_middle", "20_Newsgroups_Fixed"]
EVAL = {"scoring": "generate", "max_test_samples": 1000, "bnb": False, "dtype": "fp32", "max_new_tokens": 20,
        "data_root": "sample_data"}  # what an evaluation with the study's defaults records on a CPU


def fake_run(root, tasks_folder, folder, record, right, adapter=True):
    """An experiment folder whose predictions are right where `right[task][i]` is True."""
    exp = os.path.join(root, tasks_folder, folder)
    os.makedirs(os.path.join(exp, "metrics"))
    utils.write_json(os.path.join(exp, "experiment.json"), record)
    if adapter and record.get("kind") == "lora":
        utils.write_json(os.path.join(exp, "assets", "adapter_config.json"), {"target_modules": record["target_modules"]})
    for task, flags in right.items():
        rows = [{"id": i, "label": "A", "generation": "A" if r else "B", "prediction": "A" if r else "B"}
                for i, r in enumerate(flags)]
        utils.write_jsonl(os.path.join(exp, "metrics", f"{task}_predictions.jsonl"), rows)
        m = scoring.metrics([(r["label"],) for r in rows], [r["prediction"] for r in rows],
                          [r["prediction"] for r in rows], ["A", "B", "C", "D"])
        utils.write_json(os.path.join(exp, "metrics", f"{task}_metrics_update.json"), {**m, **EVAL})
    return exp


def lora(modules, params, seed=42, tasks=None):
    return {"kind": "lora", "target_modules": modules, "trainable_params": params,
            "args": {"pretrained_ckpt": "m", "loss_on": "completion", "learning_rate": 0.002, "epochs": 3,
                     "max_steps": -1, "lora_r": 8, "dropout": 0.1, "bnb": False, "seed": seed,
                     "data_root": "sample_data", "target_modules": modules, "tasks": tasks, "dtype": "auto"}}


def name(modules, seed=42):
    """The folder name of a run with the original's settings but 3 epochs, these modules and this seed."""
    ident = {"tasks": ["x"], "train_sample_fraction": 0.99, "epochs": 3, "lora_r": 8, "dropout": 0.1,
             "target_modules": modules, "bnb": False, "loss_on": "all", "shorten_to_block": False, "max_steps": -1,
             "seed": seed, **{k: identity.original_value(k, False) for k in identity.HASHED}}
    return layout.folder_name(ident)


@pytest.fixture
def tree(tmp_path):
    root, folder = str(tmp_path), ",".join(TASKS)
    n = 10
    fake_run(root, folder, "base-SmolLM2", {"kind": "base", "trainable_params": 0}, {t: [False] * n for t in TASKS})
    fake_run(root, folder, name(["q_proj", "v_proj"]), lora(["q_proj", "v_proj"], 100),
             {t: [True] * 5 + [False] * 5 for t in TASKS})
    fake_run(root, folder, name(["q_proj", "v_proj", "up_proj"]), lora(["q_proj", "up_proj", "v_proj"], 200),
             {"race_high": [True] * 9 + [False], "race_middle": [True] * 2 + [False] * 8,
              "20_Newsgroups_Fixed": [True] * 6 + [False] * 4})
    fake_run(root, folder, name(["q_proj", "v_proj", "down_proj"]), lora(["down_proj", "q_proj", "v_proj"], 300),
             {"race_high": [True, True, True] + [False] * 7, "race_middle": [True] * 8 + [False] * 2,
              "20_Newsgroups_Fixed": [True] * 6 + [False] * 4})
    return root


def table(md):
    return [line for line in md.splitlines() if line.startswith("| ")]


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
    rows = table(md)
    settings = [line.split(" | ")[0][2:] for line in rows[1:6]]
    assert settings == ["base (no adapter)", "q,v", "q,v+up (keys)", "q,v+down (values)", "majority class"]
    up = rows[3].split(" | ")
    assert up[1].startswith("90.0 [59.6, 98.2]") and up[2].startswith("20.0 [5.7, 51.0]")
    assert up[4] == "56.7" and up[5] == "200 |"
    # race_high: up right on 0-8, down on 0-2 -> b=6 (up only), c=0 -> p = 2 / 2**6
    comp = [line for line in rows if line.startswith("| q,v+up (keys) vs q,v+down (values)")][0].split(" | ")
    assert comp[1].startswith("+60.0 [") and comp[1].endswith("(6/0, p=0.0312)")
    assert comp[2].startswith("-60.0 [") and comp[3].rstrip(" |").endswith("(0/0, p=1)")
    # no discordant pair on 10 examples: no certainty claimed, Newcombe's interval (b=c=0, 6 right in both: a=6, d=4)
    _, lo, hi = statistics.newcombe_paired(6, 0, 0, 4)
    assert comp[3].rstrip(" |") == f"+0.0 [{100 * lo:+.1f}, {100 * hi:+.1f}] (0/0, p=1)" and hi > 0.15
    assert "seed" not in md.split("Training:")[0]  # one seed: no seed columns, no pooled test
    assert os.path.getsize(os.path.join(tree, ",".join(TASKS), "summary.png")) > 10_000


def test_rerun_rewrites_the_same_report(tree):
    get_eval_tasks.main(["--root", tree, "--no_plot"])
    first = open(os.path.join(tree, ",".join(TASKS), "summary.md")).read()
    get_eval_tasks.main(["--root", tree, "--no_plot"])
    assert open(os.path.join(tree, ",".join(TASKS), "summary.md")).read() == first


LLAMA_ARMS = [["q_proj", "v_proj"], ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "gate_proj"],
              ["q_proj", "v_proj", "down_proj"]]


def test_setting_names_and_roles():
    assert records.setting_name(lora(["q_proj", "v_proj", "gate_proj"], 1)) == "q,v+gate (keys)"
    assert records.setting_name(lora(["down_proj", "q_proj", "v_proj"], 1)) == "q,v+down (values)"
    assert records.setting_name({"kind": "base"}) == "base (no adapter)"
    assert [records.role(lora(s, 1)) for s in LLAMA_ARMS] == ["core", "keys", "keys", "values"]
    assert records.role({"kind": "base"}) == "base"
    assert records.role(lora(["q_proj", "v_proj", "up_proj", "down_proj"], 1)) == "other"
    assert records.role(lora(["k_proj"], 1)) == "other"


def test_the_record_not_the_names_decides_the_role():
    """GPT-2: c_proj is the feed-forward's values only as mlp.c_proj; the record's roles say so."""
    gpt2 = {**lora(["attn.c_attn", "mlp.c_proj"], 1), "module_roles": {"attn.c_attn": "attention_qv",
                                                                      "mlp.c_proj": "values"}}
    assert records.role(gpt2) == "values"
    assert records.setting_name(gpt2) == "c_attn (q,k,v)+mlp.c_proj (values)"
    odd = {**lora(["q_proj", "v_proj", "up_proj"], 1), "module_roles": {"q_proj": "attention_q", "v_proj": "attention_v",
                                                                        "up_proj": "values"}}
    assert records.role(odd) == "values"  # the record wins over the Llama name


def test_several_seeds_are_pooled(tmp_path):
    root, folder, tasks = str(tmp_path), "boolq,CB", ["boolq", "CB"]
    up, down = ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "down_proj"]
    fake_run(root, folder, "base-m", {"kind": "base"}, {t: [False] * 10 for t in tasks})
    # boolq: seed 1 up right on 0-5, down on 0-2 and 9 -> b=3 (3,4,5), c=1 (9); seed 2: up 0-7, down 0-3 -> b=4, c=0
    fake_run(root, folder, name(up, 1), lora(up, 200, 1), {"boolq": [True] * 6 + [False] * 4, "CB": [True] * 10})
    fake_run(root, folder, name(down, 1), lora(down, 300, 1), {"boolq": [True] * 3 + [False] * 6 + [True],
                                                               "CB": [True] * 10})
    fake_run(root, folder, name(up, 2), lora(up, 200, 2), {"boolq": [True] * 8 + [False] * 2, "CB": [True] * 10})
    fake_run(root, folder, name(down, 2), lora(down, 300, 2), {"boolq": [True] * 4 + [False] * 6, "CB": [True] * 10})
    get_eval_tasks.main(["--root", root])
    md = open(os.path.join(root, folder, "summary.md")).read()
    assert "seeds 1, 2" in md and "stratified McNemar" in md
    rows = table(md)
    up_row = [r for r in rows if r.startswith("| q,v+up (keys) | ") and r.count("|") > 6][0].split(" | ")
    assert up_row[1].startswith("70.0 [") and up_row[1].endswith("±14.1")  # mean of 60 and 80, sd 14.1
    assert up_row[-1].strip(" |") == "1,2"
    each_seed = [r for r in rows if r.startswith("| q,v+down (values) | 2 | ")]
    assert each_seed == ["| q,v+down (values) | 2 | 40.0 | 100.0 |"]
    comp = [r for r in rows if r.startswith("| q,v+up (keys) vs q,v+down (values)")][0].split(" | ")
    # pooled over 20 pairs: b=7, c=1 -> +30.0 points, p = 18/256 = 0.0703
    assert comp[1].startswith("+30.0 [") and comp[1].endswith("(7/1, p=0.0703)")
    assert comp[2].rstrip(" |") == "+0.0 [-27.8, +27.8] (0/0, p=1)"  # 10/10 in both: Newcombe's, not a point
    assert os.path.getsize(os.path.join(root, folder, "summary.png")) > 10_000


def evaluations(root, flags_by_seed):
    """The CB evaluation of one fake run per seed."""
    out = []
    for s, flags in flags_by_seed:
        exp = fake_run(root, "CB", f"r{s}", lora(["q_proj"], 1, s), {"CB": flags})
        m = json.load(open(os.path.join(exp, "metrics", "CB_metrics_update.json")))
        out.append(collect.Evaluation(exp, "metrics", "CB", m))
    return out


def test_seed_interval_bootstrap_covers_the_mean_and_is_reproducible(tmp_path):
    evs = evaluations(str(tmp_path), ((1, [True] * 6 + [False] * 4), (2, [True] * 8 + [False] * 2)))
    lo, hi = compare.seed_interval(evs)
    assert lo < 0.7 < hi and 0.3 < lo and hi <= 1.0
    assert compare.seed_interval(evs) == [lo, hi]


def test_seed_interval_carries_the_spread_between_seeds(tmp_path):
    """Two seeds at 20% and 80% on the same 100 examples: drawing the seeds too, a quarter of the replicates
    hold seed 1 twice (about 20%) and a quarter seed 2 twice (about 80%), so the interval spans most of
    [20, 80]; drawing the examples alone would give about 50 +- 7."""
    evs = evaluations(str(tmp_path), ((1, [True] * 20 + [False] * 80), (2, [True] * 80 + [False] * 20)))
    lo, hi = compare.seed_interval(evs)
    assert lo < 0.3 and hi > 0.7


def test_a_tree_written_by_the_original_is_aggregated(tmp_path):
    """The original's layout: list reprs in both folder names, no experiment.json, metrics with its six keys."""
    root = str(tmp_path)
    original = os.path.join(root, "['race_high', 'CB']",
                            "classification-sampleFraction-0.99_epochs-5_rank-8_dropout-0.1-['q_proj', 'v_proj', 'up_proj']-4bit")
    os.makedirs(os.path.join(original, "metrics"))
    os.makedirs(os.path.join(original, "assets"))
    utils.write_json(os.path.join(original, "assets", "adapter_config.json"),
                     {"base_model_name_or_path": "llama", "target_modules": ["q_proj", "v_proj", "up_proj"]})
    open(os.path.join(original, "4194304_total_3504607232.txt"), "w").write("4194304\n3504607232\n0.0012\n")
    for task, acc in (("race_high", 0.42), ("CB", 0.75)):
        utils.write_json(os.path.join(original, "metrics", f"{task}_metrics_update.json"),
                         {"micro_f1": acc, "macro_f1": acc / 2, "precision": acc, "recall": acc, "accuracy": acc,
                          "oom_examples": []})
    ours = fake_run(root, "race_high,CB", name(["q_proj", "v_proj", "up_proj"]), lora(["q_proj", "v_proj", "up_proj"], 9),
                    {"race_high": [True] * 3 + [False], "CB": [True, False]})
    get_eval_tasks.main(["--root", root])
    results = json.load(open(os.path.join(root, "all_eval_results.json")))
    short = "f0.99_e5_r8_d0.1-['q_proj', 'v_proj', 'up_proj']-4bit"
    assert results["['race_high', 'CB']"][short]["race_high"]["accuracy"] == 0.42  # every task keyed by its name
    assert set(results["['race_high', 'CB']"][short]) == {"race_high", "CB"}
    assert set(results["race_high,CB"][os.path.basename(layout.short_name(ours))]) == {"race_high", "CB"}
    md = open(os.path.join(root, "['race_high', 'CB']", "summary.md")).read()
    row = [r for r in table(md) if r.startswith("| q,v+up (keys) |")][0].split(" | ")
    assert row[1:4] == ["42.0 [–]", "75.0 [–]", "58.5"] and row[4] == "4,194,304 |"  # no interval can be computed
    assert "| majority class | – | – |" in md


def test_learning_curves_are_read_from_tensorboard_logs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    exp = fake_run(str(tmp_path), "CB", name(["q_proj"]), lora(["q_proj"], 1), {"CB": [True]})
    writer = SummaryWriter(log_dir=os.path.join(exp, "logs"))
    for step, loss in ((5, 2.0), (10, 1.5), (15, 0.5)):
        writer.add_scalar("train/loss", loss, step)
    writer.close()
    writer = SummaryWriter(log_dir=os.path.join(exp, "logs"))  # a resumed run logs again into the same folder
    writer.add_scalar("train/loss", 0.25, 20)
    writer.close()
    run = collect.Run(name(["q_proj"]), exp, {}, {}, 42)
    assert collect.loss_curve(run) == [(5, 2.0), (10, 1.5), (15, 0.5), (20, 0.25)]
    assert collect.loss_curve(collect.Run("x", str(tmp_path), {}, {}, 42)) == []


# ---- only like with like --------------------------------------------------------------------------------------

def move_metrics(exp, folder, scoring):
    """Turn a fake run's metrics/ into another evaluation's folder (as a re-evaluation with --scoring rank)."""
    os.replace(os.path.join(exp, "metrics"), os.path.join(exp, folder))
    for f in os.listdir(os.path.join(exp, folder)):
        if f.endswith("_metrics_update.json"):
            path = os.path.join(exp, folder, f)
            utils.write_json(path, {**json.load(open(path)), "scoring": scoring})


def test_runs_scored_differently_are_never_paired(tmp_path):
    """The keys run re-scored with rank, the values run generated: each evaluation is its own section, and
    the comparison says why it pairs nothing instead of reporting a difference."""
    root, folder = str(tmp_path), "CB"
    up, down = ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "down_proj"]
    keys = fake_run(root, folder, name(up), lora(up, 2), {"CB": [True] * 19 + [False]})
    move_metrics(keys, "metrics-rank", "rank")
    fake_run(root, folder, name(down), lora(down, 2), {"CB": [False] * 20})
    get_eval_tasks.main(["--root", root, "--no_plot"])
    md = open(os.path.join(root, folder, "summary.md")).read()
    assert "## Evaluation 1 of 2" in md and "## Evaluation 2 of 2" in md
    comparisons = [line for line in md.splitlines() if line.startswith("| q,v+up (keys) vs q,v+down (values) |")]
    assert comparisons == ["| q,v+up (keys) vs q,v+down (values) | – |"] * 2  # in each section: nothing paired
    assert "p=" not in md and md.count("has no CB evaluation of this kind") == 2


def test_runs_trained_differently_are_not_paired_and_the_footer_says_how(tmp_path):
    root, folder = str(tmp_path), "CB"
    up, down = ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "down_proj"]
    fake_run(root, folder, name(up), lora(up, 2), {"CB": [True] * 10})
    slow = lora(down, 2)
    slow["args"] = {**slow["args"], "learning_rate": 2e-4, "max_steps": 3}
    fake_run(root, folder, name(down), slow, {"CB": [False] * 10})
    get_eval_tasks.main(["--root", root, "--no_plot"])
    md = open(os.path.join(root, folder, "summary.md")).read()
    assert "| q,v+up (keys) vs q,v+down (values) | – |" in md
    assert "trained with other settings (learning rate 0.002 vs 0.0002; max steps -1 vs 3)" in md
    assert "Where the rows differ" in md and "- q,v+down (values): max steps 3, learning rate 0.0002" in md


def test_n_is_shown_and_differing_n_in_each_cell(tmp_path):
    root, folder = str(tmp_path), "CB"
    up, down = ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "down_proj"]
    fake_run(root, folder, name(up), lora(up, 2), {"CB": [True] * 8})
    fake_run(root, folder, name(down), lora(down, 2), {"CB": [True] * 40})
    get_eval_tasks.main(["--root", root, "--no_plot"])
    md = open(os.path.join(root, folder, "summary.md")).read()
    row = [line for line in md.splitlines() if line.startswith("| q,v+up (keys) | ")][0]
    assert "n=8" in row and "| CB |" in md  # the column's n differs: each cell says its own
    assert "seed 42 scored other examples" in md


def test_the_loss_panel_names_what_it_cannot_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    root = str(tmp_path)
    up, down = ["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "down_proj"]
    logged = fake_run(root, "CB", name(up), lora(up, 2), {"CB": [True]})
    fake_run(root, "CB", name(down), lora(down, 2), {"CB": [True]})  # no logs: a loss it cannot draw
    writer = SummaryWriter(log_dir=os.path.join(logged, "logs"))
    for step, loss in ((1, 2.0), (2, 1.5)):
        writer.add_scalar("train/loss", loss, step)
    writer.close()
    settings = collect.group(collect.collect(root)["CB"])
    fig, ax = plt.subplots()
    figures.loss_panel(ax, settings, {s.name: "C0" for s in settings})
    assert [line.get_label() for line in ax.lines] == ["q,v+up (keys)"] and ax.get_legend() is not None
    assert ax.get_title() == "training loss (one seed)"
    assert any("no loss logged: q,v+down (values)" in t.get_text() for t in ax.texts)
    plt.close(fig)


def answered_run(root, folder, record, gold, answers, task="CB"):
    """An experiment folder whose evaluation of `task` answered `answers` to rows labelled `gold`."""
    exp = os.path.join(root, ",".join([task]), folder)
    os.makedirs(os.path.join(exp, "metrics"))
    utils.write_json(os.path.join(exp, "experiment.json"), record)
    utils.write_json(os.path.join(exp, "assets", "adapter_config.json"), {"target_modules": record["target_modules"]})
    rows = [{"id": i, "label": g, "generation": a, "prediction": a} for i, (g, a) in enumerate(zip(gold, answers))]
    utils.write_jsonl(os.path.join(exp, "metrics", f"{task}_predictions.jsonl"), rows)
    m = scoring.metrics([(g,) for g in gold], answers, answers, ["entailment", "contradiction", "neutral"])
    utils.write_json(os.path.join(exp, "metrics", f"{task}_metrics_update.json"), {**m, **EVAL})


def test_the_report_marks_a_constant_predictor_and_a_result_within_the_majority_class(tmp_path):
    """40 rows, 17 entailment (the majority: 42.5%), 15 contradiction, 8 neutral. A setting answering
    entailment to all is constant and at the majority (†‡); one right on 22 (55.0%, Wilson [39.8, 69.3], which
    holds 42.5) is within it (‡); one right on 36 (90.0%, [76.9, 96.0]) carries no mark."""
    gold = ["entailment"] * 17 + ["contradiction"] * 15 + ["neutral"] * 8
    wrong = {"entailment": "contradiction", "contradiction": "neutral", "neutral": "entailment"}
    root = str(tmp_path)
    answered_run(root, name(["q_proj", "v_proj"]), lora(["q_proj", "v_proj"], 100), gold, ["entailment"] * 40)
    answered_run(root, name(["q_proj", "v_proj", "up_proj"]), lora(["q_proj", "up_proj", "v_proj"], 200), gold,
                 [g if i < 22 else wrong[g] for i, g in enumerate(gold)])
    answered_run(root, name(["q_proj", "v_proj", "down_proj"]), lora(["down_proj", "q_proj", "v_proj"], 200), gold,
                 [g if i < 36 else wrong[g] for i, g in enumerate(gold)])
    get_eval_tasks.main(["--root", root, "--no_plot"])
    md = open(os.path.join(root, "CB", "summary.md")).read()
    cells = {}
    for line in table(md):  # the accuracy table's row of each setting: the first
        cells.setdefault(line.split(" | ")[0][2:], line.split(" | ")[1])
    assert cells["q,v"] == "42.5 [28.5, 57.8]†‡"
    assert cells["q,v+up (keys)"] == "55.0 [39.8, 69.3]‡"
    assert cells["q,v+down (values)"] == "90.0 [76.9, 96.0]"
    assert "† one answer to every row (a constant predictor); ‡ the interval holds the majority class" in md


def test_a_root_that_is_a_file_or_missing_is_one_line(tmp_path):
    notes = tmp_path / "README.md"
    notes.write_text("# notes\n")
    with pytest.raises(utils.UserError, match="README.md is a file, not a folder: give the output root"):
        get_eval_tasks.main(["--root", str(notes)])
    with pytest.raises(utils.UserError, match="nowhere does not exist"):
        get_eval_tasks.main(["--root", str(tmp_path / "nowhere")])


def test_the_report_says_what_it_mixes_and_what_it_leaves_out(tmp_path):
    """Rows of one name told apart in words (the learning rate, the base), never by a hash; an adapter evaluated on
    a task it was not trained on is said and left out of its mean; an interrupted run and a run not evaluated yet
    are listed."""
    root, folder = str(tmp_path), "CB"
    up = ["q_proj", "v_proj", "up_proj"]
    fake_run(root, folder, "base-A", {"kind": "base", "base_checkpoint": "org/Model-A"}, {"CB": [True] * 4 + [False] * 6})
    fake_run(root, folder, "base-B", {"kind": "base", "base_checkpoint": "org/Model-B"}, {"CB": [False] * 10})
    fake_run(root, folder, name(up), lora(up, 200, tasks=["CB"]), {"CB": [True] * 8 + [False] * 2,
                                                                    "boolq": [False] * 10})
    other_lr = lora(up, 200, tasks=["CB"])
    other_lr["args"]["learning_rate"] = 0.001
    fake_run(root, folder, name(up) + "-h4530c588", other_lr, {"CB": [True] * 5 + [False] * 5})
    interrupted = os.path.join(root, folder, "classification-interrupted")
    os.makedirs(os.path.join(interrupted, "checkpoint-2"))
    utils.write_json(os.path.join(interrupted, "identity.json"), {})
    unevaluated = os.path.join(root, folder, "classification-unevaluated")
    os.makedirs(unevaluated)
    utils.write_json(os.path.join(unevaluated, "experiment.json"), lora(up, 200, tasks=["CB"]))
    get_eval_tasks.main(["--root", root, "--no_plot"])
    md = open(os.path.join(root, folder, "summary.md")).read()
    names = [line.split(" | ")[0][2:] for line in table(md)]
    assert "base (no adapter) [base Model-A]" in names and "base (no adapter) [base Model-B]" in names
    assert "q,v+up (keys) [learning rate 0.002]" in names and "q,v+up (keys) [learning rate 0.001]" in names
    assert not any("-h4530c588" in n for n in names)
    row = [line for line in table(md) if line.startswith("| q,v+up (keys) [learning rate 0.002] |")][0].split(" | ")
    assert row[1].startswith("80.0 [") and row[2].startswith("0.0 [") and row[3] == "80.0"  # CB, boolq; mean: CB
    assert "q,v+up (keys) [learning rate 0.002]: evaluated on boolq, not among the tasks it was trained on (CB)" in md
    assert "- classification-interrupted: its training did not finish (run it again with --resume)" in md
    assert "- classification-unevaluated: trained, not evaluated yet" in md
