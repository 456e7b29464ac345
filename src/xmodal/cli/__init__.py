"""Command-line interface: `xmodal tasks | fit | baseline | predict | distance | study ... |
report | export`. `parser` builds the arguments, `commands` runs them; `main` turns every
user mistake into one line `xmodal: error: ...` and exit code 2 (a run that fails, e.g. NaN
loss, exits 1; SIGTERM on fit 143; Ctrl-C 130; a closed pipe 141).
"""

from __future__ import annotations

import argparse  # noqa: F401 - part of this module's namespace (tests walk its sub-parsers)
import os
import sys
from typing import Optional

from ..errors import Stopped, UserError
from .commands import COMMANDS
from .parser import build_parser, join_negative_values, overrides_from_args

__all__ = ["COMMANDS", "build_parser", "join_negative_values", "main", "overrides_from_args"]


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU spinning threads
    # slowed OTDD and AdamW steps several-fold (docs/benchmarks.md). Set it yourself to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()   # inside the try: a closed pipe is caught below, not at exit
        return code
    except UserError as exc:
        print(f"xmodal: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"xmodal: {exc}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("xmodal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `xmodal tasks --json | head`: the reader left; stop quietly
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
