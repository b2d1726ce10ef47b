"""``python -m asyncjobs`` runs the CLI."""

from asyncjobs.cli import main

main()
