"""Reading a task's rows from people's own files and folders, or the hub: where they are looked for, and every
fault in them told in one line (a UserError naming the file, the row or line, and the cause).

Where a split's rows come from (`load_rows`, `find_source`, `expected_files`), first match wins:

  data_root "" (the default; the original joined "" + "/disk_datasets"):
    1. ./disk_datasets/<disk name>              (a folder saved with datasets' save_to_disk)
    2. /disk_datasets/<disk name>               (ORIGINAL_DISK_ROOT: the original's absolute path)
    3. ./<task>/<split>.{jsonl,json,csv,parquet}
    4. the hub (when reachable)
  data_root given ("data", "." ...):
    1. <root>/disk_datasets/<disk name>
    2. <root>/<task>/<split>.{jsonl,json,csv,parquet}
    3. the hub (when reachable)

A disk folder that exists but cannot serve the split (not a saved dataset, a DatasetDict without the split)
and a task folder holding only misnamed split files (CB/test.jsonl when 'validation' is wanted) stop the
search with an error naming what was found: the user meant local data, so the hub is not used instead.

Nothing is written (csv is read with Python's csv module and parquet with pyarrow, so no datasets cache is
made). Rows are numbered from 0 (as datasets indexes them), lines of a file from 1 (as editors number them).
A task is read through its attributes (name, disk_name, hub, source_columns, answer_columns, eval_split); each
file format is read by readers.py. `load` returns a split's cleaned Examples (prompts.clean_counted's rules).
No torch, no transformers.
"""

import json
import os

import prompts
from keys_values.environment import hub_reachable
from keys_values.readers import check_columns, first_line, listing, read_disk, read_file, saved_kind_of, saved_split
from utils import UserError

FILE_TYPES = ("jsonl", "json", "csv", "parquet")
_WARNED = set()  # split files already said to have a sibling of another type (said once a process)
ORIGINAL_DISK_ROOT = "/disk_datasets"  # the original's data_root "" + "/disk_datasets": searched when data_root is ""
_PATTERN = "{" + ",".join(FILE_TYPES) + "}"


def _role(task, split):
    if split == task.eval_split:
        return "evaluates on"
    return "trains on" if split == "train" else "reads"



def _disk_target(task, disk, split):
    """(folder to load, split to take from it or None) for an existing disk_datasets folder, read without loading
    it; else one error saying why it cannot serve the split. A DatasetDict must hold the split; a lone Dataset
    is used for any split unless it was saved as another one; a folder holding <split>/ saved as a Dataset (a
    DatasetDict without its dataset_dict.json) is used too."""
    kind = saved_kind_of(disk)
    if kind == "DatasetDict":
        try:
            with open(os.path.join(disk, "dataset_dict.json"), encoding="utf-8") as f:
                splits = list(json.load(f)["splits"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{disk}/dataset_dict.json is corrupt ({type(e).__name__}: {first_line(e)}); save the "
                            f"dataset again with save_to_disk") from None
        if split not in splits:
            raise UserError(f"{disk} has no split {split!r} (it has: {', '.join(map(str, splits)) or 'none'}); task "
                            f"{task.name} {_role(task, split)} the {split!r} split")
        return disk, split
    if kind == "Dataset":
        saved_as = saved_split(disk)
        if saved_as and str(saved_as) != split:
            raise UserError(f"{disk} is one saved split ({saved_as!r}), not {split!r}: task {task.name} "
                            f"{_role(task, split)} the {split!r} split; save a DatasetDict holding it there")
        return disk, None
    if saved_kind_of(os.path.join(disk, split)) == "Dataset":
        return os.path.join(disk, split), None
    raise UserError(f"{disk}: not a saved dataset (no dataset_dict.json or state.json; it holds {listing(disk)}); "
                    f"save one there with datasets' save_to_disk, or remove the folder to read "
                    f"{task.name}/{split}.{_PATTERN} files")



def _disk_folders(task, data_root):
    folders = [os.path.join(data_root or "", "disk_datasets", task.disk_name)]
    if not data_root:
        folders.append(os.path.join(ORIGINAL_DISK_ROOT, task.disk_name))
    return folders


def _file_pattern(task, data_root, split):
    return os.path.join(data_root or "", task.name, f"{split}.{_PATTERN}")


def expected_files(task, data_root, split):
    """The local places a split's rows are looked for, in search order, as one text:
    'data/disk_datasets/super_glue/cb and data/CB/validation.{jsonl,json,csv,parquet}'."""
    places = [*_disk_folders(task, data_root), _file_pattern(task, data_root, split)]
    return ", ".join(places[:-1]) + " and " + places[-1]


def _task_folder_note(task, data_root, split):
    """What the task folder holds when <split>.* is not there. Files that look like this split under another
    name (CB/test.jsonl, CB/dev.csv, CB/Validation.jsonl, CB/validation.tsv) stop the search with one error; the
    task's other real splits (train, its evaluation split) only make a note for the no-data error."""
    root = data_root or ""
    folder = os.path.join(root, task.name)
    if not os.path.isdir(folder):
        here = root or "."
        same = [d for d in (os.listdir(here) if os.path.isdir(here) else [])
                if d.lower() == task.name.lower() and os.path.isdir(os.path.join(here, d))]
        return f"; found {same[0]}/: the folder must be named {task.name}" if same else ""
    found, others = [], []
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not os.path.isfile(os.path.join(folder, name)):
            continue
        stem, _, ext = name.partition(".")
        if stem == split:  # the split's name with another extension
            if ext.lower() in FILE_TYPES:
                found.append((f"{task.name}/{name} (rename it to {split}.{ext.lower()})", False))
            else:
                found.append((f"{task.name}/{name} (not a file type read here: save it as {', '.join(FILE_TYPES)})", False))
        elif stem.lower() == split.lower() or (ext.lower() in FILE_TYPES and stem not in ("train", task.eval_split)):
            meant = stem.lower().startswith("train") == (split == "train")  # could this file be the split wanted?
            found.append((f"{task.name}/{name}", meant))
        elif ext.lower() in FILE_TYPES:
            others.append(name)
    if found:
        fix = " (rename the file)" if any(meant for _, meant in found) else ""
        raise UserError(f"no {task.name}/{split}.{_PATTERN} under {root or 'the current folder'}; found "
                        f"{', '.join(text for text, _ in found)}: task {task.name} {_role(task, split)} the {split!r} "
                        f"split{fix}")
    if others:
        return f"; {task.name}/ holds {', '.join(others)}"
    return f"; {task.name}/ is empty" if not os.listdir(folder) else ""


def _locate(task, data_root, split):
    """Where a split's local rows are, without reading them: ("disk", folder, split to take or None),
    ("file", path), or (None, places tried). A local place that exists but cannot serve is a UserError."""
    tried = []
    for disk in _disk_folders(task, data_root):
        if os.path.isdir(disk):
            return ("disk", *_disk_target(task, disk, split))
        tried.append(f"{disk} (no such folder)")
    for ext in FILE_TYPES:
        path = os.path.join(data_root or "", task.name, f"{split}.{ext}")
        if os.path.isfile(path):
            others = [os.path.basename(p) for e in FILE_TYPES if e != ext
                      and os.path.isfile(p := os.path.join(data_root or "", task.name, f"{split}.{e}"))]
            if others and path not in _WARNED:
                _WARNED.add(path)
                print(f"warning: {task.name} has {len(others) + 1} files for its {split!r} split "
                      f"({', '.join([os.path.basename(path), *others])}): using {path} (the first of "
                      f"{', '.join(FILE_TYPES)}); remove the others to make it plain")
            return "file", path
        if os.path.isdir(path):
            raise UserError(f"{path} is a folder, not a {ext} file: put the rows in a file of that name (a folder "
                            f"saved by datasets goes in a disk_datasets/ folder)")
        if os.path.lexists(path):
            raise UserError(f"{path} is a link to {os.readlink(path)!r}, which does not exist"
                            if os.path.islink(path) else f"{path} is not a regular file")
    tried.append(f"{_file_pattern(task, data_root, split)} (no such file{_task_folder_note(task, data_root, split)})")
    return None, tried


def _hub_text(task, split):
    hub_id, config = task.hub
    return describe({"source": "hub", "hub_id": hub_id, "config": config, "split": split})


def find_source(task, data_root, split):
    """Where a split's rows would come from, found without reading them: a local path ('data/CB/validation.jsonl',
    'data/disk_datasets/super_glue/cb [validation]') or 'hub aps/super_glue (cb) [validation]'; None when no local
    place can serve the split and the hub is unreachable (`source_problem` says why). For an early warning."""
    try:
        found = _locate(task, data_root, split)
    except UserError:
        return None
    if found[0] == "disk":
        return describe({"source": "disk_datasets", "path": found[1], "split": split})
    if found[0] == "file":
        return found[1]
    return _hub_text(task, split) if hub_reachable() else None


def source_problem(task, data_root, split):
    """None when `find_source` finds a source; else the one-line reason loading would fail with (a local place
    that cannot serve the split, or nothing local and the hub unreachable)."""
    try:
        found = _locate(task, data_root, split)
    except UserError as e:
        return str(e)
    if found[0] is not None or hub_reachable():
        return None
    return _no_data(task, data_root, split, [*found[1], f"hub {task.hub[0]} (offline or unreachable)"])


def _no_data(task, data_root, split, tried):
    where = "under --data_root" if data_root else "under the current folder (or --data_root)"
    return (f"no data for task {task.name!r} split {split!r}; tried: {'; '.join(tried)}. "
            f"Put the rows in {task.name}/{split}.jsonl {where} (or a disk_datasets/ folder)")


def read_rows(task, data_root, split):
    """(rows, source, line numbers or None, what an empty result means)."""
    found = _locate(task, data_root, split)
    if found[0] == "disk":
        _, folder, sub = found
        source = {"source": "disk_datasets", "path": folder, "split": split}
        rows = read_disk(task, folder, sub, describe(source))
        if sub is None and saved_kind_of(folder) == "Dataset" and saved_split(folder) is None:
            source["every_split"] = True  # one Dataset saved without a split name: said wherever the source is
        return rows, source, None, "the saved split has no rows"
    if found[0] == "file":
        rows, lines, empty = read_file(found[1], task)
        return rows, {"source": "file", "path": found[1], "split": split}, lines, empty
    tried = found[1]
    hub_id, config = task.hub
    if hub_reachable():
        import datasets

        print(f"{task.name}: downloading {hub_id}{f' ({config})' if config else ''} split {split!r} from the hub",
              flush=True)
        try:
            ds = datasets.load_dataset(hub_id, config, split=split)
        except Exception as e:  # noqa: BLE001 - any hub failure becomes the one error below
            tried.append(f"hub {hub_id} ({type(e).__name__}: {first_line(e)[:120]})")
        else:
            source = {"source": "hub", "hub_id": hub_id, "config": config, "split": split}
            if getattr(ds, "column_names", None) is not None:
                check_columns(task, describe(source), ds.column_names, "has columns")
            return list(ds), source, None, "the split has no rows"
    else:
        tried.append(f"hub {hub_id} (offline or unreachable)")
    raise UserError(_no_data(task, data_root, split, tried))


def load_rows(task, data_root, split):
    """Raw rows of one split of a task, and where they came from: {"source": "disk_datasets" | "file" | "hub",
    "path" or "hub_id"/"config", "split"}. data_root "" searches as the original did (module docstring)."""
    rows, source, _, _ = read_rows(task, data_root, split)
    return rows, source


def describe(source, dropped=False):
    """'sample_data/CB/train.jsonl' or 'hub aps/super_glue (cb) [train]': where rows came from, in words. With
    dropped=True and a source from `load`, the rows its cleaning rules dropped are added: ' (2 of 9 rows dropped;
    2: label not a string)'."""
    if source["source"] == "hub":
        text = f"hub {source['hub_id']}" + (f" ({source['config']})" if source["config"] else "") + f" [{source['split']}]"
    else:
        text = source["path"] + (f" [{source['split']}]" if source["source"] == "disk_datasets" else "")
    if source.get("every_split"):
        text += " (one Dataset saved without a split name: the same rows serve training and evaluation)"
    if dropped and source.get("dropped"):
        n = sum(source["dropped"].values())
        text += f" ({n} of {source.get('rows', '?')} rows dropped; {prompts.reasons(source['dropped'])})"
    return text



def load(task, data_root, split, max_samples=None):
    """(examples, source): the cleaned Examples of a split (the first `max_samples` of them when given), and
    where they came from with the row counts before and after cleaning ("rows", "clean", "used") and the rows
    the cleaning rules dropped by reason ("dropped": {reason: count}, empty when none)."""
    rows, source, lines, empty = read_rows(task, data_root, split)
    if not rows:
        raise UserError(f"{describe(source)}: no usable rows for task {task.name}: {empty}")
    examples, dropped = prompts.clean_counted(task, rows, describe(source), lines)
    used = examples[:max_samples] if max_samples else examples
    return used, {**source, "rows": len(rows), "clean": len(examples), "used": len(used), "dropped": dropped}
