"""Every task's data and prompts, behind one table (TASKS).

A task is one row of TASKS: where its rows come from, how a row becomes the template's fields, its label and
its gold answers, the template itself (exact to the paper's code, spacing included) and its evaluation split.
One code path turns any task's rows into training texts and inference prompts.

Pure Python (+ `datasets` only when a `disk_datasets` folder, a csv/parquet file or the hub is read):
no torch, no model, so the prompt tests run in milliseconds.
"""

import json
import os
import random
import string
from dataclasses import dataclass, field
from typing import NamedTuple

from common import UserError, hub_reachable


# ----------------------------------------------------------------------------------------------------
# Field getters: how a template field is read from a row. A missing column raises KeyError (turned into
# a UserError naming the file and row); a missing option is an empty string, as in the original.


def column(name):
    return lambda row: row[name]


def option(col, i, key=None):
    def get(row):
        values = row[col] if key is None else row[col][key]
        return values[i] if i < len(values) else ""
    return get


def all_answers(row):
    """Every gold answer text of a QA row: SQuAD's {"text": [...]}, NewsQA's list of strings, or one string.
    Empty for an unanswerable question (SQuAD v2)."""
    answers = row["answers"] if "answers" in row else row["answer"]
    if isinstance(answers, dict):
        answers = answers["text"]
    if isinstance(answers, str):
        answers = [answers]
    return tuple(str(a) for a in answers if a is not None and str(a) != "")


def first_answer(row):
    """The answer a QA row is trained on: its first gold answer (None when unanswerable: the row is dropped)."""
    answers = all_answers(row)
    return answers[0] if answers else None


def hotpot_context(row):
    """HotpotQA's context is {"title": [...], "sentences": [[...], ...]}: flattened to one text."""
    ctx = row["context"]
    if isinstance(ctx, str):
        return ctx
    return " ".join(f"{title}: {''.join(sents).strip()}" for title, sents in zip(ctx["title"], ctx["sentences"]))


# ----------------------------------------------------------------------------------------------------
# The table of tasks.

NLI3 = "### Premise:{premise} ### Hypothesis:{hypothesis} ### Relationship (entailment, contradiction or neutral):{label}"
NLI2 = ("### Premise:{premise} ### Hypothesis:{hypothesis} ### Relationship (choose between 'entailment' and "
        "'not entailment'):{label}")
RACE = ("Read Context and answer question ### Context:{article} ### Question:{question} "
        "### Options:A.{A}. B.{B}. C.{C}. D.{D}### Choice:{label}")
QA = "Read Context and answer question ### Context:{context} ### Question:{question} ### Answer:{label}"


@dataclass(frozen=True)
class Task:
    name: str
    disk_name: str  # the original's folder under {data_root}/disk_datasets/
    hub: tuple  # (hub id, config or None)
    template: str  # ends with {label}
    fields: dict  # template field -> getter(row)
    label: object  # getter(row) -> raw label value
    label_map: dict = None  # raw label value -> label text; None: the raw value is the text
    label_set: tuple = None  # allowed label texts when label_map is None; rows outside it are dropped
    eval_split: str = "validation"
    long_field: str = None  # the field shortened when a text does not fit (evaluation; --shorten_to_block)
    kind: str = "classification"  # or "qa": open answers, scored with exact match and token F1
    strings_only: bool = False  # drop rows whose fields or label are not strings (the original's 20NG rule)
    source_columns: tuple = field(default=())  # columns every row must have (checked, named in errors)
    answers: object = None  # QA: getter(row) -> every gold answer (scored as the maximum over them)

    @property
    def closed(self):
        """A closed set of labels (classification): the one place that decides that a task can be scored by
        ranking its labels; an open-answer (QA) task is always generated."""
        return self.kind == "classification"

    def scoring(self, requested):
        """How this task is scored when `requested` ('generate' or 'rank') is asked for."""
        return requested if self.closed else "generate"


class Example(NamedTuple):
    fields: dict  # template field -> text
    label: str  # the text trained on and compared with (accuracy)
    gold: tuple  # every acceptable answer: (label,) for a classification task, all gold answers for QA


def _nli(name, disk, hub, template, label_map, premise="premise", hypothesis="hypothesis", split="validation"):
    return Task(name, disk, hub, template, {"premise": column(premise), "hypothesis": column(hypothesis)},
                column("label"), label_map, eval_split=split, long_field="premise",
                source_columns=(premise, hypothesis, "label"))


def _race(level):
    return Task(f"race_{level}", f"race_{level}", ("ehovy/race", level), RACE,
                {"article": column("article"), "question": column("question"),
                 **{c: option("options", i) for i, c in enumerate("ABCD")}},
                column("answer"), label_set=tuple("ABCD"), eval_split="validation", long_field="article",
                source_columns=("article", "question", "options", "answer"))


def _qa(name, hub, context=column("context")):
    return Task(name, name, hub, QA, {"context": context, "question": column("question")}, first_answer,
                kind="qa", long_field="context", source_columns=("context", "question"), answers=all_answers)


ENTAIL2 = {0: "entailment", 1: "not_entailment"}
TASKS = {t.name: t for t in [
    Task("20_Newsgroups_Fixed", "20_Newsgroups_Fixed", ("rungalileo/20_Newsgroups_Fixed", None),
         "### Sentence:{text} ### Class:{label}", {"text": column("text")}, column("label"),
         eval_split="test", long_field="text", strings_only=True, source_columns=("text", "label")),
    Task("boolq", "super_glue/boolq", ("aps/super_glue", "boolq"),
         "Read the Passage and answer the Question with true or false ### Question:{question} ### Passage: "
         "{passage} ### Answer:{label}",
         {"question": column("question"), "passage": column("passage")}, column("label"),
         {1: "true", 0: "false"}, long_field="passage", source_columns=("question", "passage", "label")),
    Task("COPA", "super_glue/copa", ("aps/super_glue", "copa"),
         "### Premise:{premise} ### Choice1:{choice1} ### Choice2:{choice2} ### Question:{question} ### Choice:{label}",
         {k: column(k) for k in ("premise", "choice1", "choice2", "question")}, column("label"),
         {0: "Choice1", 1: "Choice2"}, long_field="premise",
         source_columns=("premise", "choice1", "choice2", "question", "label")),
    _nli("CB", "super_glue/cb", ("aps/super_glue", "cb"), NLI3, {0: "entailment", 1: "contradiction", 2: "neutral"}),
    _nli("MNLI", "glue/mnli", ("nyu-mll/glue", "mnli"), NLI3, {0: "entailment", 1: "neutral", 2: "contradiction"},
         split="validation_mismatched"),
    _nli("RTE", "super_glue/rte", ("aps/super_glue", "rte"), NLI2, ENTAIL2),
    _nli("QNLI", "glue/qnli", ("nyu-mll/glue", "qnli"), NLI2, ENTAIL2, premise="question", hypothesis="sentence"),
    _nli("WNLI", "glue/wnli", ("nyu-mll/glue", "wnli"), NLI2, {0: "not_entailment", 1: "entailment"},
         premise="sentence1", hypothesis="sentence2"),
    _race("high"),
    _race("middle"),
    Task("commonsense_qa", "commonsense_qa", ("tau/commonsense_qa", None),
         "According to the Question, select the best choice among the Options. ### Question:{question} "
         "### Options:A.{A}. B.{B}. C.{C}. D.{D} E.{E} ### Choice:{label}",
         {"question": column("question"), **{c: option("choices", i, "text") for i, c in enumerate("ABCDE")}},
         column("answerKey"), label_set=tuple("ABCDE"), long_field="question",
         source_columns=("question", "choices", "answerKey")),
    # The original shifted swag's options by one and crashed: ending0..ending3 are A..D.
    Task("swag", "swag", ("allenai/swag", "regular"),
         "Select the correct sentence that best completes the Passage below. ### Passage:{sent1} {sent2} "
         "### Options:A.{A}. B.{B}. C.{C}. D.{D}### Choice:{label}",
         {"sent1": column("sent1"), "sent2": column("sent2"), **{c: column(f"ending{i}") for i, c in enumerate("ABCD")}},
         column("label"), dict(enumerate("ABCD")), long_field="sent1",
         source_columns=("sent1", "sent2", "ending0", "ending1", "ending2", "ending3", "label")),
    _qa("newsqa", ("lucadiliello/newsqa", None)),
    _qa("squad_v2", ("rajpurkar/squad_v2", None)),
    _qa("hotpot_qa", ("hotpotqa/hotpot_qa", "distractor"), context=hotpot_context),
]}


def check_tasks(names):
    """Fail with the list of known tasks when a name is unknown or none is given."""
    if not names:
        raise UserError(f"no task given; choose from: {' '.join(TASKS)}")
    for name in names:
        if name not in TASKS:
            raise UserError(f"unknown task {name!r}; choose from: {' '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise UserError(f"a task is named twice in --tasks {' '.join(names)}")
    return [TASKS[n] for n in names]


# ----------------------------------------------------------------------------------------------------
# Loading rows: {data_root}/disk_datasets/<original name>, then {data_root}/<task>/<split>.<ext>, then the hub.

FILE_TYPES = ("jsonl", "json", "csv", "parquet")


def _read_file(path):
    ext = path.rsplit(".", 1)[-1]
    if ext == "jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if ext == "json":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, list) else [dict(zip(data, vals)) for vals in zip(*data.values())]
    import datasets  # csv and parquet keep their column types through datasets

    loader = datasets.Dataset.from_csv if ext == "csv" else datasets.Dataset.from_parquet
    return list(loader(path))


def load_rows(task, data_root, split):
    """Raw rows of one split of a task, and where they came from: {"source": "disk_datasets" | "file" | "hub",
    "path" or "hub_id"/"config", "split"}."""
    tried = []
    if data_root:
        disk = os.path.join(data_root, "disk_datasets", task.disk_name)
        if os.path.isdir(disk):
            import datasets

            dd = datasets.load_from_disk(disk)
            if isinstance(dd, datasets.DatasetDict):
                if split not in dd:
                    raise UserError(f"{disk} has no split {split!r} (it has: {', '.join(dd)})")
                dd = dd[split]
            return list(dd), {"source": "disk_datasets", "path": disk, "split": split}
        tried.append(f"{disk} (no such folder)")
        for ext in FILE_TYPES:
            path = os.path.join(data_root, task.name, f"{split}.{ext}")
            if os.path.isfile(path):
                return _read_file(path), {"source": "file", "path": path, "split": split}
        tried.append(os.path.join(data_root, task.name, f"{split}.{{{','.join(FILE_TYPES)}}}") + " (no such file)")
    hub_id, config = task.hub
    if hub_reachable():
        import datasets

        print(f"{task.name}: downloading {hub_id}{f' ({config})' if config else ''} split {split!r} from the hub",
              flush=True)
        try:
            rows = list(datasets.load_dataset(hub_id, config, split=split))
        except Exception as e:  # noqa: BLE001 - any hub failure becomes the one error below
            tried.append(f"hub {hub_id} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        else:
            return rows, {"source": "hub", "hub_id": hub_id, "config": config, "split": split}
    else:
        tried.append(f"hub {hub_id} (offline or unreachable)")
    raise UserError(f"no data for task {task.name!r} split {split!r}; tried: {'; '.join(tried)}. "
                    f"Put the rows in {task.name}/{split}.jsonl under --data_root (or a disk_datasets/ folder)")


def describe(source):
    """'sample_data/CB/train.jsonl' or 'hub aps/super_glue (cb) [train]': where rows came from, in words."""
    if source["source"] == "hub":
        return f"hub {source['hub_id']}" + (f" ({source['config']})" if source["config"] else "") + f" [{source['split']}]"
    return source["path"] + (f" [{source['split']}]" if source["source"] == "disk_datasets" else "")


def clean(task, rows, where):
    """An Example for each usable row. The task's documented cleaning rules drop rows; a missing column or an
    unknown label value is an error naming `where` (the source) and the row."""
    out = []
    for i, row in enumerate(rows):
        missing = [c for c in task.source_columns if c not in row]
        if missing:
            raise UserError(f"{where} row {i}: missing column {missing[0]!r} for task {task.name} "
                            f"(it needs {', '.join(task.source_columns)})")
        raw = task.label(row)
        fields = {k: get(row) for k, get in task.fields.items()}
        if task.strings_only and not all(isinstance(v, str) for v in [raw, *fields.values()]):
            continue
        if not task.closed:
            if not raw:  # unanswerable question (SQuAD v2): no answer to train on or score
                continue
            label = str(raw)
            gold = task.answers(row)
        elif task.label_map is not None:
            key = int(raw) if isinstance(raw, str) and raw.lstrip("-").isdigit() else raw  # csv gives "1"
            if key not in task.label_map:
                raise UserError(f"{where} row {i}: label {raw!r} is not one of {sorted(task.label_map)} for task "
                                f"{task.name}")
            label, gold = task.label_map[key], (task.label_map[key],)
        else:
            if task.label_set is not None and raw not in task.label_set:
                continue  # race/commonsense_qa: rows with another answer are dropped (the original's rule)
            label, gold = raw, (raw,)
        out.append(Example({k: "" if v is None else str(v) for k, v in fields.items()}, label, gold))
    if not out:
        raise UserError(f"{where}: no usable rows for task {task.name} (empty split?)")
    return out


def load(task, data_root, split, max_samples=None):
    """(examples, source): the cleaned Examples of a split (the first `max_samples` of them when given), and
    where they came from with the row counts before and after cleaning ("rows", "clean", "used")."""
    rows, source = load_rows(task, data_root, split)
    examples = clean(task, rows, describe(source))
    used = examples[:max_samples] if max_samples else examples
    return used, {**source, "rows": len(rows), "clean": len(examples), "used": len(used)}


def stratified_sample(examples, fraction, seed):
    """A `fraction` of the examples with each label's share kept (largest remainder; works when a label
    has one example, as every QA answer does), in their original order."""
    if not 0 < fraction <= 1:
        raise UserError(f"--train_sample_fraction must be in (0, 1], got {fraction}")
    rng = random.Random(seed)
    groups = {}
    for i, example in enumerate(examples):
        groups.setdefault(example.label, []).append(i)
    target = round(fraction * len(examples))
    quotas = {lab: fraction * len(ix) for lab, ix in groups.items()}
    take = {lab: int(q) for lab, q in quotas.items()}
    order = sorted(groups, key=lambda lab: (-(quotas[lab] - take[lab]), rng.random()))
    for lab in order[: max(0, target - sum(take.values()))]:
        take[lab] += 1
    keep = []
    for lab, ix in groups.items():
        keep += rng.sample(ix, take[lab])
    return [examples[i] for i in sorted(keep)]


# ----------------------------------------------------------------------------------------------------
# Texts.


def prompt_text(task, fields):
    """The inference prompt: the template cut just before {label}."""
    return task.template[: task.template.index("{label}")].format(**fields)


def training_text(task, fields, label):
    return task.template.format(**fields, label=label)


def choices(task, examples=()):
    """The closed set of label texts of a classification task, which predictions are matched against and
    ranking chooses from. For a task whose labels come from the data (20 Newsgroups), those in `examples`."""
    if task.label_map is not None:
        return list(dict.fromkeys(task.label_map.values()))
    if task.label_set is not None:
        return list(task.label_set)
    return sorted({e.label for e in examples})


_PUNCT = string.punctuation.replace("_", "") + string.whitespace


def normalise(text):
    """Case, and whitespace and punctuation around the text, do not count: 'True.' -> 'true'."""
    return text.strip(_PUNCT).lower()


def extract_prediction(generated):
    """The answer in a decoded generation: stripped and cut at the first newline or '###'."""
    return generated.strip().split("\n")[0].split("###")[0].strip()


def match_label(prediction, options):
    """The label among `options` that `prediction` names (case and surrounding punctuation forgiven), else None."""
    norm = normalise(prediction)
    for label in options:
        if norm == normalise(label):
            return label
    return None
