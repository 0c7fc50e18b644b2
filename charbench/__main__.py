"""``python -m charbench`` runs the CLI."""

from charbench.cli import run

run()
