"""The task table against SPEC.md: exact training texts and inference prompts, label maps, cleaning rules,
the data-source order and its error, sampling, prediction extraction and label matching. No model."""

import json
import os

import pytest

import prompts
from conftest import ROOT, SAMPLE
from keys_values import data
from prompts import TASKS
from utils import UserError

NLI3_CUE = "### Relationship (entailment, contradiction or neutral):"
NLI2_CUE = "### Relationship (choose between 'entailment' and 'not entailment'):"

# task -> (a raw row in the hub schema, the exact training text SPEC.md's template gives for it)
CASES = {
    "20_Newsgroups_Fixed": ({"text": "I like rockets", "label": "sci.space"},
                            "### Sentence:I like rockets ### Class:sci.space"),
    "boolq": ({"question": "is it so", "passage": "It is so.", "idx": 0, "label": 1},
              "Read the Passage and answer the Question with true or false ### Question:is it so ### Passage: It is so. "
              "### Answer:true"),
    "COPA": ({"premise": "P.", "choice1": "C1.", "choice2": "C2.", "question": "effect", "label": 1},
             "### Premise:P. ### Choice1:C1. ### Choice2:C2. ### Question:effect ### Choice:Choice2"),
    "CB": ({"premise": "P.", "hypothesis": "H.", "label": 1}, f"### Premise:P. ### Hypothesis:H. {NLI3_CUE}contradiction"),
    "MNLI": ({"premise": "P.", "hypothesis": "H.", "label": 1}, f"### Premise:P. ### Hypothesis:H. {NLI3_CUE}neutral"),
    "RTE": ({"premise": "P.", "hypothesis": "H.", "label": 1}, f"### Premise:P. ### Hypothesis:H. {NLI2_CUE}not_entailment"),
    "QNLI": ({"question": "Q?", "sentence": "S.", "label": 0}, f"### Premise:Q? ### Hypothesis:S. {NLI2_CUE}entailment"),
    "WNLI": ({"sentence1": "S1.", "sentence2": "S2.", "label": 0}, f"### Premise:S1. ### Hypothesis:S2. {NLI2_CUE}not_entailment"),
    "race_high": ({"article": "Art.", "question": "Q?", "options": ["a", "b", "c", "d"], "answer": "C"},
                  "Read Context and answer question ### Context:Art. ### Question:Q? ### Options:A.a. B.b. C.c. D.d### Choice:C"),
    "race_middle": ({"article": "Art.", "question": "Q?", "options": ["a", "b", "c", "d"], "answer": "A"},
                    "Read Context and answer question ### Context:Art. ### Question:Q? ### Options:A.a. B.b. C.c. D.d### Choice:A"),
    "commonsense_qa": ({"question": "Q?", "choices": {"label": list("ABCDE"), "text": list("vwxyz")}, "answerKey": "E"},
                       "According to the Question, select the best choice among the Options. ### Question:Q? "
                       "### Options:A.v. B.w. C.x. D.y E.z ### Choice:E"),
    "swag": ({"sent1": "S1.", "sent2": "He", "ending0": "e0", "ending1": "e1", "ending2": "e2", "ending3": "e3", "label": 0},
             "Select the correct sentence that best completes the Passage below. ### Passage:S1. He "
             "### Options:A.e0. B.e1. C.e2. D.e3### Choice:A"),
    "squad_v2": ({"context": "C.", "question": "Q?", "answers": {"text": ["ans", "x"], "answer_start": [0, 1]}},
                 "Read Context and answer question ### Context:C. ### Question:Q? ### Answer:ans"),
    "newsqa": ({"context": "C.", "question": "Q?", "answers": ["ans"]},
               "Read Context and answer question ### Context:C. ### Question:Q? ### Answer:ans"),
    "hotpot_qa": ({"context": {"title": ["T1", "T2"], "sentences": [["A.", " B."], ["C."]]}, "question": "Q?", "answer": "ans"},
                  "Read Context and answer question ### Context:T1: A. B. T2: C. ### Question:Q? ### Answer:ans"),
}


def test_every_task_is_pinned():
    assert sorted(CASES) == sorted(TASKS) and len(TASKS) == 15


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_text_and_prompt_match_spec(name):
    row, expected = CASES[name]
    task = TASKS[name]
    [e] = prompts.clean(task, [row], "test")
    assert prompts.training_text(task, e.fields, e.label) == expected
    prompt = prompts.prompt_text(task, e.fields)
    assert expected == prompt + e.label  # the prompt is the training text cut just before the label
    assert e.gold[0] == e.label


def test_label_maps():
    maps = {n: TASKS[n].label_map for n in ("boolq", "COPA", "CB", "MNLI", "RTE", "QNLI", "WNLI", "swag")}
    assert maps == {
        "boolq": {1: "true", 0: "false"}, "COPA": {0: "Choice1", 1: "Choice2"},
        "CB": {0: "entailment", 1: "contradiction", 2: "neutral"},
        "MNLI": {0: "entailment", 1: "neutral", 2: "contradiction"},
        "RTE": {0: "entailment", 1: "not_entailment"}, "QNLI": {0: "entailment", 1: "not_entailment"},
        "WNLI": {0: "not_entailment", 1: "entailment"}, "swag": {0: "A", 1: "B", 2: "C", 3: "D"}}
    assert TASKS["20_Newsgroups_Fixed"].eval_split == "test" and TASKS["MNLI"].eval_split == "validation_mismatched"


def test_cleaning_rules_drop_only_documented_rows():
    ng = TASKS["20_Newsgroups_Fixed"]
    rows = [{"text": "a", "label": "x"}, {"text": None, "label": "x"}, {"text": "b", "label": 3}]
    assert [e.label for e in prompts.clean(ng, rows, "t")] == ["x"]
    race = TASKS["race_high"]
    rows = [{"article": "a", "question": "q", "options": ["1", "2"], "answer": a} for a in ("B", "F")]
    examples = prompts.clean(race, rows, "t")
    assert [e.label for e in examples] == ["B"] and examples[0].fields["C"] == ""  # a missing option is empty
    squad = TASKS["squad_v2"]
    rows = [{"context": "c", "question": "q", "answers": {"text": [], "answer_start": []}},
            {"context": "c", "question": "q", "answers": {"text": ["a"], "answer_start": [0]}}]
    assert [e.label for e in prompts.clean(squad, rows, "t")] == ["a"]


def test_missing_column_and_unknown_label_name_file_and_row():
    cb = TASKS["CB"]
    with pytest.raises(UserError, match=r"f\.jsonl row 1: missing column 'hypothesis'"):
        prompts.clean(cb, [{"premise": "p", "hypothesis": "h", "label": 0}, {"premise": "p", "label": 0}], "f.jsonl")
    with pytest.raises(UserError, match=r"f\.jsonl row 0: label 7 is not one of \[0, 1, 2\]"):
        prompts.clean(cb, [{"premise": "p", "hypothesis": "h", "label": 7}], "f.jsonl")
    with pytest.raises(UserError, match="no usable rows"):
        prompts.clean(cb, [], "f.jsonl")


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_data_source_order(tmp_path):
    cb = TASKS["CB"]
    row = {"premise": "from-file", "hypothesis": "h", "label": 0}
    write_jsonl(tmp_path / "CB" / "train.jsonl", [row])
    rows, source = data.load_rows(cb, str(tmp_path), "train")
    assert rows == [row] and source["source"] == "file" and source["path"].endswith("CB/train.jsonl")
    datasets = pytest.importorskip("datasets")
    disk = tmp_path / "disk_datasets" / "super_glue" / "cb"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{**row, "premise": "from-disk"}])}).save_to_disk(str(disk))
    rows, source = data.load_rows(cb, str(tmp_path), "train")  # disk_datasets wins over files
    assert rows[0]["premise"] == "from-disk" and source["source"] == "disk_datasets" and source["split"] == "train"


def test_csv_and_parquet_files(tmp_path):
    pytest.importorskip("datasets")
    import csv

    (tmp_path / "boolq").mkdir()
    with open(tmp_path / "boolq" / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["question", "passage", "label"])
        w.writeheader()
        w.writerow({"question": "q", "passage": "p", "label": 1})
    [e], source = data.load(TASKS["boolq"], str(tmp_path), "train")
    assert e.label == "true" and e.fields["passage"] == "p" and source["path"].endswith("train.csv")


def test_no_data_is_one_error_naming_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        data.load(TASKS["boolq"], str(tmp_path), "validation")
    msg = str(e.value)
    assert "\n" not in msg and "'boolq'" in msg
    for place in ("disk_datasets/super_glue/boolq", "boolq/validation.{jsonl,json,csv,parquet}", "hub aps/super_glue"):
        assert place in msg


def test_max_samples_and_stratified_sample():
    examples = [prompts.Example({"i": str(i)}, "a" if i % 4 else "b", ()) for i in range(100)]  # 75 a, 25 b
    sample = prompts.stratified_sample(examples, 0.2, seed=1)
    labels = [e.label for e in sample]
    assert len(sample) == 20 and labels.count("a") == 15 and labels.count("b") == 5
    assert sample == sorted(sample, key=lambda e: int(e.fields["i"]))  # original order kept
    assert sample != prompts.stratified_sample(examples, 0.2, seed=2)
    assert sample == prompts.stratified_sample(examples, 0.2, seed=1)
    qa = [prompts.Example({"i": str(i)}, f"answer {i}", ()) for i in range(10)]  # unique labels: crashed in the original
    assert len(prompts.stratified_sample(qa, 0.5, seed=0)) == 5
    with pytest.raises(UserError):
        prompts.stratified_sample(examples, 1.5, seed=0)


def test_unknown_and_empty_tasks():
    with pytest.raises(UserError, match="unknown task 'boolqq'.*20_Newsgroups_Fixed boolq COPA"):
        prompts.check_tasks(["boolqq"])
    with pytest.raises(UserError, match="no task given"):
        prompts.check_tasks([])


@pytest.mark.parametrize("generated,expected", [
    (" true", "true"), ("true\n### Question: more", "true"), ("Choice2### Premise: x", "Choice2"),
    ("", ""), ("  \n", ""), ("entailment. The hypothesis follows", "entailment. The hypothesis follows")])
def test_extract_prediction(generated, expected):
    assert prompts.extract_prediction(generated) == expected


def test_label_matching_forgives_case_and_punctuation_only():
    assert prompts.match_label("True", ["true", "false"]) == "true"
    assert prompts.match_label("true.", ["true", "false"]) == "true"
    assert prompts.match_label(" 'false' ", ["true", "false"]) == "false"
    assert prompts.match_label("truest", ["true", "false"]) is None
    options = prompts.choices(TASKS["RTE"])
    assert prompts.match_label("Not_Entailment", options) == "not_entailment"
    assert prompts.match_label("not entailment", options) is None  # the label is not_entailment, not two words
    assert prompts.match_label("choice2", ["Choice1", "Choice2"]) == "Choice2"
    assert prompts.match_label("Choice 2", ["Choice1", "Choice2"]) is None


@pytest.mark.parametrize("answer,expected", [
    ("False The library is large and the book is", "false"),  # the label, then text running on
    ("true, because the passage says so", "true"),
    ("  FALSE.", "false"),
    ("falsehood", None),  # no word boundary after the label
    ("Choice1 is the answer", "Choice1"),
    ("Choice12", None),
    ("The answer is true", None),  # the label is not where the answer starts
    ("", None),
])
def test_a_prediction_is_the_label_the_answer_starts_with(answer, expected):
    options = ["true", "false"] if expected in (None, "true", "false") and not answer.startswith("Choice") else \
        ["Choice1", "Choice2"]
    assert prompts.match_label(answer, options) == expected


def test_the_longest_label_an_answer_starts_with_wins():
    assert prompts.match_label("not_entailment, since", ["entailment", "not_entailment"]) == "not_entailment"
    assert prompts.match_label("comp.sys.mac.hardware is it", ["comp.sys", "comp.sys.mac.hardware"]) == \
        "comp.sys.mac.hardware"
    assert prompts.match_label("entailment follows", ["entailment", "not_entailment"]) == "entailment"


def test_sample_data_is_reproducible_and_complete(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_sample_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name, task in TASKS.items():
        for split in ("train", task.eval_split):
            ours = (tmp_path / name / f"{split}.jsonl").read_text()
            assert ours == open(os.path.join(SAMPLE, name, f"{split}.jsonl")).read()
        train, _ = data.load(task, str(tmp_path), "train")
        evals, _ = data.load(task, str(tmp_path), task.eval_split)
        if task.closed:
            assert len(train) >= 60 and len(evals) >= 30
        seen = {(tuple(sorted(e.fields.items())), e.label) for e in train}
        assert not [e for e in evals if (tuple(sorted(e.fields.items())), e.label) in seen], name  # none seen
        from keys_values.training.plan import training_warnings
        assert training_warnings(task, train, str(tmp_path)) == []


def test_qa_rows_keep_every_gold_answer():
    squad = TASKS["squad_v2"]
    [e] = prompts.clean(squad, [{"context": "c", "question": "q", "answers": {"text": ["Paris", "the city of Paris"],
                                                                            "answer_start": [0, 0]}}], "t")
    assert e.label == "Paris" and e.gold == ("Paris", "the city of Paris")  # trained on the first, scored on all
    [e] = prompts.clean(TASKS["newsqa"], [{"context": "c", "question": "q", "answers": ["a", "b"]}], "t")
    assert e.gold == ("a", "b")
    assert TASKS["squad_v2"].scoring("rank") == "generate" and TASKS["CB"].scoring("rank") == "rank"


def test_load_says_where_rows_came_from_and_how_many_were_kept(tmp_path):
    ng = [{"text": "a", "label": "x"}, {"text": None, "label": "x"}, {"text": "b", "label": "y"}, {"text": "c", "label": "z"}]
    write_jsonl(tmp_path / "20_Newsgroups_Fixed" / "test.jsonl", ng)
    examples, source = data.load(TASKS["20_Newsgroups_Fixed"], str(tmp_path), "test", max_samples=2)
    assert [e.label for e in examples] == ["x", "y"]
    assert source == {"source": "file", "path": str(tmp_path / "20_Newsgroups_Fixed" / "test.jsonl"), "split": "test",
                      "rows": 4, "clean": 3, "used": 2, "dropped": {"text not a string": 1}}
    assert data.describe(source).endswith("20_Newsgroups_Fixed/test.jsonl")


def test_hub_rows_are_announced_and_recorded(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list([{"question": "q", "passage": "p", "label": 1}])

    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples, source = data.load(TASKS["boolq"], str(tmp_path), "validation")
    assert calls == [("aps/super_glue", "boolq", "validation")]
    assert [e.label for e in examples] == ["true"]
    assert source == {"source": "hub", "hub_id": "aps/super_glue", "config": "boolq", "split": "validation",
                      "rows": 1, "clean": 1, "used": 1, "dropped": {}}
    assert "boolq: downloading aps/super_glue (boolq) split 'validation' from the hub" in capsys.readouterr().out

    def broken(*a, **k):
        raise ConnectionError("name resolution failed")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(UserError, match=r"hub aps/super_glue \(ConnectionError: name resolution failed\)"):
        data.load(TASKS["boolq"], str(tmp_path), "validation")
