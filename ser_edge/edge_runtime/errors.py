"""Typed errors of the edge runtime. Library code raises these; only the CLI prints them.

Every message names the file (when there is one) and the problem in one line.
"""

from __future__ import annotations


class SerEdgeError(Exception):
    """Base class of every error ser-edge raises on bad input."""

    def __init__(self, problem: str, *, path: str | None = None) -> None:
        self.problem = problem
        self.path = path
        super().__init__(f"{path}: {problem}" if path else problem)


class AudioError(SerEdgeError):
    """The audio cannot be used (missing, unreadable, empty, silent, ...)."""


class AudioFileNotFoundError(AudioError):
    """The path does not exist."""


class NotAudioError(AudioError):
    """The file exists but is not a format soundfile can decode (or is a directory)."""


class CorruptAudioError(AudioError):
    """The file looks like audio but is truncated or corrupt."""


class EmptyAudioError(AudioError):
    """The audio has zero samples."""


class SilentAudioError(AudioError):
    """Every sample is exactly zero: there is nothing to classify."""


class NonFiniteAudioError(AudioError):
    """The audio holds NaN or infinite samples."""


class SampleRateError(AudioError):
    """The sample rate is outside the supported range."""


class AudioTooLongError(AudioError):
    """The clip is longer than the configured limit."""


class AudioTooShortError(AudioError):
    """The clip is shorter than the configured minimum: too short to hold speech."""


class ModelError(SerEdgeError):
    """The ONNX model is missing, unreadable, or its metadata does not match its graph."""
