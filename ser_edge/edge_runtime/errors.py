"""Typed errors of the edge runtime. Library code raises these; only the CLI prints them.

Every message names the file (when there is one) and the problem in one line. Each class
has a ``code``: a stable snake_case name of the problem for programs (the CLI's JSON
``error_code``), which keeps its value when a message is reworded.
"""

from __future__ import annotations


class SerEdgeError(Exception):
    """Base class of every error ser-edge raises on bad input."""

    code = "error"

    def __init__(self, problem: str, *, path: str | None = None) -> None:
        self.problem = problem
        self.path = path
        super().__init__(f"{path}: {problem}" if path else problem)


class AudioError(SerEdgeError):
    """The audio cannot be used (missing, unreadable, empty, silent, ...)."""

    code = "audio"


class AudioFileNotFoundError(AudioError):
    """The path does not exist."""

    code = "not_found"


class NotAudioError(AudioError):
    """The file exists but is not a format soundfile can decode (or is a directory)."""

    code = "not_audio"


class CorruptAudioError(AudioError):
    """The file looks like audio but is truncated or corrupt."""

    code = "corrupt"


class EmptyAudioError(AudioError):
    """The audio has zero samples."""

    code = "empty"


class SilentAudioError(AudioError):
    """Every sample is exactly zero: there is nothing to classify."""

    code = "silent"


class NonFiniteAudioError(AudioError):
    """The audio holds NaN or infinite samples."""

    code = "non_finite"


class SampleRateError(AudioError):
    """The sample rate is outside the supported range."""

    code = "sample_rate"


class AudioTooLongError(AudioError):
    """The clip is longer than the configured limit."""

    code = "too_long"


class AudioTooShortError(AudioError):
    """The clip is shorter than the configured minimum: too short to hold speech."""

    code = "too_short"


class ModelError(SerEdgeError):
    """The ONNX model is missing, unreadable, or its metadata does not match its graph."""

    code = "model"
