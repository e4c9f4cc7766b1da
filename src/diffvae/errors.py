"""The one exception type a user sees: the CLI prints it as a single line and exits non-zero."""


class DiffvaeError(Exception):
    """A problem with the user's input (data, flags, run directory), reported as one line.

    Raise it with a message that says what is wrong and, where it helps, what to do instead.
    The CLI turns it into ``diffvae: error: <message>`` and exit code 2.
    """


class WriteError(DiffvaeError):
    """A file could not be written (disk full, no permission, ...): what comes after it cannot succeed either."""


def one_line(message: str) -> str:
    """``message`` on one line: control characters (a newline or escape in a path, ...) escaped as repr does."""
    if not any(ord(c) < 32 or ord(c) == 127 for c in message):
        return message
    return "".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 else c for c in message)
