"""`python -m oodbench` runs the CLI."""

from oodbench.cli import main

main()
