"""Every task's data and prompts, behind one table (TASKS).

A task is one row of TASKS: where its rows come from, how a row becomes the template's fields and its
label, the template itself (exact to the paper's code, spacing included) and its evaluation split.
One code path turns any task's rows into training texts and inference prompts.

Pure Python (+ `datasets` only when a `disk_datasets` folder, a csv/parquet file or the hub is read):
no torch, no model, so the prompt tests run in milliseconds.
"""

import functools
import json
import os
import random
import socket
import string
import threading
from dataclasses import dataclass, field


class UserError(Exception):
    """A mistake in the user's input: the scripts print it as one line and exit with code 2."""


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


def first_answer(row):
    """The first answer text of a QA row: SQuAD's {"text": [...]}, NewsQA's list of strings, or a string."""
    answers = row["answers"] if "answers" in row else row["answer"]
    if isinstance(answers, dict):
        answers = answers["text"]
    if isinstance(answers, str):
        return answers
    return answers[0] if answers else None  # None: unanswerable, dropped by the QA cleaning rule


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
    labels: dict = None  # raw label value -> label text; None: the raw value is the text
    label_set: tuple = None  # allowed label texts when labels is None; rows outside it are dropped
    eval_split: str = "validation"
    long_field: str = None  # the field shortened when a text does not fit the model's context
    kind: str = "classification"  # or "qa": open answers, scored with exact match and token F1
    strings_only: bool = False  # drop rows whose fields or label are not strings (the original's 20NG rule)
    source_columns: tuple = field(default=())  # columns every row must have (checked, named in errors)

    @property
    def closed(self):
        return self.kind == "classification"


def _nli(name, disk, hub, template, labels, premise="premise", hypothesis="hypothesis", split="validation"):
    return Task(name, disk, hub, template, {"premise": column(premise), "hypothesis": column(hypothesis)},
                column("label"), labels, eval_split=split, long_field="premise",
                source_columns=(premise, hypothesis, "label"))


def _race(level):
    return Task(f"race_{level}", f"race_{level}", ("ehovy/race", level), RACE,
                {"article": column("article"), "question": column("question"),
                 **{c: option("options", i) for i, c in enumerate("ABCD")}},
                column("answer"), label_set=tuple("ABCD"), eval_split="validation", long_field="article",
                source_columns=("article", "question", "options", "answer"))


def _qa(name, hub, context=column("context")):
    return Task(name, name, hub, QA, {"context": context, "question": column("question")}, first_answer,
                kind="qa", long_field="context", source_columns=("context", "question"))


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


def hub_reachable():
    """False at once when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the hub does not answer in 3 s (asked once)."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    return _hub_answers()


@functools.lru_cache(maxsize=1)
def _hub_answers(timeout=3.0):
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    ok = []

    def probe():  # in a thread: name resolution itself ignores socket timeouts
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


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
    """Raw rows of one split of a task and a description of where they came from."""
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
            return list(dd), f"{disk}[{split}]"
        tried.append(f"{disk} (no such folder)")
        for ext in FILE_TYPES:
            path = os.path.join(data_root, task.name, f"{split}.{ext}")
            if os.path.isfile(path):
                return _read_file(path), path
        tried.append(os.path.join(data_root, task.name, f"{split}.{{{','.join(FILE_TYPES)}}}") + " (no such file)")
    hub_id, config = task.hub
    if hub_reachable():
        import datasets

        try:
            return list(datasets.load_dataset(hub_id, config, split=split)), f"hub {hub_id}/{config or ''}[{split}]"
        except Exception as e:  # noqa: BLE001 - any hub failure becomes the one error below
            tried.append(f"hub {hub_id} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    else:
        tried.append(f"hub {hub_id} (offline or unreachable)")
    raise UserError(f"no data for task {task.name!r} split {split!r}; tried: {'; '.join(tried)}. "
                    f"Put the rows in {task.name}/{split}.jsonl under --data_root (or a disk_datasets/ folder)")


def clean(task, rows, source):
    """(fields, label text) for each usable row. The task's documented cleaning rules drop rows;
    a missing column or an unknown label value is an error naming the source and row."""
    out = []
    for i, row in enumerate(rows):
        missing = [c for c in task.source_columns if c not in row]
        if missing:
            raise UserError(f"{source} row {i}: missing column {missing[0]!r} for task {task.name} "
                            f"(it needs {', '.join(task.source_columns)})")
        raw = task.label(row)
        fields = {k: get(row) for k, get in task.fields.items()}
        if task.strings_only and not all(isinstance(v, str) for v in [raw, *fields.values()]):
            continue
        if task.kind == "qa":
            if not raw:  # unanswerable question (SQuAD v2): no answer to train on or score
                continue
            label = str(raw)
        elif task.labels is not None:
            key = int(raw) if isinstance(raw, str) and raw.lstrip("-").isdigit() else raw  # csv gives "1"
            if key not in task.labels:
                raise UserError(f"{source} row {i}: label {raw!r} is not one of {sorted(task.labels)} for task "
                                f"{task.name}")
            label = task.labels[key]
        else:
            label = raw
            if task.label_set is not None and label not in task.label_set:
                continue  # race/commonsense_qa: rows with another answer are dropped (the original's rule)
        out.append(({k: "" if v is None else str(v) for k, v in fields.items()}, label))
    if not out:
        raise UserError(f"{source}: no usable rows for task {task.name} (empty split?)")
    return out


def load(task, data_root, split, max_samples=None):
    """Cleaned (fields, label) examples of a split: the first `max_samples` of them when given."""
    rows, source = load_rows(task, data_root, split)
    examples = clean(task, rows, source)
    return examples[:max_samples] if max_samples else examples


def stratified_sample(examples, fraction, seed):
    """A `fraction` of the examples with each label's share kept (largest remainder; works when a label
    has one example, as every QA answer does), in their original order."""
    if not 0 < fraction <= 1:
        raise UserError(f"--train_sample_fraction must be in (0, 1], got {fraction}")
    rng = random.Random(seed)
    groups = {}
    for i, (_, label) in enumerate(examples):
        groups.setdefault(label, []).append(i)
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


def label_space(task, examples=()):
    """The closed set of label texts a prediction is matched against (None for QA tasks). For a task
    whose labels come from the data (20 Newsgroups), the labels seen in `examples`."""
    if not task.closed:
        return None
    if task.labels is not None:
        return list(dict.fromkeys(task.labels.values()))
    if task.label_set is not None:
        return list(task.label_set)
    return sorted({label for _, label in examples})


_PUNCT = string.punctuation.replace("_", "") + string.whitespace


def normalise(text):
    """Case, and whitespace and punctuation around the text, do not count: 'True.' -> 'true'."""
    return text.strip(_PUNCT).lower()


def extract_prediction(generated):
    """The answer in a decoded generation: stripped and cut at the first newline or '###'."""
    return generated.strip().split("\n")[0].split("###")[0].strip()


def match_label(prediction, labels):
    """The label that `prediction` names (case and surrounding punctuation forgiven), else None."""
    norm = normalise(prediction)
    for label in labels:
        if norm == normalise(label):
            return label
    return None
