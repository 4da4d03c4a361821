"""The one exception type for failures a user can cause and fix, and how signals end a command.

The CLI prints a :class:`CnnvitError` as a single ``error: ...`` line and exits non-zero;
anything else is a bug and keeps its traceback. SIGTERM and SIGHUP are turned into
:class:`Interrupted` (a KeyboardInterrupt, like SIGINT), so that every ``with`` block unwinds:
temporary files and folders are removed and nothing half-written is left behind.
"""

from __future__ import annotations

import signal


class CnnvitError(Exception):
    """A user-facing error whose message names the cause and the fix."""


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop (SIGINT, SIGTERM, SIGHUP)."""


def raise_on_signals() -> None:
    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def positive_int(text: str) -> int:
    """An argparse type for counts (threads, steps): a whole number of at least 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1: give at least 1")
    return value


def first_line(exc: BaseException, limit: int = 120) -> str:
    """An exception's first line, for one-line messages; its type when it has no text."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def refused_pickle(exc: Exception) -> str:
    """What a weights-only ``torch.load`` refused, in a few words: torch's own message is a page
    of advice on how to load the file unsafely, which is exactly what must not be done here."""
    import re

    text = str(exc)
    if m := re.search(r"GLOBAL ([\w.]+)", text):  # "Unsupported global: GLOBAL x", "unsupported GLOBAL x"
        return f"a pickled {m.group(1)}"
    if m := re.search(r"WeightsUnpickler error:\s*([^\n]+)", text):
        return f"a pickle the weights-only loader refuses: {m.group(1).strip()[:100]}"
    return "an object that cannot be loaded without running code"
