"""Edit requests, from the files people have, into one shape (EditRequest), told apart by their fields:

- ROME's CounterFact (Meng et al. 2022): {"case_id", "requested_rewrite": {"prompt": "The mother tongue of {} is",
  "subject", "target_new": {"str"}, "target_true": {"str"}}, "paraphrase_prompts": [...], "neighborhood_prompts":
  [...]}; a neighbour's true answer is the edit's target_true (neighbours share the subject's true object).
- EasyEdit's flat CounterFact: {"case_id", "prompt" (the subject filled in), "subject", "target_new",
  "ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth"} (a text or a list of texts each).
- MEND's zsRE (Levy et al. 2017, as MEND distributes it): {"subject", "src" (a question), "alt" (the new answer),
  "answers" (the true ones), "rephrase", "loc" (an unrelated question), "loc_ans"}.

A record that does not fit its format is one line naming the file, the record and the field. A hub id is loaded
with datasets when the hub answers (one line when it does not). `sample` draws each seed's edits."""

import json
import os
import random
from dataclasses import dataclass

from keys_values import environment, readers
from utils import UserError

FORMATS = ("counterfact", "counterfact-flat", "zsre")
FORMAT_NAMES = {"counterfact": "ROME's CounterFact", "counterfact-flat": "EasyEdit's flat CounterFact",
                "zsre": "MEND's zsRE"}


@dataclass(frozen=True)
class EditRequest:
    """One fact to change and the prompts it is measured on (texts; a target is the words after the prompt)."""
    case_id: object  # the record's own id, else its index in the file
    prompt: str  # the rewrite prompt, its subject filled in
    subject: str  # None where the format has none
    target_new: str
    target_true: str  # the model's fact to replace (zsRE: its first true answer)
    paraphrases: tuple  # other wordings of the rewrite prompt
    neighbours: tuple  # ((prompt, its true answer), ...): facts the edit must leave as they are
    generation: tuple = ()  # prompts generated from for fluency (the rewrite and paraphrase prompts when empty)

    def to_json(self):
        return {"case_id": self.case_id, "prompt": self.prompt, "subject": self.subject, "target_new": self.target_new,
                "target_true": self.target_true, "paraphrases": list(self.paraphrases),
                "neighbours": [list(n) for n in self.neighbours]}


def detect(record):
    """The format a record's fields say it is in, or None."""
    if not isinstance(record, dict):
        return None
    if "requested_rewrite" in record:
        return "counterfact"
    if "src" in record and "alt" in record:
        return "zsre"
    if "prompt" in record and "target_new" in record:
        return "counterfact-flat"
    return None


class _Field:
    """Reads the fields of record `index` of `where`, each fault one line naming the file, the record, the field."""

    def __init__(self, where, index, record):
        self.where, self.index, self.record = where, index, record

    def fail(self, field, why):
        raise UserError(f"{self.where}: record {self.index}: field {field!r} {why}")

    def get(self, obj, field, path=None):
        name = path or field
        if not isinstance(obj, dict) or field not in obj:
            self.fail(name, "is missing")
        return obj[field]

    def text(self, obj, field, path=None, optional=False):
        if optional and (not isinstance(obj, dict) or obj.get(field) is None):
            return None
        value = self.get(obj, field, path)
        if not isinstance(value, str) or not value.strip():
            self.fail(path or field, f"is {readers.kind_of(value) if value != '' else 'an empty text'}, not a text")
        return value

    def texts(self, obj, field, path=None, optional=False):
        """A list of texts, or one text as a list of one."""
        if optional and (not isinstance(obj, dict) or obj.get(field) in (None, [])):
            return []
        value = self.get(obj, field, path)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values:
            self.fail(path or field, f"is {readers.kind_of(value)}, not a text or a list of texts")
        for k, v in enumerate(values):
            if not isinstance(v, str) or not v.strip():
                self.fail(f"{path or field}[{k}]", f"is {readers.kind_of(v)}, not a text")
        return values


def parse(record, index, where, fmt):
    """The EditRequest of one record in format `fmt`; a fault is one line (UserError)."""
    f = _Field(where, index, record)
    if not isinstance(record, dict):
        raise UserError(f"{where}: record {index} is {readers.kind_of(record)}, not an object of fields")
    case_id = record.get("case_id", index)
    if fmt == "counterfact":
        rw = f.get(record, "requested_rewrite")
        if not isinstance(rw, dict):
            f.fail("requested_rewrite", f"is {readers.kind_of(rw)}, not an object")
        template = f.text(rw, "prompt", "requested_rewrite.prompt")
        subject = f.text(rw, "subject", "requested_rewrite.subject")
        if "{}" not in template:
            f.fail("requested_rewrite.prompt", f"has no {{}} where the subject goes ({template!r})")
        new = f.text(f.get(rw, "target_new", "requested_rewrite.target_new"), "str", "requested_rewrite.target_new.str")
        true = f.text(f.get(rw, "target_true", "requested_rewrite.target_true"), "str",
                      "requested_rewrite.target_true.str")
        paraphrases = f.texts(record, "paraphrase_prompts", optional=True)
        neighbours = [(p, true) for p in f.texts(record, "neighborhood_prompts", optional=True)]
        generation = f.texts(record, "generation_prompts", optional=True)
        return EditRequest(case_id, template.format(subject), subject, new, true, tuple(paraphrases),
                           tuple(neighbours), tuple(generation))
    if fmt == "counterfact-flat":
        prompt = f.text(record, "prompt")
        subject = f.text(record, "subject", optional=True)
        new = f.text(record, "target_new")
        true = f.text(record, "ground_truth")
        paraphrases = f.texts(record, "rephrase_prompt", optional=True)
        loc = f.texts(record, "locality_prompt", optional=True)
        answers = f.texts(record, "locality_ground_truth", optional=True) if loc else []
        if loc and len(answers) not in (1, len(loc)):
            f.fail("locality_ground_truth", f"has {len(answers)} answers for {len(loc)} locality prompts")
        neighbours = [(p, answers[k] if len(answers) > 1 else answers[0] if answers else true) for k, p in enumerate(loc)]
        return EditRequest(case_id, prompt, subject, new, true, tuple(paraphrases), tuple(neighbours))
    # zsre
    prompt = f.text(record, "src")
    new = f.text(record, "alt")
    true = f.texts(record, "answers")[0]
    paraphrases = f.texts(record, "rephrase", optional=True)
    neighbours = []
    if record.get("loc") is not None:
        neighbours = [(f.text(record, "loc"), f.text(record, "loc_ans"))]
    return EditRequest(case_id, prompt, f.text(record, "subject", optional=True), new, true, tuple(paraphrases),
                       tuple(neighbours))


def read_file(path):
    """The raw records of a .json (a list, or an object holding one list) or .jsonl file."""
    ext = path.rsplit(".", 1)[-1].lower()
    if ext not in ("json", "jsonl"):
        raise UserError(f"--data {path}: give a .json or .jsonl file of edit records (or a hub dataset id)")
    text = readers.decode(path, ext)
    if ext == "jsonl":
        return readers.read_jsonl(path, text)[0]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: is {readers.kind_of(data)}, not a list of edit records")
    return data


def read_hub(dataset_id):
    """The records of a hub dataset (its train split, or its only one)."""
    if not environment.hub_reachable():
        raise UserError(f"--data {dataset_id}: no such file here, and the hub cannot be reached (offline): give a "
                        f"local .json or .jsonl file of edit records")
    import datasets

    print(f"--data {dataset_id}: downloading from the hub", flush=True)
    try:
        ds = datasets.load_dataset(dataset_id)
    except Exception as e:  # noqa: BLE001 - any hub failure is one line
        raise UserError(f"--data {dataset_id}: the hub refused it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    split = "train" if "train" in ds else next(iter(ds))
    return [dict(r) for r in ds[split]]


def load(data):
    """(edit requests, format, where): every record of a file or hub dataset, parsed. An empty set, a record of
    no known format, or records of two formats are one line."""
    if os.path.isdir(data):
        raise UserError(f"--data {data} is a folder: give a .json or .jsonl file of edit records")
    if os.path.isfile(data):
        raw, where = read_file(data), data
    elif data.startswith((".", "/", "~")) or data.endswith((".json", ".jsonl")) or data.count("/") != 1:
        raise UserError(f"--data {data}: no such file (a hub dataset id is owner/name)")
    else:
        raw, where = read_hub(data), f"hub {data}"
    if not raw:
        raise UserError(f"{where}: holds no edit records")
    formats = [detect(r) for r in raw]
    for i, fmt in enumerate(formats):
        if fmt is None:
            fields = ", ".join(map(str, raw[i])) if isinstance(raw[i], dict) else readers.kind_of(raw[i])
            raise UserError(f"{where}: record {i} is in no format read here (its fields: {fields}); give ROME's "
                            "CounterFact (requested_rewrite ...), EasyEdit's (prompt, target_new, ground_truth ...) or "
                            "MEND's zsRE (src, alt, answers ...)")
        if fmt != formats[0]:
            raise UserError(f"{where}: record {i} is {FORMAT_NAMES[fmt]}, record 0 {FORMAT_NAMES[formats[0]]}: one "
                            "format a file")
    edits = [parse(r, i, where, formats[0]) for i, r in enumerate(raw)]
    ids = [e.case_id for e in edits]
    if len(set(map(str, ids))) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"{where}: case_id {twice!r} names two records")
    return edits, formats[0], where


def sample(edits, max_edits, seed):
    """The edits of one seed: all of them (in file order) without --max_edits or with at least as many; else
    a sample of --max_edits drawn with the seed, in file order."""
    if not max_edits or max_edits >= len(edits):
        return list(edits)
    keep = sorted(random.Random(seed).sample(range(len(edits)), max_edits))
    return [edits[i] for i in keep]
