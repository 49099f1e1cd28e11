"""``python -m physscale``: the command line (see [`physscale.cli`][physscale.cli])."""

import sys

from physscale.cli import main

if __name__ == "__main__":
    sys.exit(main())
