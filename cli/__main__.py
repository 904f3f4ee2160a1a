"""`python -m cli` and `torchrun -m cli`: the same entry point as the `llqa` console script."""

from cli import main

main()
