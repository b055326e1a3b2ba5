"""One exception type for every mistake a user can fix.

The CLI turns :class:`FeatvizError` into a one-line message and exit code 2;
the Python API lets it propagate so notebooks see the same message.
"""
from __future__ import annotations


class FeatvizError(Exception):
    """A problem with the user's input (spec, file, model) that names its fix."""

    exit_code = 2


class Interrupted(FeatvizError):
    """Ctrl-C during a long run; the message says how to resume."""

    exit_code = 130
