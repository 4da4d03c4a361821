"""The one exception type for failures a user can cause and fix.

The CLI prints it as a single ``error: ...`` line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class CnnvitError(Exception):
    """A user-facing error whose message names the cause and the fix."""


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
