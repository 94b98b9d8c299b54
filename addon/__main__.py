"""python -m backorigin: the same as the `backorigin` command."""

import sys

from backorigin.cli import main

sys.exit(main())
