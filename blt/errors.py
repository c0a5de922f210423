"""User-facing errors: the CLI turns these into one line on stderr and exit status 2."""


class UserError(Exception):
    """Bad input from the user (path, config, checkpoint, argument). Never a bug of ours."""
