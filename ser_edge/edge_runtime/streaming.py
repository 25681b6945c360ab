"""Streaming: audio in chunks of any size at any rate, one prediction per hop.

:class:`StreamingClassifier` keeps a bounded buffer of input samples and emits the window
starting at ``k * hop`` as soon as every input sample that window depends on (including
the resampling filter's look-ahead) has arrived. :meth:`StreamingClassifier.flush` ends
the stream and emits what the offline policy adds at the end (the end-aligned window, or
the single centred window of a clip shorter than 3 s). The windows emitted over a whole
stream are the offline :meth:`EmotionClassifier.predict` windows of the same audio; a stream
shorter than the classifier's ``min_duration_s`` emits none (offline, it is an error).

Why this is exact: the polyphase resampler is a fixed FIR, so resampling a slice of the
input that starts at a multiple of ``down`` input samples and extends one filter length
beyond the outputs needed reproduces the full-signal outputs for those samples.
"""

from __future__ import annotations

import math

import numpy as np

from ser_edge.edge_runtime.audio import (
    DEFAULT_HOP_S,
    RESAMPLE_KAISER_BETA,
    check_signal,
    fit_to_window,
    to_mono,
    window_starts,
)
from ser_edge.edge_runtime.errors import NonFiniteAudioError
from ser_edge.edge_runtime.features import log_mel
from ser_edge.edge_runtime.resample import polyphase_bank, resample_poly
from ser_edge.edge_runtime.session import EmotionClassifier, Prediction, WindowPrediction, aggregate_windows


STREAM_NAME = "<stream>"  # what errors about pushed chunks name
# Chunks are short (a few ms may come as a handful of frames), so the file limit on channels
# cannot tell channels-first chunks apart. A chunk (n, c) with c above both n and this is
# refused as channels-first; 8 covers common interfaces and microphone arrays.
STREAM_MAX_CHANNELS = 8


class StreamingClassifier:
    """Feed ``push(chunk)``; get the windows completed by that chunk."""

    def __init__(self, classifier: EmotionClassifier, sample_rate: int, *, hop_s: float = DEFAULT_HOP_S) -> None:
        check_signal(np.ones(1, np.float32), sample_rate, max_duration_s=None, min_duration_s=None)  # validates the rate
        self.classifier = classifier
        self.sample_rate = int(sample_rate)
        self.hop_s = hop_s
        config = classifier.feature_config
        self._window = config.n_samples
        self._hop = max(1, int(round(hop_s * config.sample_rate)))  # model-rate samples
        divisor = math.gcd(config.sample_rate, self.sample_rate)
        self._up, self._down = config.sample_rate // divisor, self.sample_rate // divisor
        resampling = self._up * self._down > 1
        taps = polyphase_bank(self._up, self._down, RESAMPLE_KAISER_BETA)[0].shape[1] if resampling else 0
        self._margin = taps + self._down if resampling else 0  # input samples of filter support
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # input index of _buffer[0]
        self._received = 0  # input samples so far
        self._next = 0  # index of the next regular window
        self._emitted: list[WindowPrediction] = []
        self._closed = False

    # -- input -> model-rate samples ---------------------------------------------------

    def _inputs_needed(self, out_end: int) -> int:
        """Input samples that must have arrived before outputs ``< out_end`` are final."""
        return -(-out_end * self._down // self._up) + self._margin

    def _resampled(self, out_start: int, out_end: int, final: bool) -> np.ndarray:
        """Model-rate samples ``[out_start, out_end)`` as the offline resampler makes them."""
        if self._up == self._down == 1:
            return self._buffer[out_start - self._buffer_start : out_end - self._buffer_start]
        first_input = max(0, (out_start * self._down // self._up) - self._margin)
        first_input -= first_input % self._down
        last_input = self._received if final else min(self._received, self._inputs_needed(out_end) + self._margin)
        piece = self._buffer[first_input - self._buffer_start : last_input - self._buffer_start]
        offset = first_input * self._up // self._down
        resampled = resample_poly(piece, self._up, self._down, RESAMPLE_KAISER_BETA)
        if final:  # the offline signal ends here: its length is ceil(n_in * up / down)
            resampled = resampled[: -(-self._received * self._up // self._down) - offset]
        return resampled[out_start - offset : out_end - offset]

    def _trim(self) -> None:
        # Keep what the next regular window needs and what the end-aligned final window
        # may need: it starts after window `_next - 1` (else it would be a regular one).
        oldest_start = max(0, self._next - 1) * self._hop
        keep_from = max(0, (oldest_start * self._down // self._up) - 2 * self._margin)
        keep_from -= keep_from % max(self._down, 1)
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :]
            self._buffer_start = keep_from

    def _emit(self, starts: list[int], final: bool) -> list[WindowPrediction]:
        if not starts:
            return []
        windows = np.stack([self._resampled(s, s + self._window, final) for s in starts])
        probabilities = self.classifier.predict_features(log_mel(windows, self.classifier.feature_config))
        rate = self.classifier.feature_config.sample_rate
        out = self._aggregate(probabilities, [s / rate for s in starts], (max(starts) + self._window) / rate)
        self._emitted.extend(out.windows)
        return list(out.windows)

    # -- public API ----------------------------------------------------------------------

    def push(self, chunk: np.ndarray) -> list[WindowPrediction]:
        """Add samples ``(n,)`` or ``(n, channels)``; return the windows now complete."""
        if self._closed:
            raise RuntimeError("stream already flushed")
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.size == 0:
            return []
        chunk = to_mono(chunk, name=STREAM_NAME, max_channels=STREAM_MAX_CHANNELS).astype(np.float32, copy=False)
        if not np.isfinite(chunk).all():
            raise NonFiniteAudioError("audio chunk contains NaN or infinite samples", path=STREAM_NAME)
        self._buffer = np.concatenate([self._buffer, chunk])
        self._received += len(chunk)
        ready = []
        while self._inputs_needed(self._next * self._hop + self._window) <= self._received:
            ready.append(self._next * self._hop)
            self._next += 1
        emitted = self._emit(ready, final=False)
        self._trim()
        return emitted

    def flush(self) -> list[WindowPrediction]:
        """End of stream: emit the remaining windows of the offline policy."""
        if self._closed:
            return []
        self._closed = True
        total = -(-self._received * self._up // self._down)
        minimum_s = self.classifier.min_duration_s
        if total == 0 or (minimum_s is not None and self._received < minimum_s * self.sample_rate):
            return []  # nothing to classify: offline, such audio raises EmptyAudioError / AudioTooShortError
        if total <= self._window:  # short clip: one centred, zero-padded window
            signal = fit_to_window(self._resampled(0, total, final=True), self.classifier.feature_config)
            probabilities = self.classifier.predict_features(log_mel(signal[None], self.classifier.feature_config))
            out = self._aggregate(probabilities, [0.0], total / self.classifier.feature_config.sample_rate)
            self._emitted.extend(out.windows)
            return list(out.windows)
        starts = window_starts(total, self.classifier.feature_config, self.hop_s)
        # The regular windows already emitted are exactly the first `_next` offline starts.
        return self._emit(starts[self._next :], final=True)

    @property
    def windows(self) -> tuple[WindowPrediction, ...]:
        """Every window emitted so far."""
        return tuple(self._emitted)

    def result(self) -> Prediction:
        """Clip-level prediction over the emitted windows (call after :meth:`flush`)."""
        if not self._emitted:
            raise RuntimeError("no window emitted yet")
        labels = self.classifier.labels
        probs = np.array([[w.probabilities[label] for label in labels] for w in self._emitted])
        starts = [w.start_s for w in self._emitted]
        total = -(-self._received * self._up // self._down)
        return self._aggregate(probs, starts, total / self.classifier.feature_config.sample_rate)

    def _aggregate(self, probabilities: np.ndarray, starts_s: list[float], duration_s: float) -> Prediction:
        clf = self.classifier
        return aggregate_windows(clf.labels, clf.feature_config, probabilities, starts_s, duration_s)
