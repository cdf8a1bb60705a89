"""What every script shares, on the ground floor: the user's mistakes told as one line with exit code 2, the
command line parser that does so, and files written whole with the umask's permissions.

Imports nothing of the project, neither torch nor transformers, and changes nothing when imported."""

import argparse
import json
import os
import stat
import sys
import tempfile

USER_ERROR = 2  # exit code of a mistake in the user's input (one line on stderr)
RESUMABLE = 75  # exit code of a run stopped on request after saving a checkpoint: run it again to continue
INTERRUPTED = 130  # exit code after Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A mistake in the user's input: the scripts print it as one line and exit with code 2."""


def run_main(main):
    """Run a script's main(): a UserError becomes one line on stderr and exit code 2, never a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes (an unknown flag, a bad choice, an ambiguous abbreviation) are UserErrors: one
    line, exit code 2. --help prints each flag's default once (HelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(f"{self.prog}: {' '.join(message.split())}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds '(default: X)' to a flag's help unless the help already speaks of its default or there is none
    to show (None, False, SUPPRESS); lists print space-separated, as they are typed."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS \
                or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


# ----------------------------------------------------------------------------------------------------
# Files: written whole or not at all, readable by colleagues


def umask_mode():
    """What the umask leaves of 0666: the mode open() gives a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def file_mode(path):
    """The permission bits a file written at `path` gets: those of the file it replaces, else what the umask
    leaves of 0666 (as open() would give), so that colleagues on a shared machine can read the results."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return umask_mode()


def follow_umask(folder):
    """Give every file under `folder` the umask's mode: libraries that write through a temporary file
    (safetensors 0.8 among them) leave 0600, which colleagues on a shared machine cannot read."""
    mode = umask_mode()
    for where, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(where, name)
            if os.path.isfile(path) and not os.path.islink(path) and stat.S_IMODE(os.stat(path).st_mode) != mode:
                os.chmod(path, mode)


def atomic_write(path, data):
    """Write str/bytes to `path` through a temporary file and a rename: a reader never sees half a file. The
    file gets the mode of the file it replaces, or the umask's (file_mode), not the temporary file's 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    try:
        os.fchmod(fd, file_mode(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    """`obj` as indented JSON, written whole (atomic_write)."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path, rows):
    """One JSON object a line, written whole (atomic_write)."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path, what="file"):
    """The JSON in `path`; a missing or corrupt file is a UserError naming `what` it is and the path."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is corrupt ({e})") from None


def read_jsonl(path):
    """The rows of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
