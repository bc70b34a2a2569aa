"""Errors that describe bad user input (a file, a config, a dataset) rather than a bug.

The CLI prints any `UserError` as one line and exits non-zero; everything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input the user can fix; `exit_code` is what the CLI exits with."""

    exit_code = 2
