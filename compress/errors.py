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


class InputError(CompressError):
    """A path or value the user gave cannot be used as it is (exit 2, like a usage error): an output that exists
    and is not compress's, a folder where a file is expected, a missing input."""

    exit_code = 2


class SourceError(InputError):
    """A model or data source cannot be found, is incomplete, or holds values of the wrong type (exit 2)."""


class StageError(CompressError):
    """A stage failed for a reason the user can fix (parity, quality, provider...)."""


class LockedError(CompressError):
    """Another compress process holds the run directory."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs (temporaries removed,
    children ended); `signal` is the signal's number. `stage` is set by the runner to where it stopped."""

    def __init__(self, signal: int):
        super().__init__(signal)
        self.signal = signal
