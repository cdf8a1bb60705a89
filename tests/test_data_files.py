"""People's own data files, in every format the loader reads (jsonl, json, csv, parquet, disk_datasets folders):
each way a file is commonly off is ONE UserError line naming the file, the line or row, and the cause, and
nothing is written; the good variants load with the right labels. Also: the rows dropped by the cleaning rules
counted by reason, the original's /disk_datasets search order, the split-name hint, find_source, and the
spelling hints of check_tasks. No model, no network."""

import codecs
import json
import math
import os

import pytest

import prompts
from keys_values import data
from prompts import TASKS
from utils import UserError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CB_ROWS = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3} for i in range(6)]
CB_LABELS = ["entailment", "contradiction", "neutral"] * 2
CB_COLUMNS = {"premise": [r["premise"] for r in CB_ROWS], "hypothesis": [r["hypothesis"] for r in CB_ROWS],
              "label": [r["label"] for r in CB_ROWS]}


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def csv_text(rows, header=("premise", "hypothesis", "label")):
    """A csv of the rows' values (in their order) under `header`."""
    return ",".join(header) + "\n" + "".join(",".join(str(v) for v in r.values()) + "\n" for r in rows)


def parquet(columns):
    """A writer of a parquet file holding `columns` (a dict of lists, or a pyarrow table)."""
    def write(path):
        pq.write_table(columns if isinstance(columns, pa.Table) else pa.table(columns), path)
    return write


def put(root, rel, content):
    """Write `content` (text, bytes, or a writer(path)) at root/rel."""
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        with open(path, "wb") as f:
            f.write(content)
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(content)
    return path


def cut_parquet(columns, keep):
    """A parquet file of `columns` cut down to its first `keep` fraction of bytes (or patched by `keep(bytes)`)."""
    def write(path):
        parquet(columns)(path)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(keep(data) if callable(keep) else data[: int(len(data) * keep)])
    return write


def saved(dataset_dict=None, dataset=None, then=None):
    """A writer of a disk_datasets folder saved with datasets' save_to_disk, optionally damaged by then(folder)."""
    def write(folder):
        datasets = pytest.importorskip("datasets")
        datasets.disable_progress_bars()
        if dataset_dict is not None:
            datasets.DatasetDict({k: datasets.Dataset.from_dict(v) if isinstance(v, dict) else datasets.Dataset.from_list(v)
                                  for k, v in dataset_dict.items()}).save_to_disk(folder)
        else:
            rows, split = dataset
            ds = datasets.Dataset.from_list(rows)
            if split:
                ds = datasets.Dataset(ds.data, split=datasets.NamedSplit(split))
            ds.save_to_disk(folder)
        if then:
            then(folder)
    return write


def damage_arrow(folder):
    for base, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".arrow"):
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    data = f.read()
                with open(path, "wb") as f:
                    f.write(data[:100])


def write_text(name, text):
    def then(folder):
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return then


DISK = "disk_datasets/super_glue/cb"
CUT = jsonl(CB_ROWS) + '{"premise": "p6", "hypo'  # a 7th line cut in the middle
LATIN1 = jsonl(CB_ROWS[:2]).encode() + '{"premise": "Caf\xe9", "hypothesis": "h", "label": 0}\n'.encode("latin-1")

# (id, task, file under the data root, content, split, texts the one-line message must hold; "{f}" is the file)
BAD = [
    # --- jsonl
    ("jsonl: last line cut in a string", "CB", "CB/train.jsonl", CUT, "train",
     ["{f} line 7: not valid JSON (Unterminated string starting at column 19)", "may be cut off"]),
    ("jsonl: last line cut after a value", "CB", "CB/train.jsonl", jsonl(CB_ROWS) + '{"premise": "p6"', "train",
     ["{f} line 7: not valid JSON (Expecting ',' delimiter at column 17)", "may be cut off"]),
    ("jsonl: malformed middle line, blank lines counted", "CB", "CB/train.jsonl",
     jsonl(CB_ROWS[:2]) + "\n" + '{"premise": "p" "hypothesis": "h", "label": 0}\n' + jsonl(CB_ROWS), "train",
     ["{f} line 4: not valid JSON (Expecting ',' delimiter at column 17)"]),
    ("jsonl: single quotes", "CB", "CB/train.jsonl", "{'premise': 'p', 'hypothesis': 'h', 'label': 0}\n", "train",
     ["{f} line 1: not valid JSON (Expecting property name enclosed in double quotes at column 2)"]),
    ("jsonl: a line that is a list", "CB", "CB/train.jsonl", jsonl(CB_ROWS[:2]) + '["p", "h", 0]\n', "train",
     ["{f} line 3: is a list, not an object of columns"]),
    ("jsonl: a line that is a text", "CB", "CB/train.jsonl", jsonl(CB_ROWS[:1]) + '"p"\n', "train",
     ["{f} line 2: is a text, not an object"]),
    ("jsonl: a line that is null", "CB", "CB/train.jsonl", "null\n", "train", ["{f} line 1: is null, not an object"]),
    ("jsonl: a line that is a number", "CB", "CB/train.jsonl", jsonl(CB_ROWS[:3]) + "5\n", "train",
     ["{f} line 4: is a number, not an object"]),
    ("jsonl: a whole JSON list on one line", "CB", "CB/train.jsonl", json.dumps(CB_ROWS), "train",
     ["{f} line 1: is a list, not an object", "name it .json"]),
    ("jsonl: a pretty-printed JSON list", "CB", "CB/train.jsonl", json.dumps(CB_ROWS, indent=2), "train",
     ["{f} line 1: not valid JSON", "not JSON Lines"]),
    ("jsonl: not UTF-8", "CB", "CB/train.jsonl", LATIN1, "train",
     ["{f} line 3: not UTF-8 text (byte 0xe9 at byte offset", "byte 17 of the line", "re-save the file as UTF-8"]),
    ("jsonl: UTF-16", "CB", "CB/train.jsonl", codecs.BOM_UTF16_LE + jsonl(CB_ROWS).encode("utf-16-le"), "train",
     ["{f}: is UTF-16 text", "re-save it as UTF-8"]),
    ("jsonl: UTF-16 without a byte-order mark", "CB", "CB/train.jsonl", jsonl(CB_ROWS).encode("utf-16-le"), "train",
     ["{f} line 1: holds NUL characters", "re-save the file as UTF-8"]),
    ("jsonl: gzip-compressed", "CB", "CB/train.jsonl", b"\x1f\x8b\x08\x00rest", "train", ["{f}: is gzip-compressed"]),
    ("jsonl: a parquet file under a jsonl name", "CB", "CB/train.jsonl", parquet(CB_COLUMNS), "train",
     ["{f}: is a parquet file", "rename it to .parquet"]),
    ("jsonl: empty file", "CB", "CB/train.jsonl", "", "train", ["{f}: no usable rows for task CB: the file is empty"]),
    ("jsonl: blank lines only", "CB", "CB/train.jsonl", "\n \n\r\n", "train",
     ["{f}: no usable rows for task CB: the file is empty"]),
    ("jsonl: missing column", "CB", "CB/train.jsonl", jsonl([CB_ROWS[0], {"premise": "p", "hypo": "h", "label": 0}]),
     "train", ["{f} row 1: missing column 'hypothesis' for task CB", "the row has premise, hypo, label", "line 2"]),
    ("jsonl: label a word", "CB", "CB/train.jsonl", jsonl([*CB_ROWS[:5], {**CB_ROWS[5], "label": "yes"}]), "train",
     ["{f} row 5: label 'yes' is not one of [0, 1, 2] for task CB", "line 6"]),
    ("jsonl: row and line differ after blank lines", "CB", "CB/train.jsonl",
     "\n" + jsonl(CB_ROWS[:1]) + "\n\n" + jsonl(CB_ROWS[1:2]) + jsonl([{**CB_ROWS[2], "label": 9}]), "train",
     ["{f} row 2: label 9 is not one of [0, 1, 2] for task CB (line 6 of the file)"]),
    ("jsonl: label 1.5", "CB", "CB/train.jsonl", jsonl([CB_ROWS[0], {**CB_ROWS[1], "label": 1.5}]), "train",
     ["{f} row 1: label 1.5 is not a whole number", "line 2"]),
    ("jsonl: label a list", "CB", "CB/train.jsonl", jsonl([{**CB_ROWS[0], "label": [1]}]), "train",
     ["{f} row 0: label [1] is a list, not one value"]),
    ("jsonl: label null", "CB", "CB/train.jsonl", jsonl([{**CB_ROWS[0], "label": None}]), "train",
     ["{f} row 0: label is empty (null)"]),
    ("jsonl: label NaN", "CB", "CB/train.jsonl", '{"premise": "p", "hypothesis": "h", "label": NaN}\n', "train",
     ["{f} row 0: label is empty (NaN)"]),
    ("jsonl: label true where the map has no true/false", "CB", "CB/train.jsonl", jsonl([{**CB_ROWS[0], "label": True}]),
     "train", ["{f} row 0: label True is true/false; task CB needs one of [0, 1, 2]"]),
    ("jsonl: label out of the map", "COPA", "COPA/train.jsonl",
     jsonl([{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 2}]), "train",
     ["{f} row 0: label 2 is not one of [0, 1] for task COPA"]),
    ("jsonl: race options not a list", "race_high", "race_high/train.jsonl",
     jsonl([{"article": "a", "question": "q", "options": "abcd", "answer": "A"}]), "train",
     ["{f} row 0: column 'options' is a text, not a list of options"]),
    ("jsonl: QA row without answers", "squad_v2", "squad_v2/train.jsonl", jsonl([{"context": "c", "question": "q"}]),
     "train", ["{f} row 0: missing column 'answers' for task squad_v2"]),
    ("jsonl: QA answers object without text", "squad_v2", "squad_v2/train.jsonl",
     jsonl([{"context": "c", "question": "q", "answers": {"answer_start": [0]}}]), "train",
     ["{f} row 0: column 'answers' is an object without 'text'"]),
    # --- json
    ("json: cut off", "CB", "CB/train.json", json.dumps(CB_ROWS)[:-25], "train",
     ["{f} line 1: not valid JSON", "the file may be cut off"]),
    ("json: JSON Lines in a .json file", "CB", "CB/train.json", jsonl(CB_ROWS), "train",
     ["{f} line 2: not valid JSON (Extra data at column 1)", "name it .jsonl"]),
    ("json: an item that is not an object", "CB", "CB/train.json", json.dumps([CB_ROWS[0], ["p", "h", 0]]), "train",
     ["{f} row 1: is a list, not an object of columns"]),
    ("json: a scalar", "CB", "CB/train.json", "42", "train", ["{f}: is a number, not a list of rows or an object of columns"]),
    ("json: columns missing one", "CB", "CB/train.json", json.dumps({"premise": ["a"], "hypo": ["b"], "label": [0]}),
     "train", ["{f}: has columns premise, hypo, label; task CB needs premise, hypothesis, label (missing hypothesis)"]),
    ("json: columns of different lengths", "CB", "CB/train.json",
     json.dumps({"premise": ["a", "b"], "hypothesis": ["c"], "label": [0, 1]}), "train",
     ["{f}: its columns have different lengths (premise 2, hypothesis 1, label 2)"]),
    ("json: a column that is not a list", "CB", "CB/train.json",
     json.dumps({"premise": ["a"], "hypothesis": ["c"], "label": 0}), "train",
     ["{f}: column 'label' is a number, not a list of values"]),
    ("json: rows wrapped in an object", "CB", "CB/train.json", json.dumps({"data": CB_ROWS}), "train",
     ["{f}: an object of 'data' holding lists of rows", "write the list of rows itself"]),
    ("json: not UTF-8", "CB", "CB/train.json", b'[{"premise": "\xff", "hypothesis": "h", "label": 0}]', "train",
     ["{f} line 1: not UTF-8 text (byte 0xff at byte offset 14 of the file, byte 15 of the line)"]),
    ("json: empty list", "CB", "CB/train.json", "[]", "train", ["{f}: no usable rows for task CB: the file has no rows"]),
    ("json: empty file", "CB", "CB/train.json", "", "train", ["{f}: no usable rows for task CB: the file is empty"]),
    ("json: label a word", "boolq", "boolq/train.json",
     json.dumps([{"question": "q", "passage": "p", "label": 1}, {"question": "q", "passage": "p", "label": "yes"}]),
     "train", ["{f} row 1: label 'yes' is not one of [0, 1] for task boolq"]),
    # --- a text column of the wrong type (labels have their own cases)
    ("jsonl: premise null", "CB", "CB/train.jsonl", jsonl([CB_ROWS[0], {**CB_ROWS[1], "premise": None}]), "train",
     ["{f} row 1: column 'premise' is empty (null); task CB needs a text there (line 2 of the file)"]),
    ("jsonl: hypothesis an object", "CB", "CB/train.jsonl", jsonl([{**CB_ROWS[0], "hypothesis": {"x": [1, 2]}}]),
     "train", ["{f} row 0: column 'hypothesis' is an object, not a text (line 1 of the file)"]),
    ("json: question a list", "boolq", "boolq/train.json",
     json.dumps([{"question": ["is", "it"], "passage": "p", "label": 1}]), "train",
     ["{f} row 0: column 'question' is a list, not a text"]),
    ("jsonl: COPA choice true", "COPA", "COPA/train.jsonl",
     jsonl([{"premise": "p", "choice1": True, "choice2": "b", "question": "cause", "label": 0}]), "train",
     ["{f} row 0: column 'choice1' is true/false, not a text"]),
    ("parquet: premise null", "CB", "CB/train.parquet", parquet({**CB_COLUMNS, "premise": ["a", None, "c", "d", "e", "f"]}),
     "train", ["{f} row 1: column 'premise' is empty (null)"]),
    ("race: an option null", "race_high", "race_high/train.jsonl",
     jsonl([{"article": "a", "question": "q", "options": ["w", None, "y", "z"], "answer": "A"}]), "train",
     ["{f} row 0: option B is empty (null)"]),
    # --- csv
    ("csv: header does not match", "CB", "CB/train.csv", csv_text(CB_ROWS, ("premise", "hypo", "label")), "train",
     ["{f}: header has premise, hypo, label; task CB needs premise, hypothesis, label (missing hypothesis)"]),
    ("csv: no header line", "CB", "CB/train.csv", "p,h,1\nq,h,2\n", "train",
     ["{f}: header has p, h, 1;", "(missing premise, hypothesis, label)", "is the header line missing?"]),
    ("csv: separated by semicolons", "CB", "CB/train.csv", "premise;hypothesis;label\np;h;1\n", "train",
     ["{f}: header has premise;hypothesis;label", "separated by semicolons"]),
    ("csv: separated by tabs", "CB", "CB/train.csv", "premise\thypothesis\tlabel\np\th\t1\n", "train",
     ["{f}: header has", "separated by tabs"]),
    ("csv: last line cut off", "CB", "CB/train.csv", csv_text(CB_ROWS) + "p6,h6", "train",
     ["{f} line 8: 2 fields where the header has 3 (premise, hypothesis, label); the line may be cut off"]),
    ("csv: a line with a missing value", "CB", "CB/train.csv", "premise,hypothesis,label\np,1\nq,h,2\n", "train",
     ["{f} line 2: 2 fields where the header has 3", "a value is missing"]),
    ("csv: an unquoted comma", "CB", "CB/train.csv", "premise,hypothesis,label\np, yes,h,1\nq,h,2\n", "train",
     ["{f} line 2: 4 fields where the header has 3", "must be in double quotes"]),
    ("csv: quote never closed", "CB", "CB/train.csv", 'premise,hypothesis,label\np,h,1\n"q,h,2\n', "train",
     ["{f} line 3: not valid CSV (unexpected end of data)", "may be cut off"]),
    ("csv: stray quote", "CB", "CB/train.csv", 'premise,hypothesis,label\n"p"x,h,1\n', "train",
     ["{f} line 2: not valid CSV"]),
    ("csv: header names a column twice", "CB", "CB/train.csv", "premise,hypothesis,label,label\np,h,1,1\n", "train",
     ["{f} line 1: the header names 'label' twice"]),
    ("csv: not UTF-8", "CB", "CB/train.csv", b"premise,hypothesis,label\nCaf\xe9,h,1\n", "train",
     ["{f} line 2: not UTF-8 text (byte 0xe9 at byte offset 28 of the file, byte 4 of the line)", "UTF-8"]),
    ("csv: an Excel workbook", "CB", "CB/train.csv", b"PK\x03\x04rest", "train", ["{f}: is a zip archive"]),
    ("csv: label a word", "CB", "CB/train.csv", "premise,hypothesis,label\np,h,1\nq,h,yes\n", "train",
     ["{f} row 1: label 'yes' is not one of [0, 1, 2] for task CB", "line 3"]),
    ("csv: label 1.5", "CB", "CB/train.csv", "premise,hypothesis,label\np,h,1.5\n", "train",
     ["{f} row 0: label '1.5' is not one of [0, 1, 2]", "line 2"]),
    ("csv: empty label cell", "CB", "CB/train.csv", "premise,hypothesis,label\np,h,1\nq,h,\n", "train",
     ["{f} row 1: label is empty (null)", "line 3"]),
    ("csv: row line numbers count multi-line cells", "CB", "CB/train.csv",
     'premise,hypothesis,label\n"two\nlines",h,1\nq,h,9\n', "train", ["{f} row 1: label '9' is not one of", "line 4"]),
    ("csv: empty file", "CB", "CB/train.csv", "", "train", ["{f}: no usable rows for task CB: the file is empty"]),
    ("csv: header only", "CB", "CB/train.csv", "premise,hypothesis,label\n", "train",
     ["{f}: no usable rows for task CB: the file has a header and no rows"]),
    ("csv: race options as plain text", "race_high", "race_high/train.csv",
     "article,question,options,answer\na,q,abcd,A\n", "train", ["{f} row 0: column 'options' is a text, not a list"]),
    # --- parquet
    ("parquet: not parquet", "CB", "CB/train.parquet", b"premise,hypothesis,label\n", "train",
     ["{f}: not a readable parquet file", "it may be cut off, or not parquet"]),
    ("parquet: cut in half", "CB", "CB/train.parquet", cut_parquet(CB_COLUMNS, 0.5), "train",
     ["{f}: not a readable parquet file"]),
    ("parquet: corrupt footer", "CB", "CB/train.parquet", cut_parquet(CB_COLUMNS, lambda b: b[:-12] + b"\xff" * 8 + b"PAR1"),
     "train", ["{f}: not a readable parquet file"]),
    ("parquet: empty file", "CB", "CB/train.parquet", b"", "train", ["{f}: no usable rows for task CB: the file is empty"]),
    ("parquet: no rows", "CB", "CB/train.parquet", parquet({k: pa.array([], pa.string()) for k in CB_COLUMNS}), "train",
     ["{f}: no usable rows for task CB: the file has no rows"]),
    ("parquet: columns do not match", "CB", "CB/train.parquet",
     parquet({"Premise": ["a"], "hypothesis": ["b"], "label": [0]}), "train",
     ["{f}: has columns Premise, hypothesis, label; task CB needs premise, hypothesis, label (missing premise)",
      "rename 'Premise' to 'premise'"]),
    ("parquet: label 1.5", "CB", "CB/train.parquet", parquet({**CB_COLUMNS, "label": [0.0, 1.5, 2.0, 0.0, 1.0, 2.0]}),
     "train", ["{f} row 1: label 1.5 is not a whole number"]),
    ("parquet: label null", "CB", "CB/train.parquet", parquet({**CB_COLUMNS, "label": [0, 1, None, 0, 1, 2]}), "train",
     ["{f} row 2: label is empty (null)"]),
    ("parquet: label a word", "RTE", "RTE/train.parquet",
     parquet({"premise": ["a"], "hypothesis": ["b"], "label": ["yes"]}), "train",
     ["{f} row 0: label 'yes' is not one of [0, 1] for task RTE"]),
    ("parquet: label a list", "CB", "CB/train.parquet", parquet({"premise": ["a"], "hypothesis": ["b"], "label": [[1]]}),
     "train", ["{f} row 0: label [1] is a list"]),
    # --- disk_datasets folders
    ("disk: not a saved dataset", "CB", DISK, lambda p: put(p, "train.jsonl", jsonl(CB_ROWS)), "train",
     ["{f}: not a saved dataset (no dataset_dict.json or state.json; it holds train.jsonl)", "save_to_disk"]),
    ("disk: an empty folder", "CB", DISK, os.makedirs, "train", ["{f}: not a saved dataset", "it holds nothing"]),
    ("disk: DatasetDict without the split", "CB", DISK, saved({"train": CB_ROWS, "test": CB_ROWS}), "validation",
     ["{f} has no split 'validation' (it has: train, test); task CB evaluates on the 'validation' split"]),
    ("disk: a Dataset saved as another split", "CB", DISK, saved(dataset=(CB_ROWS, "train")), "validation",
     ["{f} is one saved split ('train'), not 'validation'"]),
    ("disk: columns do not match", "CB", DISK, saved({"train": [{"premise": "p", "hyp": "h", "label": 0}]}), "train",
     ["{f} [train]: has columns premise, hyp, label; task CB needs premise, hypothesis, label (missing hypothesis)"]),
    ("disk: damaged arrow file", "CB", DISK, saved({"train": CB_ROWS}, then=damage_arrow), "train",
     ["{f}: cannot read the saved dataset", "save it again"]),
    ("disk: corrupt dataset_dict.json", "CB", DISK, saved({"train": CB_ROWS}, then=write_text("dataset_dict.json", '{"spl')),
     "train", ["{f}/dataset_dict.json is corrupt"]),
    ("disk: a bad label", "CB", DISK, saved({"train": [{**CB_ROWS[0], "label": 7}]}), "train",
     ["{f} [train] row 0: label 7 is not one of [0, 1, 2] for task CB"]),
    ("disk: empty split", "CB", DISK, saved({"train": {k: [] for k in CB_COLUMNS}}), "train",
     ["{f} [train]: no usable rows for task CB: the saved split has no rows"]),
]


def snapshot(root):
    return sorted((str(p), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize("name,task,rel,content,split,expected", BAD, ids=[c[0] for c in BAD])
def test_bad_file_is_one_line_naming_file_place_and_cause(name, task, rel, content, split, expected, tmp_path):
    root = str(tmp_path / "data")
    path = os.path.join(root, rel)
    if rel == DISK:
        content(path)
    else:
        put(root, rel, content)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as e:
        data.load(TASKS[task], root, split)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    for text in expected:
        assert text.format(f=path) in msg, f"{text.format(f=path)!r} not in {msg!r}"
    assert snapshot(tmp_path) == before  # nothing written (no datasets cache, no partial output)


# (id, task, file, content, split, labels expected, a field to check or None)
BOM = codecs.BOM_UTF8.decode()
GOOD = [
    ("jsonl with a UTF-8 BOM", "CB", "CB/train.jsonl", BOM + jsonl(CB_ROWS), CB_LABELS, ("premise", "p0")),
    ("jsonl joined from BOM files, CRLF, blank lines", "CB", "CB/train.jsonl",
     (BOM + jsonl(CB_ROWS[:3]) + "\n\n" + BOM + jsonl(CB_ROWS[3:])).replace("\n", "\r\n"), CB_LABELS, ("premise", "p0")),
    ("json list with a UTF-8 BOM", "CB", "CB/train.json", BOM + json.dumps(CB_ROWS), CB_LABELS, ("premise", "p0")),
    ("json dict of columns", "CB", "CB/train.json", json.dumps(CB_COLUMNS), CB_LABELS, ("hypothesis", "h0")),
    ("csv with a UTF-8 BOM", "CB", "CB/train.csv", BOM + csv_text(CB_ROWS), CB_LABELS, ("premise", "p0")),
    ("csv labels ' 1', '1.0', '+2' and quoted cells", "CB", "CB/train.csv",
     'premise,hypothesis,label\r\n"a, b",h," 1"\r\nq,h,1.0\r\nr,"say ""hi""",+2\r\n', ["contradiction"] * 2 + ["neutral"],
     ("premise", "a, b")),
    ("csv header with spaces, spreadsheet blank rows", "CB", "CB/train.csv",
     "premise, hypothesis , label\np0,h,0\n,,\np1,h,1,,\n", ["entailment", "contradiction"], ("hypothesis", "h")),
    ("csv label texts", "CB", "CB/train.csv", "premise,hypothesis,label\np,h,Neutral\nq,h,entailment\n",
     ["neutral", "entailment"], None),
    ("csv race options as JSON", "race_high", "race_high/train.csv",
     'article,question,options,answer\na,q,"[""w"", ""x"", ""y"", ""z""]",C\n', ["C"], ("C", "y")),
    ("csv squad answers as JSON", "squad_v2", "squad_v2/train.csv",
     'context,question,answers\nc,q,"{""text"": [""Paris""], ""answer_start"": [0]}"\n', ["Paris"], None),
    ("parquet with float labels 1.0", "CB", "CB/train.parquet",
     parquet({**CB_COLUMNS, "label": [float(v) for v in CB_COLUMNS["label"]]}), CB_LABELS, ("premise", "p0")),
    ("parquet with string labels", "CB", "CB/train.parquet",
     parquet({**CB_COLUMNS, "label": [str(v) for v in CB_COLUMNS["label"]]}), CB_LABELS, None),
    ("boolq true/false labels", "boolq", "boolq/train.jsonl",
     jsonl([{"question": "q", "passage": "p", "label": v} for v in (True, False, "true", 0)]),
     ["true", "false", "true", "false"], None),
    ("DatasetDict folder", "CB", DISK, saved({"train": CB_ROWS, "validation": CB_ROWS[:2]}), CB_LABELS, ("premise", "p0")),
    ("Dataset folder saved without a split", "CB", DISK, saved(dataset=(CB_ROWS, None)), CB_LABELS, None),
    ("DatasetDict folder missing its dataset_dict.json", "CB", DISK,
     saved({"train": CB_ROWS}, then=lambda f: os.remove(os.path.join(f, "dataset_dict.json"))), CB_LABELS, None),
]


@pytest.mark.parametrize("name,task,rel,content,labels,field", GOOD, ids=[c[0] for c in GOOD])
def test_good_variants_load_with_the_right_labels(name, task, rel, content, labels, field, tmp_path):
    root = str(tmp_path / "data")
    if rel == DISK:
        content(os.path.join(root, rel))
    else:
        put(root, rel, content)
    examples, source = data.load(TASKS[task], root, "train")
    assert [e.label for e in examples] == labels
    assert all("\ufeff" not in k for e in examples for k in e.fields)
    if field:
        assert examples[0].fields[field[0]] == field[1]
    assert source["rows"] == len(labels) and source["dropped"] == {}


def test_a_number_where_a_text_belongs_is_its_text(tmp_path):
    put(str(tmp_path), "CB/train.jsonl", jsonl([{**CB_ROWS[0], "premise": 1984, "hypothesis": 2.5}]))
    examples, _ = data.load(TASKS["CB"], str(tmp_path), "train")
    assert examples[0].fields == {"premise": "1984", "hypothesis": "2.5"}


@pytest.mark.parametrize("make,said", [
    (os.makedirs, "is a folder, not a jsonl file"),
    (lambda p: os.symlink(p + ".gone", p), "is a link to"),
], ids=["a folder named train.jsonl", "a dangling link"])
def test_a_data_path_that_is_not_a_file_says_what_it_is(make, said, tmp_path):
    path = str(tmp_path / "CB" / "train.jsonl")
    os.makedirs(os.path.dirname(path))
    make(path)
    for call in (lambda: data.load(TASKS["CB"], str(tmp_path), "train"),
                 lambda: (_ for _ in ()).throw(UserError(data.source_problem(TASKS["CB"], str(tmp_path), "train")))):
        with pytest.raises(UserError) as e:
            call()
        assert str(e.value).startswith(f"{path} {said}") and "\n" not in str(e.value)


def test_a_dataset_saved_without_a_split_name_says_it_serves_every_split(tmp_path):
    import datasets

    folder = str(tmp_path / "disk_datasets" / "super_glue" / "cb")
    datasets.Dataset.from_list(CB_ROWS).save_to_disk(folder)
    for split in ("train", "validation"):
        examples, source = data.load(TASKS["CB"], str(tmp_path), split)
        assert len(examples) == 6 and "the same rows serve training and evaluation" in data.describe(source)
    named = str(tmp_path / "named" / "disk_datasets" / "super_glue" / "cb")
    datasets.Dataset.from_list(CB_ROWS, split="train").save_to_disk(named)
    _, source = data.load(TASKS["CB"], str(tmp_path / "named"), "train")
    assert "same rows" not in data.describe(source)


# ----------------------------------------------------------------------------------------------------
# Rows dropped by the documented cleaning rules, counted by reason.

NG = "20_Newsgroups_Fixed"
DROPS = [
    (NG, [{"text": "a", "label": "x"}, {"text": None, "label": "x"}, {"text": "b", "label": 3}, {"text": 5, "label": "y"},
          {"text": "c", "label": None}], ["x"], {"text not a string": 2, "label not a string": 2}),
    ("race_high", [{"article": "a", "question": "q", "options": ["1", "2", "3", "4"], "answer": a} for a in "BFE"]
     + [{"article": "a", "question": "q", "options": ["1"], "answer": None}], ["B"], {"answer not one of A, B, C, D": 3}),
    ("commonsense_qa", [{"question": "q", "choices": {"label": list("ABCDE"), "text": list("vwxyz")}, "answerKey": a}
                        for a in ("E", "", "F")], ["E"], {"answer not one of A, B, C, D, E": 2}),
    ("squad_v2", [{"context": "c", "question": "q", "answers": {"text": t, "answer_start": [0] * len(t)}}
                  for t in ([], ["a"], [])], ["a"], {"no answer (unanswerable)": 2}),
]


@pytest.mark.parametrize("task,rows,labels,dropped", DROPS, ids=[d[0] for d in DROPS])
def test_dropped_rows_are_counted_by_reason(task, rows, labels, dropped, tmp_path):
    split = TASKS[task].eval_split
    put(str(tmp_path), f"{task}/{split}.jsonl", jsonl(rows))
    examples, source = data.load(TASKS[task], str(tmp_path), split)
    assert [e.label for e in examples] == labels
    assert source["dropped"] == dropped and source["rows"] == len(rows) and source["clean"] == len(labels)
    text = data.describe(source, dropped=True)
    assert text.startswith(data.describe(source)) and f"{len(rows) - len(labels)} of {len(rows)} rows dropped" in text
    for reason, n in dropped.items():
        assert f"{n}: {reason}" in text


def test_all_rows_dropped_says_how_many_and_why(tmp_path):
    path = put(str(tmp_path), f"{NG}/train.jsonl", jsonl([{"text": "t", "label": i} for i in range(4)]
                                                        + [{"text": None, "label": "x"}] * 2))
    with pytest.raises(UserError) as e:
        data.load(TASKS[NG], str(tmp_path), "train")
    assert str(e.value) == f"{path}: all 6 rows dropped for task {NG} (4: label not a string; 2: text not a string)"
    with pytest.raises(UserError, match=r"^t\.jsonl: all 2 rows dropped for task squad_v2 \(2: no answer"):
        prompts.clean(TASKS["squad_v2"], [{"context": "c", "question": "q", "answers": []}] * 2, "t.jsonl")
    with pytest.raises(UserError, match=r"^t\.jsonl: no usable rows for task CB: the split is empty \(0 rows\)$"):
        prompts.clean(TASKS["CB"], [], "t.jsonl")


def test_nothing_dropped_shows_nothing(tmp_path):
    put(str(tmp_path), "CB/train.jsonl", jsonl(CB_ROWS))
    _, source = data.load(TASKS["CB"], str(tmp_path), "train")
    assert source["dropped"] == {} and data.describe(source, dropped=True) == data.describe(source)


# ----------------------------------------------------------------------------------------------------
# Where rows come from: the original's layout with data_root "" and the order of the search.


def marked(tag):
    return [{"premise": tag, "hypothesis": "h", "label": 0}]


@pytest.fixture
def original_root(tmp_path, monkeypatch):
    """cwd = tmp_path/work; ORIGINAL_DISK_ROOT = tmp_path/abs (standing in for /disk_datasets); offline."""
    work, absolute = tmp_path / "work", tmp_path / "abs"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(data, "ORIGINAL_DISK_ROOT", str(absolute))
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    return work, absolute


def premise_of(data_root, split="train"):
    rows, source = data.load_rows(TASKS["CB"], data_root, split)
    return rows[0]["premise"], source


def test_empty_data_root_searches_as_the_original_did(original_root):
    work, absolute = original_root
    put(str(work), "CB/train.jsonl", jsonl(marked("file")))
    assert premise_of("") == ("file", {"source": "file", "path": "CB/train.jsonl", "split": "train"})
    saved({"train": marked("absolute")})(str(absolute / "super_glue" / "cb"))
    premise, source = premise_of("")
    assert premise == "absolute" and source["path"] == str(absolute / "super_glue" / "cb")  # beats ./CB/
    saved({"train": marked("local")})(str(work / "disk_datasets" / "super_glue" / "cb"))
    premise, source = premise_of("")
    assert premise == "local" and source["path"] == "disk_datasets/super_glue/cb"  # beats /disk_datasets
    assert premise_of(None)[0] == "local"


def test_a_given_root_never_reads_the_absolute_folder(original_root):
    work, absolute = original_root
    saved({"train": marked("absolute")})(str(absolute / "super_glue" / "cb"))
    put(str(work), "CB/train.jsonl", jsonl(marked("file")))
    assert premise_of(".") == ("file", {"source": "file", "path": "./CB/train.jsonl", "split": "train"})
    saved({"train": marked("local")})(str(work / "disk_datasets" / "super_glue" / "cb"))
    assert premise_of(".")[0] == "local"
    put(str(work), "data/CB/train.jsonl", jsonl(marked("data")))
    assert premise_of("data")[0] == "data"


def test_no_data_names_every_place_in_search_order(original_root):
    work, absolute = original_root
    with pytest.raises(UserError) as e:
        data.load(TASKS["CB"], "", "validation")
    msg = str(e.value)
    places = ["disk_datasets/super_glue/cb (no such folder)", f"{absolute}/super_glue/cb (no such folder)",
              "CB/validation.{jsonl,json,csv,parquet} (no such file)", "hub aps/super_glue (offline or unreachable)"]
    assert "\n" not in msg and all(p in msg for p in places)
    assert [msg.index(p) for p in places] == sorted(msg.index(p) for p in places)
    with pytest.raises(UserError) as e:
        data.load(TASKS["CB"], "data", "validation")
    assert str(absolute) not in str(e.value) and "data/disk_datasets/super_glue/cb (no such folder)" in str(e.value)


# ----------------------------------------------------------------------------------------------------
# A split under the wrong name.

# (task, split, files present, texts the error must hold)
SPLITS = [
    ("CB", "validation", ["CB/test.jsonl"],
     ["no CB/validation.{jsonl,json,csv,parquet} under {root}; found CB/test.jsonl: task CB evaluates on the "
      "'validation' split (rename the file)"]),
    ("CB", "validation", ["CB/dev.jsonl", "CB/train.jsonl"], ["found CB/dev.jsonl:", "(rename the file)"]),
    ("CB", "validation", ["CB/val.csv"], ["found CB/val.csv: task CB evaluates on the 'validation' split"]),
    ("CB", "validation", ["CB/Validation.jsonl"], ["found CB/Validation.jsonl:"]),
    ("CB", "validation", ["CB/validation.tsv"], ["found CB/validation.tsv (not a file type read here"]),
    ("CB", "validation", ["CB/validation.JSONL"], ["found CB/validation.JSONL (rename it to validation.jsonl)"]),
    ("MNLI", "validation_mismatched", ["MNLI/validation_matched.jsonl"],
     ["no MNLI/validation_mismatched.{jsonl,json,csv,parquet} under {root}; found MNLI/validation_matched.jsonl: task "
      "MNLI evaluates on the 'validation_mismatched' split"]),
    (NG, "test", [f"{NG}/validation.parquet"], [f"found {NG}/validation.parquet: task {NG} evaluates on the 'test' split"]),
    ("CB", "train", ["CB/training.jsonl"], ["no CB/train.{jsonl,json,csv,parquet}", "found CB/training.jsonl: task CB "
                                            "trains on the 'train' split (rename the file)"]),
]


@pytest.mark.parametrize("task,split,files,expected", SPLITS, ids=[f"{s[0]}-{s[2][0]}" for s in SPLITS])
def test_a_misnamed_split_file_is_named_with_the_expected_one(task, split, files, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda: True)  # local data stops the search before the hub
    root = str(tmp_path / "data")
    for rel in files:
        put(root, rel, jsonl(CB_ROWS))
    with pytest.raises(UserError) as e:
        data.load(TASKS[task], root, split)
    msg = str(e.value)
    assert "\n" not in msg
    for text in expected:
        assert text.replace("{root}", root) in msg
    assert data.find_source(TASKS[task], root, split) is None
    assert data.source_problem(TASKS[task], root, split) == msg


def test_the_task_folder_real_other_splits_and_a_wrong_case_folder_are_noted(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    put(str(tmp_path), "CB/train.jsonl", jsonl(CB_ROWS))
    with pytest.raises(UserError, match=r"CB/validation\.\{jsonl,json,csv,parquet\} \(no such file; CB/ holds "
                                        r"train\.jsonl\); hub aps/super_glue"):
        data.load(TASKS["CB"], str(tmp_path), "validation")
    put(str(tmp_path), "rte/validation.jsonl", jsonl(CB_ROWS))
    with pytest.raises(UserError, match=r"found rte/: the folder must be named RTE"):
        data.load(TASKS["RTE"], str(tmp_path), "validation")


# ----------------------------------------------------------------------------------------------------
# find_source / expected_files: a cheap look before training.


def test_find_source_locates_without_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    root, cb = str(tmp_path / "data"), TASKS["CB"]
    assert data.find_source(cb, root, "validation") is None
    assert data.source_problem(cb, root, "validation").startswith("no data for task 'CB' split 'validation'")
    assert data.expected_files(cb, root, "validation") == \
        f"{root}/disk_datasets/super_glue/cb and {root}/CB/validation.{{jsonl,json,csv,parquet}}"
    monkeypatch.setattr(data, "ORIGINAL_DISK_ROOT", "/nowhere")
    assert data.expected_files(cb, "", "validation") == \
        "disk_datasets/super_glue/cb, /nowhere/super_glue/cb and CB/validation.{jsonl,json,csv,parquet}"

    path = put(root, "CB/validation.jsonl", '{"not even": json')  # found, not read
    assert data.find_source(cb, root, "validation") == path and data.source_problem(cb, root, "validation") is None
    saved({"train": CB_ROWS})(os.path.join(root, DISK))
    assert data.find_source(cb, root, "train") == f"{root}/{DISK} [train]"
    assert data.find_source(cb, root, "validation") is None  # the DatasetDict lacks it: loading would fail
    assert "has no split 'validation'" in data.source_problem(cb, root, "validation")

    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    assert data.find_source(TASKS["boolq"], root, "validation") == "hub aps/super_glue (boolq) [validation]"


# ----------------------------------------------------------------------------------------------------
# --tasks spelling.

TASK_NAMES = [
    (["cb"], "unknown task 'cb' (did you mean 'CB'?); choose from: 20_Newsgroups_Fixed"),
    (["Boolq"], "unknown task 'Boolq' (did you mean 'boolq'?); choose from:"),
    (["race-high"], "(did you mean 'race_high'?)"),
    (["boolq,CB"], "unknown task 'boolq,CB': tasks are separate words, not joined by commas (--tasks boolq CB)"),
    (["CB", "rte,cb"], "not joined by commas (--tasks RTE CB)"),
    (["boolq CB"], "not joined by spaces inside one quoted word (--tasks boolq CB)"),
    (["nonsense"], "unknown task 'nonsense'; choose from: 20_Newsgroups_Fixed"),
]


@pytest.mark.parametrize("names,expected", TASK_NAMES, ids=[" ".join(n) for n, _ in TASK_NAMES])
def test_check_tasks_suggests_the_right_spelling(names, expected):
    with pytest.raises(UserError) as e:
        prompts.check_tasks(names)
    assert expected in str(e.value) and "\n" not in str(e.value)
    if names == ["nonsense"]:
        assert "did you mean" not in str(e.value)


def test_label_rules_in_one_table():
    """The label types accepted for a task with a label map (docstring of prompts._label_key)."""
    cb, boolq = TASKS["CB"], TASKS["boolq"]
    for raw, key in [(1, 1), (1.0, 1), ("1", 1), (" 1", 1), ("1.0", 1), ("+1", 1), ("Contradiction", 1), (2, 2)]:
        assert prompts._label_key(cb, raw) == key
    assert prompts._label_key(boolq, True) == 1 and prompts._label_key(boolq, " FALSE ") == 0
    for raw in [1.5, "yes", [1], {"a": 1}, None, math.nan, True, "", "1.5", 3, -1]:
        with pytest.raises(prompts.RowError):
            prompts._label_key(cb, raw)


# ---- rows that would make a result mean less than it seems --------------------------------------------------

def test_two_files_for_one_split_use_the_first_and_say_so_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "_WARNED", set())
    folder = tmp_path / "CB"
    folder.mkdir()
    (folder / "train.jsonl").write_text(jsonl(CB_ROWS))
    (folder / "train.csv").write_text(csv_text(CB_ROWS[:2]))
    examples, source = data.load(TASKS["CB"], str(tmp_path), "train")
    data.load(TASKS["CB"], str(tmp_path), "train")
    said = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(examples) == 6 and source["path"].endswith("train.jsonl")
    assert said == [f"warning: CB has 2 files for its 'train' split (train.jsonl, train.csv): using "
                    f"{folder}/train.jsonl (the first of jsonl, json, csv, parquet); remove the others to make it plain"]


@pytest.mark.parametrize("evaluation,shared", [(CB_ROWS, "6 of its 6 'validation' rows are also training rows "
                                                         "(all of them)"),
                                               (CB_ROWS[:2] + [{"premise": "new", "hypothesis": "h", "label": 0}],
                                                "2 of its 3 'validation' rows are also training rows:"),
                                               ([{**r, "label": (r["label"] + 1) % 3} for r in CB_ROWS], None)])
def test_evaluation_rows_that_are_training_rows_are_said(tmp_path, evaluation, shared):
    """Rows equal in their texts and label; the same texts with another label are not the same row."""
    from keys_values.training.plan import training_warnings

    folder = tmp_path / "CB"
    folder.mkdir()
    (folder / "train.jsonl").write_text(jsonl(CB_ROWS))
    (folder / "validation.jsonl").write_text(jsonl(evaluation))
    examples, _ = data.load(TASKS["CB"], str(tmp_path), "train")
    said = training_warnings(TASKS["CB"], examples, str(tmp_path))
    if shared is None:
        assert said == []
    else:
        assert len(said) == 1 and f"warning: CB: {shared}" in said[0] and "memorised" in said[0]


def test_one_row_that_holds_most_of_the_training_text_is_said(tmp_path):
    from keys_values.training.plan import training_warnings

    rows = [*CB_ROWS, {"premise": "word " * 500, "hypothesis": "h", "label": 0}]
    examples = prompts.clean_counted(TASKS["CB"], rows, "rows", None)[0]
    said = training_warnings(TASKS["CB"], examples, str(tmp_path))
    assert len(said) == 1 and "one training row (the 7. of 7) holds" in said[0]
    assert training_warnings(TASKS["CB"], examples[:6], str(tmp_path)) == []
