"""Exceptions for expected failures.

Every expected failure (a missing file, a corrupt video, a clip shorter than the frame gap)
raises a subclass of :class:`CmpDataError` whose message names the file and the reason. The
command line prints that message without a traceback and the pipeline records it; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CmpDataError(Exception):
    """Base class of every expected, user-facing failure."""


class SourceError(CmpDataError):
    """A source could not be found, opened or used (missing, unreadable, too small, too short)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DecodeError(SourceError):
    """Frames could not be decoded from a source (corrupt, truncated, not a video)."""


class DecodeTimeout(DecodeError):
    """No frame arrived from the decoder within the time limit; the decoder was killed."""


class FlowWeightsError(CmpDataError):
    """Weights for a learned flow backend are missing or do not fit the model."""


class RunStopped(CmpDataError):
    """A run stopped part-way (a failed write: disk full, file-size limit); what it finished
    is kept, and the same command, run again, finishes the rest."""
