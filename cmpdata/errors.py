"""The errors the project expects, in two kinds; anything else is a bug and keeps its traceback.

- :class:`UsageError`: a user's mistake found before any work is done (a bad option, a path
  that cannot be used). The commands print its one line and exit with status 2.
- :class:`CmpDataError` (and its other subclasses): an expected failure at run time (damaged
  data, a failed write, a run stopped half way). The commands print its one line, naming the
  file and what to do next, and exit with status 1; what was finished is kept.

Both name the file and the reason. Errors about one file (:class:`FileError` subclasses) keep
``path`` and ``reason`` as their arguments, so they survive pickling: a DataLoader worker or a
Ray task can raise one and the parent rebuilds the same error. Library callers may also catch
a bad option value as ``ValueError``: :class:`ConfigError` is both.
"""

from __future__ import annotations


class CmpDataError(Exception):
    """Base class of every expected, user-facing failure; on its own, a run-time failure."""

    exit_code = 1


class UsageError(CmpDataError):
    """A user's mistake (a bad option, an unusable path), found before any work was done."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """An option or configuration value that is out of range or of the wrong kind."""


class FileError(CmpDataError):
    """A failure about one file: prints as ``path: reason``."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        # (path, reason) as the arguments: pickling rebuilds the error with them.
        super().__init__(self.path, reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SourceError(FileError, UsageError):
    """A source could not be found, opened or used (missing, unreadable, too small, too short).

    Raised to a command, it is an unusable input; the pipeline records it per source instead.
    """


class DecodeError(SourceError):
    """Frames could not be decoded from a source (corrupt, truncated, not a video)."""


class DecodeTimeout(DecodeError):
    """No frame arrived from the decoder within the time limit; the decoder was killed."""


class FlowWeightsError(UsageError):
    """Weights for a learned flow backend are missing or do not fit the model."""


class RunStopped(CmpDataError):
    """A run stopped part-way (a failed write: disk full, file-size limit); what it finished
    is kept, and the same command, run again, finishes the rest."""
