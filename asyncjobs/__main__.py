"""``python -m asyncjobs`` runs the CLI."""

from asyncjobs._cli import main

main()
