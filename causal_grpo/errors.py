"""User-facing errors: the CLIs print these as one line and exit with code 2."""


class UserError(ValueError):
    """Bad input from the user (flags, files, paths); the message names the problem."""
