"""``python -m physscale``: the command line."""

import sys

from physscale.cli import main

sys.exit(main())
