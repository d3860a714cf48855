"""Error types that map to the CLI's exit codes (DESIGN §4)."""


class UserError(Exception):
    """Bad input: the CLI prints the one-line message and exits with code 2.

    Raised before anything is written, so that bad input never leaves a run behind.
    """

    exit_code = 2


class TaskFailed(Exception):
    """A stage item failed: exit code 1, the message names stage, index and log file."""

    exit_code = 1
