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
A task is read through its attributes (name, disk_name, hub, source_columns, answer_columns, eval_split):
this module imports no other of the project's but common, and neither torch nor transformers.
"""

import ast
import codecs
import csv
import decimal
import difflib
import io
import json
import numbers
import os

from common import UserError, hub_reachable


class RowError(ValueError):
    """A value of one row that cannot be used; prompts.clean() turns it into a UserError naming the source and row."""


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
# Loading rows. The search order is in the module docstring; each reader turns a file's faults into one
# UserError naming the file, the line (or row) and the cause.

FILE_TYPES = ("jsonl", "json", "csv", "parquet")
ORIGINAL_DISK_ROOT = "/disk_datasets"  # the original's data_root "" + "/disk_datasets": searched when data_root is ""
_PATTERN = "{" + ",".join(FILE_TYPES) + "}"


def _first_line(error):
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:160]


def _role(task, split):
    if split == task.eval_split:
        return "evaluates on"
    return "trains on" if split == "train" else "reads"


def needs(task):
    return ", ".join([*task.source_columns, *([" or ".join(task.answer_columns)] if task.answer_columns else [])])


def _check_columns(task, where, columns, what="has columns", hint=""):
    """A file's (or saved dataset's) columns must include the task's: else one error naming the missing ones,
    the task's and those found, with a guess at a misnamed column."""
    columns = [str(c) for c in columns]
    missing = [c for c in task.source_columns if c not in columns]
    if task.answer_columns and not any(c in columns for c in task.answer_columns):
        missing.append(task.answer_columns[0])
    if not missing:
        return
    needed = {*task.source_columns, *task.answer_columns}
    extra = [c for c in columns if c not in needed]
    renames = []
    for m in missing if not hint else ():  # a hint (wrong separator, no header) says more than a guess
        close = [c for c in extra if c.strip().lower() == m.lower()]
        close = close or [c for c in extra if len(c) >= 3 and (m.lower().startswith(c.lower()) or c.lower().startswith(m))]
        close = close or difflib.get_close_matches(m, extra, n=1, cutoff=0.7)
        if close:
            renames.append(f"{close[0]!r} to {m!r}")
    msg = (f"{where}: {what} {', '.join(columns) or 'no columns'}; task {task.name} needs {needs(task)} "
           f"(missing {', '.join(missing)})")
    raise UserError(msg + (f"; rename {', '.join(renames)}?" if renames else "") + hint)


# Files that are not text of the expected kind, told apart by their first bytes: (magic, what it is, what to do).
_MAGIC = [
    (b"PAR1", "a parquet file", "rename it to .parquet"),
    (b"\x1f\x8b", "gzip-compressed", "unpack it (gunzip) first"),
    (b"PK\x03\x04", "a zip archive (an Excel workbook?)", "export it as UTF-8 {ext}"),
    (codecs.BOM_UTF32_LE, "UTF-32 text (it starts with a UTF-32 byte-order mark)", "re-save it as UTF-8"),
    (codecs.BOM_UTF32_BE, "UTF-32 text (it starts with a UTF-32 byte-order mark)", "re-save it as UTF-8"),
    (codecs.BOM_UTF16_LE, "UTF-16 text (it starts with a UTF-16 byte-order mark)", "re-save it as UTF-8"),
    (codecs.BOM_UTF16_BE, "UTF-16 text (it starts with a UTF-16 byte-order mark)", "re-save it as UTF-8"),
]


def _decode(path, ext):
    """The text of a UTF-8 file; a UTF-8 byte-order mark is skipped. Anything else is one error: not UTF-8
    (naming the line and the byte offset), UTF-16/32, NUL characters, a parquet/gzip/zip file under a text name."""
    with open(path, "rb") as f:
        data = f.read()
    for magic, what, fix in _MAGIC:
        if data.startswith(magic):
            raise UserError(f"{path}: is {what}, not {ext} text; {fix.format(ext=ext)}")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        pos = bom + e.start
        line = data.count(b"\n", 0, pos) + 1
        col = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
        guess = " (it looks like Latin-1 or Windows-1252)" if data[bom:pos].isascii() and data[pos] >= 0xA0 else ""
        raise UserError(f"{path} line {line}: not UTF-8 text (byte 0x{data[pos]:02x} at byte offset {pos} of the "
                        f"file, byte {col} of the line); re-save the file as UTF-8{guess}") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise UserError(f"{path} line {line}: holds NUL characters (UTF-16 text without a byte-order mark, or not "
                        f"a text file?); re-save the file as UTF-8")
    return text


def _json_cause(error, column):
    """'Expecting ',' delimiter at column 13', 'Unterminated string starting at column 18'."""
    return f"{error.msg}{'' if error.msg.endswith(' at') else ' at'} column {column}"


def _read_jsonl(path, text):
    """JSON Lines: one object per line; blank lines are skipped. -> (rows, their line numbers)."""
    rows, lines = [], []
    physical = text.split("\n")
    last = max((n for n, line in enumerate(physical, 1) if line.strip(" \t\r\ufeff")), default=0)
    for n, line in enumerate(physical, 1):
        body = line.lstrip("\ufeff \t\r")  # a byte-order mark on any line (files joined with cat) is accepted
        start = len(line) - len(body)
        body = body.rstrip()
        if not body:
            continue
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            if not rows and body in ("[", "{", "[{") or (not rows and body.startswith("[") and n == last):
                note = ("; the file looks like one JSON document over several lines, not JSON Lines: name it .json, "
                        "or write one object per line")
            elif e.pos >= len(body) or e.msg.startswith("Unterminated string") or (n == last and not text.endswith("\n")):
                note = "; the line may be cut off" + ("" if n == last else " (or a text in it holds a raw line break)")
            else:
                note = ""
            raise UserError(f"{path} line {n}: not valid JSON ({_json_cause(e, e.colno + start)}){note}") from None
        if not isinstance(obj, dict):
            note = ("; the file looks like a JSON list of rows: name it .json"
                    if isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj) else "")
            raise UserError(f"{path} line {n}: is {kind_of(obj)}, not an object of columns (JSON Lines holds one "
                            f"{{\"column\": value, ...}} object per line){note}")
        rows.append(obj)
        lines.append(n)
    return rows, lines


def _read_json(path, text):
    """A JSON list of row objects, or an object of equal-length column lists. -> (rows, columns or None)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            note = "; it looks like JSON Lines (one object per line): name it .jsonl"
        elif e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):
            note = "; the file may be cut off"
        else:
            note = ""
        raise UserError(f"{path} line {e.lineno}: not valid JSON ({_json_cause(e, e.colno)}){note}") from None
    shape = "a .json file holds a list of {\"column\": value, ...} rows, or an object of column lists"
    if isinstance(data, list):
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise UserError(f"{path} row {i}: is {kind_of(row)}, not an object of columns ({shape})")
        return data, None
    if not isinstance(data, dict):
        raise UserError(f"{path}: is {kind_of(data)}, not a list of rows or an object of columns ({shape})")
    if data and all(isinstance(v, list) and v and all(isinstance(x, dict) for x in v) for v in data.values()):
        raise UserError(f"{path}: an object of {', '.join(map(repr, data))} holding lists of rows, not columns; write "
                        f"the list of rows itself (one file per split)")
    for name, values in data.items():
        if not isinstance(values, list):
            raise UserError(f"{path}: column {name!r} is {kind_of(values)}, not a list of values ({shape})")
    lengths = {name: len(values) for name, values in data.items()}
    if len(set(lengths.values())) > 1:
        raise UserError(f"{path}: its columns have different lengths ({', '.join(f'{k} {n}' for k, n in lengths.items())}); "
                        f"every column needs one value per row")
    return [dict(zip(data, values)) for values in zip(*data.values())], list(data)


_SEPARATORS = {"\t": "tabs", ";": "semicolons", "|": "bars"}


def _read_csv(path, text, task):
    """Comma-separated values with a header line (names stripped of spaces). Cells are text; an empty cell is
    null, as pandas and datasets read it; lines whose cells are all empty (spreadsheets' blank rows) are skipped;
    empty cells past the header's columns are ignored. -> (rows, their first line numbers)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, lines, header, end = [], [], None, 0
    last = text.rstrip().count("\n") + 1  # the last line holding anything
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [h.strip() for h in record]
                seps = [name for sep, name in _SEPARATORS.items() if len(header) == 1 and sep in header[0]]
                hint = (f"; the file seems separated by {seps[0]}, not commas" if seps else
                        "; is the header line missing? the first line must name the columns"
                        if not set(header) & {*task.source_columns, *task.answer_columns} else "")
                _check_columns(task, path, header, "header has", hint)
                twice = sorted({h for h in header if h and header.count(h) > 1})
                if twice:
                    raise UserError(f"{path} line {start}: the header names {', '.join(map(repr, twice))} twice")
                continue
            if len(record) > len(header) and not any(c.strip() for c in record[len(header):]):
                record = record[: len(header)]
            if len(record) != len(header):
                if len(record) < len(header):
                    why = "the line may be cut off" if end >= last else "a value is missing"
                else:
                    why = "a text holding a comma must be in double quotes"
                raise UserError(f"{path} line {start}: {len(record)} fields where the header has {len(header)} "
                                f"({', '.join(header)}); {why}")
            rows.append({h: (None if cell == "" else cell) for h, cell in zip(header, record)})
            lines.append(start)
    except csv.Error as e:
        if "end of data" in str(e):
            line, note = end + 1, "; a double quote is not closed: the file may be cut off"
        else:
            line, note = reader.line_num, "; a text holding double quotes must be quoted, its quotes doubled (\"\")"
        raise UserError(f"{path} line {line}: not valid CSV ({e}){note}") from None
    return rows, lines


def _read_parquet(path, task):
    import pyarrow.parquet as pq  # installed with datasets

    def unreadable(e):
        return UserError(f"{path}: not a readable parquet file ({type(e).__name__}: {_first_line(e)}); it may be cut "
                         f"off, or not parquet")
    try:
        columns = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a broken file
        raise unreadable(e) from None
    _check_columns(task, path, columns, "has columns")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001
        raise unreadable(e) from None


def _read_file(path, task):
    """(rows, line numbers or None, what an empty result means) of one file; every fault is one UserError."""
    ext = path.rsplit(".", 1)[-1]
    if os.path.getsize(path) == 0:
        return [], None, "the file is empty (0 bytes)"
    if ext == "parquet":
        return _read_parquet(path, task), None, "the file has no rows"
    text = _decode(path, ext)
    if not text.strip(" \t\r\n\ufeff"):
        return [], None, "the file is empty"
    if ext == "jsonl":
        rows, lines = _read_jsonl(path, text)
        return rows, lines, "the file has no rows"
    if ext == "json":
        rows, columns = _read_json(path, text)
        if columns is not None:
            _check_columns(task, path, columns, "has columns")
        return rows, None, "the file has no rows"
    rows, lines = _read_csv(path, text, task)
    return rows, lines, "the file has a header and no rows"


def _savedkind_of(folder):
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        return "DatasetDict"
    return "Dataset" if os.path.isfile(os.path.join(folder, "state.json")) else None


def _listing(folder, limit=5):
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "") or "nothing"


def _disk_target(task, disk, split):
    """(folder to load, split to take from it or None) for an existing disk_datasets folder, read without loading
    it; else one error saying why it cannot serve the split. A DatasetDict must hold the split; a lone Dataset
    is used for any split unless it was saved as another one; a folder holding <split>/ saved as a Dataset (a
    DatasetDict without its dataset_dict.json) is used too."""
    kind = _savedkind_of(disk)
    if kind == "DatasetDict":
        try:
            with open(os.path.join(disk, "dataset_dict.json"), encoding="utf-8") as f:
                splits = list(json.load(f)["splits"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{disk}/dataset_dict.json is corrupt ({type(e).__name__}: {_first_line(e)}); save the "
                            f"dataset again with save_to_disk") from None
        if split not in splits:
            raise UserError(f"{disk} has no split {split!r} (it has: {', '.join(map(str, splits)) or 'none'}); task "
                            f"{task.name} {_role(task, split)} the {split!r} split")
        return disk, split
    if kind == "Dataset":
        saved_as = _saved_split(disk)
        if saved_as and str(saved_as) != split:
            raise UserError(f"{disk} is one saved split ({saved_as!r}), not {split!r}: task {task.name} "
                            f"{_role(task, split)} the {split!r} split; save a DatasetDict holding it there")
        return disk, None
    if _savedkind_of(os.path.join(disk, split)) == "Dataset":
        return os.path.join(disk, split), None
    raise UserError(f"{disk}: not a saved dataset (no dataset_dict.json or state.json; it holds {_listing(disk)}); "
                    f"save one there with datasets' save_to_disk, or remove the folder to read "
                    f"{task.name}/{split}.{_PATTERN} files")


def _saved_split(folder):
    """The split name a lone saved Dataset was saved as (its state.json's _split), or None; a UserError when
    its state.json cannot be read."""
    try:
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
            return json.load(f).get("_split")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{folder}/state.json is corrupt ({type(e).__name__}: {_first_line(e)}); save the dataset "
                        f"again with save_to_disk") from None


def _empty_saved(folder):
    """The columns of a saved Dataset that holds no rows (datasets 5 cannot load one back), else None."""
    try:
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
            if json.load(f).get("_data_files") != []:
                return None
        with open(os.path.join(folder, "dataset_info.json"), encoding="utf-8") as f:
            return list(json.load(f).get("features") or {})
    except (OSError, ValueError, AttributeError):
        return None


def _read_disk(task, folder, split, where):
    empty = _empty_saved(os.path.join(folder, split) if split else folder)
    if empty is not None:
        _check_columns(task, where, empty, "has columns")
        return []
    import datasets

    try:
        ds = datasets.load_from_disk(folder)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        columns = ds.column_names
    except Exception as e:  # noqa: BLE001 - a broken saved dataset fails in many ways
        raise UserError(f"{folder}: cannot read the saved dataset ({type(e).__name__}: {_first_line(e)}); it may be "
                        f"incomplete: save it again with save_to_disk") from None
    _check_columns(task, where, columns, "has columns")
    return ds.to_list()


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
        rows = _read_disk(task, folder, sub, describe(source))
        if sub is None and _savedkind_of(folder) == "Dataset" and _saved_split(folder) is None:
            source["every_split"] = True  # one Dataset saved without a split name: said wherever the source is
        return rows, source, None, "the saved split has no rows"
    if found[0] == "file":
        rows, lines, empty = _read_file(found[1], task)
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
            tried.append(f"hub {hub_id} ({type(e).__name__}: {_first_line(e)[:120]})")
        else:
            source = {"source": "hub", "hub_id": hub_id, "config": config, "split": split}
            if getattr(ds, "column_names", None) is not None:
                _check_columns(task, describe(source), ds.column_names, "has columns")
            return list(ds), source, None, "the split has no rows"
    else:
        tried.append(f"hub {hub_id} (offline or unreachable)")
    raise UserError(_no_data(task, data_root, split, tried))


def load_rows(task, data_root, split):
    """Raw rows of one split of a task, and where they came from: {"source": "disk_datasets" | "file" | "hub",
    "path" or "hub_id"/"config", "split"}. data_root "" searches as the original did (module docstring)."""
    rows, source, _, _ = read_rows(task, data_root, split)
    return rows, source


def reasons(dropped):
    return "; ".join(f"{n}: {why}" for why, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])))


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
        text += f" ({n} of {source.get('rows', '?')} rows dropped; {reasons(source['dropped'])})"
    return text
