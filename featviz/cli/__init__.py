"""The command line: one module per command over the Python API, shared options in
``common``.  ``featviz.cli.main`` is the entry point."""
from featviz.cli.main import main

__all__ = ["main"]
