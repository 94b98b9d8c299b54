"""python -m backorigin: the same as the `backorigin` command."""

import sys

from backorigin.tools.cli import main

sys.exit(main())
