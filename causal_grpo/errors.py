"""User-facing errors: the CLIs print these as one line (exit code 2 for bad input, 1 for a
run that cannot go on)."""


class UserError(ValueError):
    """Bad input from the user (flags, files, paths); the message names the problem."""


class RunFailure(RuntimeError):
    """The run cannot go on (e.g. a batch keeps killing its workers); the message names why.
    The CLIs print it as one line and exit with code 1."""
