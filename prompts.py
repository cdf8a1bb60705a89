"""Every task's prompts and labels, behind one table (TASKS): the ground floor the training and evaluation stand on.

A task is one row of TASKS: where its rows come from, how a row becomes the template's fields, its label and
its gold answers, the template itself (exact to the paper's code, spacing included) and its evaluation split.
One code path turns any task's rows into training texts and inference prompts. Where the rows are looked for,
and how a faulty file is told in one line, is keys_values/data.py's; cleaning them by the task's rules is here.

Adding a task is one row in TASKS and its files (`<task>/<split>.jsonl` in the hub's schema).

Pure Python: no torch, no model, nothing of the project but utils, so the prompt tests run in milliseconds.
"""

import ast
import decimal
import difflib
import json
import math
import numbers
import random
import re
import string
from dataclasses import dataclass, field
from typing import NamedTuple

from utils import UserError


class RowError(ValueError):
    """A value of one row that cannot be used; clean() turns it into a UserError naming the source and row."""


def kind_of(value):
    """A value's JSON kind in words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (numbers.Number, decimal.Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def parsed(value):
    """A csv cell (or any text) that spells a list or an object as JSON or a Python literal, parsed; else as is."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        text = value.strip()
        try:
            return json.loads(text)
        except ValueError:
            pass
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return value


# ----------------------------------------------------------------------------------------------------
# Field getters: how a template field is read from a row. A missing column raises KeyError (turned into
# a UserError naming the file and row); a missing option is an empty string, as in the original. A list or
# object column given as text (a csv cell holding '["a", "b"]') is parsed; a value of the wrong shape is a
# RowError.


def column(name):
    return lambda row: row[name]


def option(col, i, key=None):
    def get(row):
        values = parsed(row[col])
        if key is not None:
            if isinstance(values, (list, tuple)) and all(isinstance(v, dict) and key in v for v in values):
                values = [v[key] for v in values]  # [{"label": "A", "text": ...}, ...]: the records form
            elif isinstance(values, dict) and key in values:
                values = parsed(values[key])
            else:
                raise RowError(f"column {col!r} is {kind_of(values)} without {key!r} (it needs the form "
                               f"{{{key!r}: [...], ...}})")
        if not isinstance(values, (list, tuple)):
            raise RowError(f"column {col!r} is {kind_of(values)}, not a list of options")
        return values[i] if i < len(values) else ""
    return get


def all_answers(row):
    """Every gold answer text of a QA row: SQuAD's {"text": [...]}, NewsQA's list of strings, or one string.
    Empty for an unanswerable question (SQuAD v2). A csv cell spelling a list or {"text": [...]} is parsed."""
    answers = row["answers"] if "answers" in row else row["answer"]
    value = parsed(answers)
    if isinstance(value, (list, tuple)) or (isinstance(value, dict) and "text" in value):
        answers = value
    if isinstance(answers, dict):
        if "text" not in answers:
            raise RowError("column 'answers' is an object without 'text' (it needs the form "
                           '{"text": [...], "answer_start": [...]})')
        answers = parsed(answers["text"])
    if answers is None:
        return ()
    if not isinstance(answers, (list, tuple)):
        answers = [answers]
    return tuple(str(a) for a in answers if a is not None and str(a) != "")


def first_answer(row):
    """The answer a QA row is trained on: its first gold answer (None when unanswerable: the row is dropped)."""
    answers = all_answers(row)
    return answers[0] if answers else None


def hotpot_context(row):
    """HotpotQA's context is {"title": [...], "sentences": [[...], ...]}: flattened to one text."""
    ctx = row["context"]
    value = parsed(ctx)
    if isinstance(value, dict):
        ctx = value
    if ctx is None or isinstance(ctx, str):
        return ctx
    if not (isinstance(ctx, dict) and "title" in ctx and "sentences" in ctx):
        raise RowError(f"column 'context' is {kind_of(ctx)}, neither a text nor {{\"title\": [...], \"sentences\": "
                       f"[[...], ...]}}")
    try:
        return " ".join(f"{title}: {''.join(sents).strip()}" for title, sents in zip(ctx["title"], ctx["sentences"]))
    except TypeError as e:
        raise RowError(f"column 'context' has sentences that are not lists of texts ({e})") from None


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
    answer_columns: tuple = ()  # QA: every row must have one of these columns (the gold answers)

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
                kind="qa", long_field="context", source_columns=("context", "question"), answers=all_answers,
                answer_columns=("answers", "answer"))


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


def _suggest(name):
    """The task `name` most likely means: one differing only in case (certain), else a close spelling, else None."""
    by_case = {n.lower(): n for n in TASKS}
    if name.lower() in by_case:
        return by_case[name.lower()], True
    close = difflib.get_close_matches(name.lower(), list(by_case), n=1, cutoff=0.75)
    return (by_case[close[0]], False) if close else (None, False)


def check_tasks(names):
    """The Tasks named, or one error: an unknown name (with the task it most likely means: `cb` -> 'CB'), tasks
    joined by commas or spaces in one word (they are separate words), a task named twice, or none."""
    known = " ".join(TASKS)
    if not names:
        raise UserError(f"no task given; choose from: {known}")
    for name in names:
        if name in TASKS:
            continue
        parts = [p for p in re.split(r"[,\s]+", name) if p]
        if len(parts) > 1:
            fixed = [p if p in TASKS else (_suggest(p)[0] or p) for p in parts]
            how = "commas" if "," in name else "spaces inside one quoted word"
            raise UserError(f"unknown task {name!r}: tasks are separate words, not joined by {how} "
                            f"(--tasks {' '.join(fixed)}); choose from: {known}")
        guess, certain = _suggest(name)
        if guess and certain:  # task names are case-sensitive
            raise UserError(f"unknown task {name!r} (did you mean {guess!r}?); choose from: {known}")
        raise UserError(f"unknown task {name!r}; choose from: {known}" + (f" (did you mean {guess!r}?)" if guess else ""))
    if len(set(names)) != len(names):
        raise UserError(f"a task is named twice in --tasks {' '.join(names)}")
    return [TASKS[n] for n in names]


def _label_key(task, raw):
    """The label_map key a raw label value means. Accepted: an integer; a whole float (1.0, as float columns of
    csv/parquet give it); a text holding an integer or a whole number (" 1", "1.0": csv); a text equal, ignoring
    case and spaces, to one of the task's label texts ("entailment"); true/false only where the map says so
    (boolq: true -> "true"). Anything else (null, NaN, 1.5, "yes", a list, an object) is a RowError."""
    allowed = sorted(task.label_map)
    texts = list(dict.fromkeys(task.label_map.values()))
    if isinstance(raw, bool):
        if task.label_map.get(int(raw)) == str(raw).lower():
            return int(raw)
        raise RowError(f"label {raw!r} is true/false; task {task.name} needs one of {allowed}")
    if isinstance(raw, numbers.Integral):
        key = int(raw)
    elif isinstance(raw, (numbers.Real, decimal.Decimal)):
        if math.isnan(raw):
            raise RowError(f"label is empty (NaN); task {task.name} needs one of {allowed}")
        if not float(raw).is_integer():
            raise RowError(f"label {raw!r} is not a whole number; task {task.name} needs one of {allowed}")
        key = int(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        by_text = {v.lower(): k for k, v in task.label_map.items()}
        if not text:
            raise RowError(f"label is empty; task {task.name} needs one of {allowed}")
        if re.fullmatch(r"[+-]?\d+", text):
            key = int(text)
        elif re.fullmatch(r"[+-]?\d+\.0*", text):
            key = int(float(text))
        elif text.lower() in by_text:
            key = by_text[text.lower()]
        else:
            raise RowError(f"label {raw!r} is not one of {allowed} for task {task.name} (nor one of its label texts: "
                           f"{', '.join(texts)})")
    elif raw is None:
        raise RowError(f"label is empty (null); task {task.name} needs one of {allowed}")
    else:
        raise RowError(f"label {raw!r} is {kind_of(raw)}, not one value; task {task.name} needs one of {allowed}")
    if key not in task.label_map:
        raise RowError(f"label {raw!r} is not one of {allowed} for task {task.name}")
    return key


def needs(task):
    """The columns a task's rows must have, in words."""
    return ", ".join([*task.source_columns, *([" or ".join(task.answer_columns)] if task.answer_columns else [])])


def reasons(dropped):
    """{reason: count} of dropped rows in words, the most frequent first: '2: label not a string'."""
    return "; ".join(f"{n}: {why}" for why, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])))


def clean_counted(task, rows, where, lines=None):
    """(examples, dropped): an Example for each usable row, and {reason: count} of the rows the task's documented
    cleaning rules dropped: 20_Newsgroups_Fixed drops rows whose text or label is not a string ('text not a
    string', 'label not a string'); race and commonsense_qa drop answers outside their label set ('answer not
    one of A, B, C, D'); QA tasks drop unanswerable rows ('no answer (unanswerable)'). Any other fault (a missing
    column, a label of the wrong type or value, a list column of the wrong shape) is one UserError naming `where`,
    the row (from 0) and, when `lines` gives them, the row's line in the file (from 1). No row left is an error
    saying the split is empty or why every row was dropped."""
    out, dropped = [], {}

    def fail(i, cause):
        at = f" (line {lines[i]} of the file)" if lines else ""
        raise UserError(f"{where} row {i}: {cause}{at}")

    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            fail(i, f"is {kind_of(row)}, not a row of columns")
        missing = [c for c in task.source_columns if c not in row]
        if task.answer_columns and not any(c in row for c in task.answer_columns):
            missing.append(task.answer_columns[0])
        if missing:
            fail(i, f"missing column {missing[0]!r} for task {task.name} (it needs {needs(task)}; the row has "
                    f"{', '.join(map(str, row)) or 'no columns'})")
        try:
            raw = task.label(row)
            fields = {k: get(row) for k, get in task.fields.items()}
            if not task.strings_only:  # 20_Newsgroups_Fixed drops such rows (the original's rule); others say so
                for k, v in fields.items():
                    what = f"column {k!r}" if k in task.source_columns else f"option {k}"
                    if v is None or (isinstance(v, float) and math.isnan(v)):
                        raise RowError(f"{what} is empty (null); task {task.name} needs a text there")
                    if isinstance(v, (bool, list, tuple, dict)):
                        raise RowError(f"{what} is {kind_of(v)}, not a text")
            reason = None
            if task.strings_only:
                bad = [k for k, v in [*fields.items(), ("label", raw)] if not isinstance(v, str)]
                reason = f"{bad[0]} not a string" if bad else None
            elif not task.closed:
                if not raw:  # unanswerable question (SQuAD v2): no answer to train on or score
                    reason = "no answer (unanswerable)"
                else:
                    label, gold = str(raw), task.answers(row)
            elif task.label_map is not None:
                key = _label_key(task, raw)
                label, gold = task.label_map[key], (task.label_map[key],)
            else:
                value = raw.strip() if isinstance(raw, str) else raw
                if task.label_set is not None and value not in task.label_set:
                    reason = f"answer not one of {', '.join(task.label_set)}"  # race/commonsense_qa: the original's rule
                else:
                    label, gold = value, (value,)
            if task.strings_only and reason is None:
                label, gold = raw, (raw,)
        except RowError as e:
            fail(i, str(e))
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        out.append(Example({k: "" if v is None else str(v) for k, v in fields.items()}, label, gold))
    if not out:
        if not rows:
            raise UserError(f"{where}: no usable rows for task {task.name}: the split is empty (0 rows)")
        n = len(rows)
        raise UserError(f"{where}: all {n} row{'s' if n != 1 else ''} dropped for task {task.name} ({reasons(dropped)})")
    return out, dropped


def clean(task, rows, where, lines=None):
    """An Example for each usable row (`clean_counted` without the counts of dropped rows)."""
    return clean_counted(task, rows, where, lines)[0]


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
    """The label among `options` that the answer starts with, at a word boundary, case and the punctuation
    around it forgiven: 'False. The passage says...' -> 'false', 'Choice2' -> 'Choice2', 'truest' -> None. When
    several labels match, the longest (so a label that begins another never steals its answers). None when the
    answer starts with no label."""
    text = prediction.lstrip(_PUNCT).lower()
    best = None
    for label in options:
        norm = normalise(label)
        if not norm or not text.startswith(norm):
            continue
        rest = text[len(norm):]
        if rest and (rest[0].isalnum() or rest[0] == "_"):
            continue  # not a word boundary: 'truest' does not name 'true'
        if best is None or len(norm) > len(normalise(best)):
            best = label
    return best
