"""`python -m xmodal`: the `xmodal` command."""

import sys

from .cli import main

sys.exit(main())
