"""One user-facing error type: the CLI prints its message as a single line, no traceback."""


class EdgebusError(Exception):
    """Bad input or state the user can fix. The message names the file and what to do."""
