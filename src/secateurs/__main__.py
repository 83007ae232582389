"""`python -m secateurs` runs the CLI."""

from secateurs.front.cli import main

main()
