"""User-facing error type: a mistake in the user's input (config, data, names)."""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints the message and exits with code 2."""
