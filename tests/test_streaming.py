"""Streaming equals offline: same windows, same probabilities, any chunking, any rate."""

from __future__ import annotations

import numpy as np
import pytest

from ser_edge.edge_runtime import EmotionClassifier, StreamingClassifier
from ser_edge.edge_runtime.errors import NonFiniteAudioError, NotAudioError, SampleRateError

from conftest import LABELS, tone


def signal(seconds: float, rate: int) -> np.ndarray:
    parts = [tone(f, seconds / 4, rate) for f in (300, 2500, 7000, 600)]
    noise = 0.01 * np.random.default_rng(rate).standard_normal(sum(len(p) for p in parts))
    return (np.concatenate(parts) + noise).astype(np.float32)


def stream(clf, audio, rate, chunk_sizes):
    streamer = StreamingClassifier(clf, rate)
    emitted_during_push = 0
    position, i = 0, 0
    while position < len(audio):
        size = chunk_sizes[i % len(chunk_sizes)]
        emitted_during_push += len(streamer.push(audio[position : position + size]))
        position += size
        i += 1
    streamer.flush()
    return streamer, emitted_during_push


def as_array(windows):
    return np.array([[w.probabilities[label] for label in LABELS] for w in windows])


@pytest.mark.parametrize("rate", [48_000, 16_000, 44_100, 8_000])
@pytest.mark.parametrize("seconds", [7.3, 2.2, 5.0])
def test_stream_equals_offline(tiny_model, rate, seconds):
    clf = EmotionClassifier(tiny_model)
    audio = signal(seconds, rate)
    offline = clf.predict(audio, rate)
    chunk_ms = (20, 100, 37, 60)
    streamer, during = stream(clf, audio, rate, [max(1, rate * ms // 1000) for ms in chunk_ms])
    assert [w.start_s for w in streamer.windows] == [w.start_s for w in offline.windows]
    assert [w.end_s for w in streamer.windows] == pytest.approx([w.end_s for w in offline.windows], abs=1e-4)
    np.testing.assert_allclose(as_array(streamer.windows), as_array(offline.windows), atol=1e-6)
    assert [w.label for w in streamer.windows] == [w.label for w in offline.windows]
    assert streamer.result().label == offline.label
    if seconds > 4:
        assert during >= 1  # predictions arrive while audio is still coming in


def test_one_prediction_per_hop(tiny_model):
    clf = EmotionClassifier(tiny_model)
    streamer = StreamingClassifier(clf, 48_000, hop_s=0.5)
    counts = [len(streamer.push(np.full(24_000, 0.1, np.float32) * (i % 3 + 1))) for i in range(12)]
    assert counts[:5] == [0, 0, 0, 0, 0] and counts[5:] == [1] * 7  # first at 3 s, then every 0.5 s


def test_buffer_stays_bounded(tiny_model):
    streamer = StreamingClassifier(EmotionClassifier(tiny_model), 16_000)
    chunk = signal(1.0, 16_000)
    for _ in range(60):
        streamer.push(chunk)
    assert len(streamer._buffer) < 5 * 16_000


def test_stream_shorter_than_the_minimum_emits_nothing(tiny_model):
    clf = EmotionClassifier(tiny_model)
    short = signal(0.1, 16_000)
    streamer = StreamingClassifier(clf, 16_000)
    assert streamer.push(short) == [] and streamer.flush() == []
    lenient = EmotionClassifier(tiny_model, min_duration_s=None)
    streamer = StreamingClassifier(lenient, 16_000)
    streamer.push(short)
    windows = streamer.flush()
    assert len(windows) == 1
    np.testing.assert_allclose(as_array(windows), as_array(lenient.predict(short, 16_000).windows), atol=1e-6)


def test_bad_stream_input(tiny_model):
    clf = EmotionClassifier(tiny_model)
    with pytest.raises(SampleRateError):
        StreamingClassifier(clf, 500)
    streamer = StreamingClassifier(clf, 16_000)
    with pytest.raises(NonFiniteAudioError, match="<stream>: audio chunk contains NaN"):
        streamer.push(np.array([0.0, np.nan], np.float32))
    stereo = np.random.default_rng(0).standard_normal((320, 2)).astype(np.float32)
    with pytest.raises(NotAudioError, match=r"got shape \(2, 320\), more channels than samples"):
        streamer.push(stereo.T)  # channels-first
    with pytest.raises(NotAudioError, match="expected"):
        streamer.push(stereo[None])
    assert streamer.push(stereo) == []  # (samples, channels) is mixed down, as offline
    assert streamer.push(stereo[:1]) == []  # one stereo frame is a valid chunk
