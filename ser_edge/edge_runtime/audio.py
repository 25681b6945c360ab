"""Audio in: one module, one policy, shared by training and inference.

file -> :func:`load_audio` (soundfile decode, float32, mono mix-down, checks)
     -> :func:`to_model_rate` (polyphase resampling to the feature sample rate)
     -> :func:`split_windows` (fixed-length model windows)

Window policy (documented once, here):

* a clip no longer than one window (``FeatureConfig.clip_s``, 3.0 s) is zero-padded
  symmetrically so the audio sits in the centre of the window;
* a longer clip is covered by windows starting at ``0, hop, 2*hop, ...`` (default hop
  1.0 s) that fit inside the clip, plus one final window aligned to the clip's end when
  the last regular window stops short of it. Every sample is in at least one window, no
  window is padded, and the clip-level prediction is the mean of the window
  probabilities.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf

from ser_edge.edge_runtime.decoder_noise import decoder_stderr_filtered
from ser_edge.edge_runtime.errors import (
    AudioFileNotFoundError,
    AudioTooLongError,
    AudioTooShortError,
    CorruptAudioError,
    EmptyAudioError,
    NonFiniteAudioError,
    NotAudioError,
    SampleRateError,
    SilentAudioError,
)
from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.edge_runtime.resample import resample_poly

MIN_SAMPLE_RATE = 1_000  # Hz: below this nothing of speech is left
MAX_SAMPLE_RATE = 384_000  # Hz: the highest rate common audio hardware records
# libsndfile's limit (SF_MAX_CHANNELS). An array (n, c) with more columns than this and than
# rows is channels-first audio, (channels, samples), and is refused with that said.
MAX_CHANNELS = 1024
MAX_DURATION_S = 600.0  # default limit on clip length (10 min)
# Default minimum clip length: about one syllable. Anything shorter holds no speech to
# classify, yet the model would still return confident-looking probabilities for it.
MIN_DURATION_S = 0.2
DEFAULT_HOP_S = 1.0  # hop between sliding windows on long clips
# What a directory is searched for. libsndfile (bundled with soundfile >= 0.12) decodes
# all of them; it recognises WAV, FLAC and Ogg by their headers, MP3 by its extension.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
MP3_EXTENSION = ".mp3"
SUPPORTED_FORMATS = "WAV, FLAC, Ogg Vorbis/Opus or MP3"
# libsndfile's ways of saying "this is no audio I can read". "does not exist" comes for
# an existing file whose extension picked a decoder (x.mp3 holding text), so it is
# checked only after the path was found to exist.
_NOT_AUDIO_PHRASES = (
    "format not recognised",
    "unknown format",
    "not a valid",
    "unimplemented format",
    "does not exist or is not a regular file",
)

# Kaiser window of the anti-aliasing filter. scipy's resample_poly default (beta 5.0)
# leaves aliases at about -50 dB; beta 8.0 keeps them below -60 dB (tests/test_audio.py).
RESAMPLE_KAISER_BETA = 8.0

AudioSource = Union[str, os.PathLike, BinaryIO]


@dataclasses.dataclass(frozen=True)
class Audio:
    """Decoded mono audio: float32 samples in [-1, 1] (for integer formats) and their rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def _name(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


def check_signal(
    samples: np.ndarray,
    sample_rate: int,
    *,
    name: str | None = None,
    max_duration_s: float | None = MAX_DURATION_S,
    min_duration_s: float | None = MIN_DURATION_S,
) -> np.ndarray:
    """Validate raw samples ``(n,)`` or ``(n, channels)`` and return them as mono float32.

    ``max_duration_s`` / ``min_duration_s`` bound the clip length (``None``: no bound)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise SampleRateError(f"sample rate must be a whole number of Hz, got {sample_rate!r}", path=name)
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise SampleRateError(
            f"sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
            path=name,
        )
    samples = to_mono(samples, name=name)
    if samples.size == 0:
        raise EmptyAudioError("audio has zero samples", path=name)
    if max_duration_s is not None and samples.size > max_duration_s * sample_rate:
        raise AudioTooLongError(
            f"audio is {samples.size / sample_rate:.1f} s long, over the {max_duration_s:g} s limit",
            path=name,
        )
    if min_duration_s is not None and samples.size < min_duration_s * sample_rate:
        raise AudioTooShortError(
            f"audio is {samples.size / sample_rate:.3f} s long, under the {min_duration_s:g} s minimum",
            path=name,
        )
    samples = samples.astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise NonFiniteAudioError("audio contains NaN or infinite samples", path=name)
    if not samples.any():
        raise SilentAudioError("audio is all zeros (digital silence)", path=name)
    return samples


def to_mono(samples: np.ndarray, *, name: str | None = None, max_channels: int = MAX_CHANNELS) -> np.ndarray:
    """``(n,)`` or ``(n, channels)`` samples as ``(n,)``: the mean of the channels.

    An array with more columns than rows and than ``max_channels`` is channels-first audio
    ``(channels, samples)``: refused with that said, never read as ``n`` channels."""
    samples = np.asarray(samples)
    if samples.ndim == 2 and samples.shape[1] > max(samples.shape[0], max_channels):
        raise NotAudioError(f"got shape {samples.shape}, more channels than samples: expected (samples, channels) "
                            "as soundfile reads them; pass the transpose of channels-first audio", path=name)
    if samples.ndim == 2:
        return samples.mean(axis=1, dtype=np.float64) if samples.shape[1] > 1 else samples[:, 0]
    if samples.ndim != 1:
        raise NotAudioError(f"expected (samples,) or (samples, channels), got {samples.shape}", path=name)
    return samples


def load_audio(
    source: AudioSource,
    *,
    max_duration_s: float | None = MAX_DURATION_S,
    min_duration_s: float | None = MIN_DURATION_S,
) -> Audio:
    """Decode an audio file (``SUPPORTED_FORMATS``; path or binary file object) to checked mono float32."""
    if not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
        raise TypeError(f"expected a path or a binary file object, got {type(source).__name__}")
    name = _name(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            if os.path.islink(source):
                raise AudioFileNotFoundError(f"broken link (to {os.readlink(source)})", path=name)
            raise AudioFileNotFoundError("no such file", path=name)
        if os.path.isdir(source):
            raise NotAudioError("is a directory, not an audio file", path=name)
        if os.path.getsize(source) == 0:
            raise EmptyAudioError("file is empty (0 bytes)", path=name)
    # Only MP3 decoding (a .mp3 path, or a stream, whose format is not known yet) can
    # print libmpg123's notes to stderr; WAV/FLAC/Ogg paths skip the redirection.
    may_be_mp3 = not isinstance(source, (str, os.PathLike)) or os.fspath(source).lower().endswith(MP3_EXTENSION)
    noise = decoder_stderr_filtered() if may_be_mp3 else contextlib.nullcontext()
    try:
        with noise, sf.SoundFile(source) as handle:
            sample_rate = handle.samplerate
            if max_duration_s is not None and handle.frames > max_duration_s * max(sample_rate, 1):
                raise AudioTooLongError(
                    f"audio is {handle.frames / sample_rate:.1f} s long, "
                    f"over the {max_duration_s:g} s limit",
                    path=name,
                )
            samples = handle.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        text = str(exc).lower()
        if any(phrase in text for phrase in _NOT_AUDIO_PHRASES):
            raise NotAudioError(f"not a supported audio file ({SUPPORTED_FORMATS})", path=name) from exc
        raise CorruptAudioError(f"cannot decode audio ({exc.error_string})", path=name) from exc
    except (sf.SoundFileError, RuntimeError, EOFError) as exc:
        raise CorruptAudioError(f"cannot decode audio ({exc})", path=name) from exc
    mono = check_signal(samples, sample_rate, name=name, max_duration_s=max_duration_s, min_duration_s=min_duration_s)
    return Audio(mono, int(sample_rate))


def to_model_rate(samples: np.ndarray, sample_rate: int, config: FeatureConfig) -> np.ndarray:
    """Resample mono float32 audio to ``config.sample_rate`` (polyphase FIR, Kaiser window)."""
    return resample_poly(samples, config.sample_rate, int(sample_rate), RESAMPLE_KAISER_BETA)


def window_starts(n_samples: int, config: FeatureConfig, hop_s: float = DEFAULT_HOP_S) -> list[int]:
    """Start sample of every window of a clip of ``n_samples`` (see the module's policy)."""
    if hop_s <= 0:
        raise ValueError(f"hop_s must be positive, got {hop_s}")
    length = config.n_samples
    if n_samples <= length:
        return [0]
    hop = max(1, int(round(hop_s * config.sample_rate)))
    starts = list(range(0, n_samples - length + 1, hop))
    if starts[-1] != n_samples - length:
        starts.append(n_samples - length)
    return starts


def fit_to_window(samples: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Centre a clip of at most one window in a zero-padded window of ``config.n_samples``."""
    length = config.n_samples
    if len(samples) > length:
        raise ValueError(f"clip has {len(samples)} samples, more than one window ({length})")
    left = (length - len(samples)) // 2
    return np.pad(samples, (left, length - len(samples) - left))


def split_windows(
    samples: np.ndarray, config: FeatureConfig, hop_s: float = DEFAULT_HOP_S
) -> tuple[np.ndarray, np.ndarray]:
    """Cut audio at the model rate into windows: ``(windows (w, n_samples), starts_s (w,))``."""
    length = config.n_samples
    if len(samples) <= length:
        return fit_to_window(samples, config)[None, :], np.zeros(1)
    starts = window_starts(len(samples), config, hop_s)
    windows = np.stack([samples[start : start + length] for start in starts])
    return windows.astype(np.float32, copy=False), np.asarray(starts) / config.sample_rate
