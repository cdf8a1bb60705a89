"""Real rows of CB, COPA, RTE and BoolQ from the hub, in the layout --data_root reads: <root>/<task>/<split>.jsonl,
one JSON object a line in the hub's schema. Then each split's row count and fingerprint (identity.data_fingerprint
of its cleaned rows: the content, whatever the file's formatting) is compared with those of the rows behind the
figures in docs/real-data.md.

CB, COPA and RTE are SuperGLUE's official train and validation splits (aps/super_glue). BoolQ's official
training split is not used: its official validation split (3,270 rows) is shuffled with Python's
random.Random(0) and cut into 2,770 rows to train on and 500 to evaluate on.

    python scripts/get_real_data.py --root real_data           # then: --data_root real_data
"""

import os
import random

import prompts
import utils
from keys_values import data, identity
from keys_values.environment import hub_reachable
from utils import ArgumentParser, UserError, run_main

HUB = "aps/super_glue"
# (task, split): (rows, fingerprint) of the rows the figures in docs/real-data.md were measured on
EXPECTED = {("CB", "train"): (250, "96f112ae476f"), ("CB", "validation"): (56, "ff902476e962"),
            ("COPA", "train"): (400, "c56437a70016"), ("COPA", "validation"): (100, "b1a7155d39fa"),
            ("RTE", "train"): (2490, "5a99dd943fcc"), ("RTE", "validation"): (277, "c01f43759e0e"),
            ("boolq", "train"): (2770, "f534f4e3870f"), ("boolq", "validation"): (500, "5fcb4024dff8")}
BOOLQ_TRAIN = 2770


def hub_rows(task, split):
    """The hub's rows of one split of a task, as plain dicts."""
    import datasets

    return [dict(r) for r in datasets.load_dataset(HUB, prompts.TASKS[task].hub[1], split=split)]


def splits(task):
    """{split: rows} of a task as the figures used them."""
    if task != "boolq":
        return {"train": hub_rows(task, "train"), "validation": hub_rows(task, "validation")}
    rows = hub_rows(task, "validation")
    random.Random(0).shuffle(rows)
    return {"train": rows[:BOOLQ_TRAIN], "validation": rows[BOOLQ_TRAIN:]}


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--root", default="real_data", help="where <task>/<split>.jsonl are written")
    p.add_argument("--tasks", nargs="+", default=["CB", "COPA", "RTE", "boolq"], choices=["CB", "COPA", "RTE", "boolq"],
                   metavar="TASK", help="any of CB COPA RTE boolq")
    a = p.parse_args(argv)
    if not hub_reachable():
        raise UserError("the hub cannot be reached (offline, or HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set): "
                        "this script downloads the rows; run it where the hub answers")
    print(f"{'file':<26}{'rows':>6}{'fingerprint':>14}  against the figures' rows")
    for task in a.tasks:
        for split, rows in splits(task).items():
            path = os.path.join(a.root, task, f"{split}.jsonl")
            utils.write_jsonl(path, rows)
            examples, _ = data.load(prompts.TASKS[task], a.root, split)
            got = (len(rows), identity.data_fingerprint({task: examples}))
            expected = EXPECTED[(task, split)]
            verdict = "the same" if got == expected else f"DIFFERENT (expected {expected[0]} rows, {expected[1]})"
            print(f"{os.path.join(task, split + '.jsonl'):<26}{got[0]:>6}{got[1]:>14}  {verdict}")
    print(f"written under {a.root}: pass --data_root {a.root}")


if __name__ == "__main__":
    run_main(main)
