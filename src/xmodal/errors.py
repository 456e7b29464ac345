"""Error types and their one-line form.

`UserError` is a mistake in the user's input (config, data, names): the CLI prints it and exits
with code 2. A run that fails on its own (a NaN loss, a diverged alignment) raises a
`RunFailed`: `fit` records it as a failed run and the CLI exits with code 1. Numerical code
raises `ValueError`; the layer that reads user input turns it into a `UserError`.
"""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints the message and exits with code 2."""


START_OVER = "rerun with --force (or delete the run folder) to start this run over"


class Stopped(KeyboardInterrupt):
    """A run stopped on request (SIGTERM) after an epoch, with its resume snapshot written."""


class RunFailed(RuntimeError):
    """A run that cannot finish: stored with status `failed`, exit code 1."""


class TrainingDiverged(RunFailed):
    """The fine-tuning loss became NaN or inf."""


class AlignmentDiverged(RunFailed):
    """The alignment objective became NaN or inf."""


def one_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, at most `limit` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= limit else out[: limit - 3] + "..."
