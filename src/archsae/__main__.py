"""`python -m archsae` (and `torchrun -m archsae`) runs the command-line tool."""

from .cli import main

main()
