"""Errors meant for a person: what went wrong, where, and what to do.

The CLI prints the message of any CompressError on one line and exits with its code,
without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CompressError(Exception):
    """A failure the user can act on. `exit_code` is what the CLI returns."""

    exit_code = 1


class RecipeError(CompressError):
    """The recipe cannot be read or is not valid (exit 2, like a usage error)."""

    exit_code = 2


class SourceError(CompressError):
    """A model or data source cannot be found or loaded."""


class StageError(CompressError):
    """A stage failed for a reason the user can fix (parity, quality, provider...)."""


class LockedError(CompressError):
    """Another compress process holds the run directory."""
