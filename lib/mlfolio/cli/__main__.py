"""``python -m mlfolio.cli``: the mlfolio command."""

import sys

from mlfolio.cli import main

if __name__ == "__main__":
    sys.exit(main())
