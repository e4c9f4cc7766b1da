"""The one exception type a user sees: the CLI prints it as a single line and exits non-zero."""


class DiffvaeError(Exception):
    """A problem with the user's input (data, flags, run directory), reported as one line.

    Raise it with a message that says what is wrong and, where it helps, what to do instead.
    The CLI turns it into ``diffvae: error: <message>`` and exit code 2.
    """
