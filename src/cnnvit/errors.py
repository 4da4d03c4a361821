"""The one exception type for failures a user can cause and fix.

The CLI prints it as a single ``error: ...`` line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class CnnvitError(Exception):
    """A user-facing error whose message names the cause and the fix."""
