"""The command line: the typer app (``autoseg``), one module per command group, demo and benchmark.

``autoseg.cli:main`` is the console entry point; ``python -m autoseg.cli`` (for torchrun) runs it
too.
"""

from autoseg.cli.commands import app, main

__all__ = ["app", "main"]
