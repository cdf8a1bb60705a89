"""The bottom layer every other module stands on: the user's mistakes, reported as one line with exit code 2,
and whether the Hugging Face hub can be reached. Imports nothing of the project, and neither torch nor
transformers."""

import argparse
import functools
import os
import socket
import sys
import threading


class UserError(Exception):
    """A mistake in the user's input: the scripts print it as one line and exit with code 2."""


def run_main(main):
    """Run a script's main(): a UserError becomes one line on stderr and exit code 2, never a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


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
