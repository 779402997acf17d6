"""`python -m resvae.cli.bench`: the same as the resvae-bench console script."""

from resvae.cli.bench.cli import main

main()
