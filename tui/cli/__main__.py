"""`python -m trialdeck.tui.cli ...` is the `trialdeck` command (tests and benchmarks use it)."""

from trialdeck.tui.cli import main

main()
