"""`python -m xmodal.cli`: the `xmodal` command."""

import sys

from . import main

sys.exit(main())
