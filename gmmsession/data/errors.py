"""Errors raised for bad input: each names the file, particle or column at fault."""

from __future__ import annotations

__all__ = ["GmmsessionInputError", "SessionVersionError"]


class GmmsessionInputError(ValueError):
    """Input data (a star/cs file, a stack, a map, a session file) is unusable as given.

    The message names the file and, where it applies, the particle or column.
    """


class SessionVersionError(GmmsessionInputError):
    """A session file was written by a newer, incompatible gmmsession."""
