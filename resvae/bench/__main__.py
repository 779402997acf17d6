"""`python -m resvae.bench`: the same as the resvae-bench console script."""

from resvae.bench.cli import main

main()
