"""`python -m secateurs` runs the CLI."""

from secateurs.cli import main

main()
