"""Reading one data file of a task's split (JSON Lines, JSON, CSV, parquet) or a folder saved by datasets'
save_to_disk, every fault in it told in one line naming the file, the line (or row) and the cause. Lines of a
file are numbered from 1 (as editors number them), rows from 0 (as datasets indexes them). Nothing is written
(csv is read with Python's csv module and parquet with pyarrow, so no datasets cache is made)."""

import codecs
import csv
import difflib
import io
import json
import os

from prompts import kind_of, needs
from utils import UserError


def first_line(error):
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:160]



def check_columns(task, where, columns, what="has columns", hint=""):
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


def decode(path, ext):
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


def read_jsonl(path, text):
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


def read_json(path, text):
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
                check_columns(task, path, header, "header has", hint)
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
        return UserError(f"{path}: not a readable parquet file ({type(e).__name__}: {first_line(e)}); it may be cut "
                         f"off, or not parquet")
    try:
        columns = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a broken file
        raise unreadable(e) from None
    check_columns(task, path, columns, "has columns")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001
        raise unreadable(e) from None


def read_file(path, task):
    """(rows, line numbers or None, what an empty result means) of one file; every fault is one UserError."""
    ext = path.rsplit(".", 1)[-1]
    if os.path.getsize(path) == 0:
        return [], None, "the file is empty (0 bytes)"
    if ext == "parquet":
        return _read_parquet(path, task), None, "the file has no rows"
    text = decode(path, ext)
    if not text.strip(" \t\r\n\ufeff"):
        return [], None, "the file is empty"
    if ext == "jsonl":
        rows, lines = read_jsonl(path, text)
        return rows, lines, "the file has no rows"
    if ext == "json":
        rows, columns = read_json(path, text)
        if columns is not None:
            check_columns(task, path, columns, "has columns")
        return rows, None, "the file has no rows"
    rows, lines = _read_csv(path, text, task)
    return rows, lines, "the file has a header and no rows"


def saved_kind_of(folder):
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        return "DatasetDict"
    return "Dataset" if os.path.isfile(os.path.join(folder, "state.json")) else None


def listing(folder, limit=5):
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "") or "nothing"


def saved_split(folder):
    """The split name a lone saved Dataset was saved as (its state.json's _split), or None; a UserError when
    its state.json cannot be read."""
    try:
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
            return json.load(f).get("_split")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{folder}/state.json is corrupt ({type(e).__name__}: {first_line(e)}); save the dataset "
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


def read_disk(task, folder, split, where):
    empty = _empty_saved(os.path.join(folder, split) if split else folder)
    if empty is not None:
        check_columns(task, where, empty, "has columns")
        return []
    import datasets

    try:
        ds = datasets.load_from_disk(folder)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        columns = ds.column_names
    except Exception as e:  # noqa: BLE001 - a broken saved dataset fails in many ways
        raise UserError(f"{folder}: cannot read the saved dataset ({type(e).__name__}: {first_line(e)}); it may be "
                        f"incomplete: save it again with save_to_disk") from None
    check_columns(task, where, columns, "has columns")
    return ds.to_list()
