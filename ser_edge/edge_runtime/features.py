"""The log-mel front-end: the single definition of the model's input features.

Training (``ser_edge.train``) and inference (``ser_edge.edge_runtime``) both call
:func:`log_mel`; there is no second implementation. NumPy only (numpy >= 2 computes
float32 FFTs natively), vectorised over frames and over a batch of clips. SciPy is not
used at run time: ``scipy.fft`` would save about 1.5 ms per clip but costs 0.25 s of
import and 140 MB of install (benchmarks/README.md).

Choices (all fields of :class:`FeatureConfig`, written into every exported ONNX model):

* window: periodic Hann of ``n_fft`` samples (``win_length == n_fft``);
* centering: each frame is centred on ``t * hop_length``; the clip is zero-padded by
  ``n_fft // 2`` on both sides, so a clip of ``n_samples`` gives
  ``1 + n_samples // hop_length`` frames (librosa's ``center=True, pad_mode="constant"``);
* power spectrum ``|STFT|**2``, Slaney mel scale with Slaney area normalisation over
  ``[f_min_hz, f_max_hz]`` (librosa's default filterbank);
* decibels relative to the loudest time-frequency bin of the clip:
  ``10 * log10(max(S, amin)) - 10 * log10(max(S.max(), amin))``, floored at
  ``-top_db``. Every clip therefore spans ``[-top_db, 0]`` dB and the features are
  invariant to the input gain (for any clip whose peak mel power is above
  ``amin * 10**(top_db/10)`` = 1e-12, i.e. any recording louder than one 16-bit LSB).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from typing import Any, Mapping, NamedTuple

import numpy as np

from ser_edge.edge_runtime.errors import ModelError

# Defaults of the seed recipe, with their units.
SAMPLE_RATE = 48_000  # Hz
N_FFT = 1024  # samples per STFT frame (21.3 ms at 48 kHz)
HOP_LENGTH = 256  # samples between frames (5.3 ms at 48 kHz)
N_MELS = 128  # mel bins
CLIP_S = 3.0  # seconds of audio per model input
TOP_DB = 80.0  # dB: log floor below the clip's loudest bin
# Power floor before the log, only there to avoid log(0). Far below any real clip's peak
# (one 16-bit LSB gives a peak mel power near 1e-7), so the effective floor is always
# ``top_db`` below the clip's own peak and the features stay gain-invariant down to
# very quiet recordings. Safe in float32 (smallest normal 1.2e-38).
AMIN = 1e-20


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Everything that defines the model input. Stored in, and read back from, the ONNX."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    clip_s: float = CLIP_S
    f_min_hz: float = 0.0
    f_max_hz: float = SAMPLE_RATE / 2
    window: str = "hann"
    center: bool = True
    mel_scale: str = "slaney"
    power: float = 2.0
    amin: float = AMIN
    top_db: float = TOP_DB

    def __post_init__(self) -> None:
        if self.window != "hann" or self.mel_scale != "slaney" or self.power != 2.0:
            raise ValueError("only window='hann', mel_scale='slaney', power=2.0 are implemented")
        if not self.center:
            raise ValueError("only center=True is implemented")
        if not 0 <= self.f_min_hz < self.f_max_hz <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min_hz < f_max_hz <= sample_rate/2, got {self}")

    @property
    def n_samples(self) -> int:
        """Samples in one model input clip."""
        return int(round(self.clip_s * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """STFT frames in one model input clip (centred framing)."""
        return 1 + self.n_samples // self.hop_length

    @property
    def n_bins(self) -> int:
        """Frequency bins of the one-sided spectrum."""
        return self.n_fft // 2 + 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FeatureConfig":
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ModelError(f"feature config has unknown fields {unknown}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"invalid feature config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> "FeatureConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"feature config is not valid JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise ModelError("feature config must be a JSON object")
        return cls.from_dict(values)


# Slaney mel scale (Auditory Toolbox): linear below 1 kHz, logarithmic above.
SLANEY_HZ_PER_MEL = 200.0 / 3  # Hz per mel in the linear part
SLANEY_MIN_LOG_HZ = 1000.0  # where the log part starts
SLANEY_MIN_LOG_MEL = SLANEY_MIN_LOG_HZ / SLANEY_HZ_PER_MEL
SLANEY_LOGSTEP = np.log(6.4) / 27.0  # log-Hz per mel above 1 kHz


def _hz_to_mel(freq_hz: np.ndarray) -> np.ndarray:
    freq_hz = np.asarray(freq_hz, dtype=np.float64)
    mel = freq_hz / SLANEY_HZ_PER_MEL
    above = freq_hz >= SLANEY_MIN_LOG_HZ
    mel[above] = SLANEY_MIN_LOG_MEL + np.log(freq_hz[above] / SLANEY_MIN_LOG_HZ) / SLANEY_LOGSTEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    freq_hz = mel * SLANEY_HZ_PER_MEL
    above = mel >= SLANEY_MIN_LOG_MEL
    freq_hz[above] = SLANEY_MIN_LOG_HZ * np.exp(SLANEY_LOGSTEP * (mel[above] - SLANEY_MIN_LOG_MEL))
    return freq_hz


@functools.lru_cache(maxsize=8)
def mel_filterbank(config: FeatureConfig) -> np.ndarray:
    """(n_mels, n_bins) Slaney-normalised triangular filters; built once per config."""
    fft_freqs = np.linspace(0.0, config.sample_rate / 2, config.n_bins)
    mel_points = np.linspace(
        _hz_to_mel(np.array([config.f_min_hz]))[0],
        _hz_to_mel(np.array([config.f_max_hz]))[0],
        config.n_mels + 2,
    )
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=8)
def _window(config: FeatureConfig) -> np.ndarray:
    # Periodic Hann (scipy.signal.get_window("hann", n_fft, fftbins=True)).
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(config.n_fft) / config.n_fft)).astype(np.float32)
    window.setflags(write=False)
    return window


# The mel product is banded: each filter covers a few neighbouring FFT bins (1007 non-zero
# weights of 128 x 513), so ``log_mel`` multiplies groups of this many consecutive filters
# by only the bins the group covers: 9k multiply-adds per frame instead of 66k. Same sums
# as the dense product up to float32 rounding (the zeros are skipped, not approximated).
MEL_GROUP_SIZE = 8
# Each of those products is cut along time into calls of at most this many multiply-adds
# (m * n * k), the most OpenBLAS (numpy's BLAS in its Linux and Windows wheels; its wheels
# for macOS 14 and later use Accelerate, which this does not cover) computes on one thread
# (SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD = 65536 * 4, interface/gemm.c). Above it,
# the call goes to as many threads as there are cores, and two things follow: the sums
# come out in another order, so the features' bits depended on the machine's core count
# and on OPENBLAS_NUM_THREADS / OMP_NUM_THREADS; and a second thread has to be woken for
# each call, which with both cores busy elsewhere took a 3 s clip from 3.3 to 11.5 ms.
BLAS_ONE_THREAD_MAX_MNK = 65536 * 4


class _MelBand(NamedTuple):
    rows: slice  # mel filters of the group
    columns: slice  # their bins, as columns of the interleaved (re, im, ...) float32 spectrum
    weights: np.ndarray  # (filters, columns) float32, each weight twice (re, im)
    frames_per_call: int  # frames per matrix product (BLAS_ONE_THREAD_MAX_MNK)


@functools.lru_cache(maxsize=8)
def _mel_bands(config: FeatureConfig) -> tuple[_MelBand, ...]:
    """Banded form of :func:`mel_filterbank`, acting on the interleaved re/im spectrum.

    Columns index the complex64 spectrum viewed as float32 (re, im, re, im, ...): each
    weight is repeated for the real and the imaginary part, so the product of the squared
    view is the mel power.
    """
    weights = mel_filterbank(config)
    groups = []
    for first in range(0, config.n_mels, MEL_GROUP_SIZE):
        rows = slice(first, min(first + MEL_GROUP_SIZE, config.n_mels))
        used = np.flatnonzero(weights[rows].any(axis=0))
        lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
        band = np.ascontiguousarray(np.repeat(weights[rows, lo:hi], 2, axis=1))
        band.setflags(write=False)
        frames_per_call = max(1, BLAS_ONE_THREAD_MAX_MNK // band.size)
        groups.append(_MelBand(rows, slice(2 * lo, 2 * hi), band, frames_per_call))
    return tuple(groups)


# Rows per pass of ``log_mel`` on a batch. Per-row cost on the project's 2-core Xeon (idle,
# 3 s rows): 3.4 ms one row at a time, 3.6 two, 5.0 four, 6.6 all 24 or 58 at once: a
# row's complex spectrum (563 x 513) fits the cache, a batch's does not. Results are
# identical either way (every row is computed independently).
LOG_MEL_ROWS = 1


def log_mel(signal: np.ndarray, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Log-mel spectrogram of one clip ``(n,)`` or a batch ``(b, n)`` at ``config.sample_rate``.

    Returns float32 ``(n_mels, frames)`` or ``(b, n_mels, frames)``; a clip of exactly
    ``config.n_samples`` samples gives ``config.n_frames`` frames.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim not in (1, 2):
        raise ValueError(f"log_mel expects (n,) or (batch, n) samples, got shape {signal.shape}")
    batch = np.atleast_2d(signal)
    if len(batch) <= LOG_MEL_ROWS:
        db = _log_mel_rows(batch, config)
    else:
        db = np.concatenate([_log_mel_rows(batch[i : i + LOG_MEL_ROWS], config)
                             for i in range(0, len(batch), LOG_MEL_ROWS)])
    return db[0] if signal.ndim == 1 else db


# Scratch arrays of ``_log_mel_rows``, one set per thread, reused from call to call, and
# the FFT taken this many frames at a time. Whole-row temporaries (2.3 MB each for a 3 s
# row, including one numpy's rfft allocates inside) are above glibc's mmap threshold: each
# call paid their page faults, 4.3-6.5 ms per 3 s row instead of 3.0 ms in a process that
# computes nothing else. In blocks of 64 frames the FFT's own temporary stays small and the
# windowed block stays in cache: 1.7 ms for the FFT of a row against 1.8-3.4 ms whole.
FFT_BLOCK_FRAMES = 64
# Larger scratch arrays (one long signal passed whole, a big batch of rows) are allocated
# per call instead of kept: a thread keeps at most a few MB (3.1 MB for 3 s rows).
SCRATCH_MAX_BYTES = 8 * 2**20
_scratch = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """This thread's scratch array ``name``, reallocated only when its shape changes."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.shape != shape:
        buffer = np.empty(shape, dtype=dtype)
        if buffer.nbytes <= SCRATCH_MAX_BYTES:
            buffers[name] = buffer
        else:
            buffers.pop(name, None)
    return buffer


def _squared_spectrum(batch: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``(b, n)`` float32 samples -> ``(b, frames, 2 * n_bins)`` float32: re^2, im^2, ...

    A view of this thread's scratch spectrum: valid until the next call in the thread.
    """
    pad = config.n_fft // 2
    rows, n = batch.shape
    padded = _buffer("padded", (rows, n + 2 * pad), np.float32)
    padded[:, :pad] = 0.0
    padded[:, pad : pad + n] = batch
    padded[:, pad + n :] = 0.0
    frames = np.lib.stride_tricks.sliding_window_view(padded, config.n_fft, axis=-1)
    frames = frames[:, :: config.hop_length]  # (b, t, n_fft), a view
    n_frames = frames.shape[1]
    spectrum = _buffer("spectrum", (rows, n_frames, config.n_bins), np.complex64)
    windowed = _buffer("windowed", (rows, min(FFT_BLOCK_FRAMES, n_frames), config.n_fft), np.float32)
    window = _window(config)
    for start in range(0, n_frames, FFT_BLOCK_FRAMES):
        block = slice(start, min(start + FFT_BLOCK_FRAMES, n_frames))
        size = block.stop - block.start
        np.multiply(frames[:, block], window, out=windowed[:, :size])
        np.fft.rfft(windowed[:, :size], axis=-1, out=spectrum[:, block])
    squares = spectrum.view(np.float32)  # re, im, re, im, ...
    np.square(squares, out=squares)
    return squares


def _log_mel_rows(batch: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``(b, n)`` float32 samples -> ``(b, n_mels, frames)`` float32 dB (a new array)."""
    squares = _squared_spectrum(batch, config)
    n_frames = squares.shape[1]
    db = np.empty((len(batch), config.n_mels, n_frames), dtype=np.float32)
    for band in _mel_bands(config):  # mel power = filterbank @ (re^2 + im^2)
        for start in range(0, n_frames, band.frames_per_call):
            frames = slice(start, start + band.frames_per_call)
            spectrum = squares[:, frames, band.columns].transpose(0, 2, 1)
            np.matmul(band.weights, spectrum, out=db[:, band.rows, frames])
    return _power_to_db(db, config)


# Decibels per neper of power: ``10 * log10(p) == DB_PER_NATURAL_LOG * ln(p)``. NumPy's
# float32 ``log`` is vectorised (AVX2) and its ``log10`` is not: 0.12 against 0.46 ms for a
# 3 s clip's 72k mel values on the project's 2-core EPYC.
DB_PER_NATURAL_LOG = 10.0 / np.log(10.0)


def _power_to_db(db: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``(b, n_mels, frames)`` float32 mel power -> dB below each row's peak, in place."""
    np.maximum(db, np.float32(config.amin), out=db)
    np.log(db, out=db)
    peak = db.max(axis=(1, 2), keepdims=True)
    db -= np.maximum(peak, np.float32(np.log(config.amin)))
    db *= np.float32(DB_PER_NATURAL_LOG)
    np.maximum(db, np.float32(-config.top_db), out=db)
    return db


# The two halves of ``log_mel``, for training-time augmentation that edits the power
# spectrum between them (a pitch shift that keeps the formants). ``log_mel`` itself does not
# call them: its banded product never forms the power spectrum. A test checks that
# ``mel_db(power_spectrogram(x))`` equals ``log_mel(x)``.
def power_spectrogram(batch: np.ndarray, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """``(b, n)`` samples -> ``(b, frames, n_bins)`` float32 ``|STFT|**2`` (a new array)."""
    squares = _squared_spectrum(np.atleast_2d(np.asarray(batch, dtype=np.float32)), config)
    return squares[:, :, 0::2] + squares[:, :, 1::2]


def mel_db(power: np.ndarray, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """``(b, frames, n_bins)`` power spectrum -> ``(b, n_mels, frames)`` float32 log-mel."""
    mel = np.matmul(mel_filterbank(config), np.asarray(power, dtype=np.float32).transpose(0, 2, 1))
    return _power_to_db(np.ascontiguousarray(mel, dtype=np.float32), config)
