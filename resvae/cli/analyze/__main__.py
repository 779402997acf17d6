"""`python -m resvae.cli.analyze`: the resvae-analyze console script."""

import sys

from resvae.cli.analyze.cli import main

if __name__ == "__main__":
    sys.exit(main())
