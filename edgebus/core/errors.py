"""One user-facing error type: the CLI prints its message as a single line, no traceback."""


class EdgebusError(Exception):
    """Bad input or state the user can fix. The message names the file and what to do."""


def flag(name: str) -> str:
    """The command-line spelling of a setting, for a message that tells the user what to change:
    flag("int8_source") -> "--int8-source". The library names options only through this function, and
    tests/test_architecture.py checks that every name given to it is an option of the CLI, so a renamed
    option cannot leave a message pointing at a flag that no longer exists."""
    return "--" + name.replace("_", "-")
