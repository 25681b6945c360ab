"""The log-mel front-end: reference parity, shape contract, invariances, config round-trip."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from ser_edge.edge_runtime.errors import ModelError
from ser_edge.edge_runtime.features import FeatureConfig, log_mel, mel_filterbank

from conftest import fresh_python, tone

CONFIG = FeatureConfig()
# librosa computes in float64, we in float32: measured max difference 3.5e-4 dB on speech.
LIBROSA_ATOL_DB = 2e-3


def speech_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Harmonic tone with vibrato and noise bursts: broadband, speech-like dynamics."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * CONFIG.sample_rate)) / CONFIG.sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / CONFIG.sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 2 * t))
    return (0.1 * envelope * voiced + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_matches_librosa_reference():
    librosa = pytest.importorskip("librosa")
    x = speech_like()
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=x.astype(np.float64), sr=CONFIG.sample_rate, n_fft=CONFIG.n_fft, hop_length=CONFIG.hop_length,
            n_mels=CONFIG.n_mels, center=True, pad_mode="constant", power=2.0, htk=False, norm="slaney",
        ),
        ref=np.max, amin=CONFIG.amin, top_db=CONFIG.top_db,
    )
    ours = log_mel(x, CONFIG)
    assert ours.shape == ref.shape == (CONFIG.n_mels, CONFIG.n_frames)
    assert np.abs(ours - ref).max() < LIBROSA_ATOL_DB


def test_filterbank_matches_librosa_and_is_cached():
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=CONFIG.sample_rate, n_fft=CONFIG.n_fft, n_mels=CONFIG.n_mels)
    fb = mel_filterbank(CONFIG)
    np.testing.assert_allclose(fb, ref, rtol=1e-4, atol=1e-7)
    assert mel_filterbank(FeatureConfig()) is fb
    assert not fb.flags.writeable


def test_shape_dtype_and_range():
    out = log_mel(speech_like())
    assert out.dtype == np.float32
    assert out.shape == (CONFIG.n_mels, CONFIG.n_frames) == (128, 563)
    assert out.max() == pytest.approx(0.0, abs=1e-6)
    assert out.min() >= -CONFIG.top_db


def test_gain_invariance():
    x = speech_like()
    base = log_mel(x)
    for gain in (1e-4, 1e-3, 0.1, 4.0):  # down to -80 dB
        np.testing.assert_allclose(log_mel(x * gain), base, atol=1e-3)


def test_batch_equals_single():
    clips = np.stack([speech_like(seed=s) for s in range(3)])
    batch = log_mel(clips)
    for i in range(3):
        np.testing.assert_allclose(batch[i], log_mel(clips[i]), atol=1e-5)


@pytest.mark.parametrize("rows", [2, 64])
def test_rows_per_pass_do_not_change_the_features(monkeypatch, rows):
    from ser_edge.edge_runtime import features

    clips = np.stack([speech_like(seed=s) for s in range(5)])
    default = log_mel(clips)
    monkeypatch.setattr(features, "LOG_MEL_ROWS", rows)
    np.testing.assert_array_equal(log_mel(clips), default)


@pytest.mark.parametrize(
    "config",
    [CONFIG, FeatureConfig(n_fft=256, hop_length=64, n_mels=96, clip_s=0.5)],  # the second has empty filters
    ids=["default", "empty-filters"],
)
def test_banded_mel_product_equals_the_dense_filterbank(config):
    from ser_edge.edge_runtime.features import _window

    x = speech_like()[: config.n_samples]
    padded = np.pad(x.astype(np.float64), config.n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, config.n_fft)[:: config.hop_length]
    power = np.abs(np.fft.rfft(frames * _window(config), axis=-1)) ** 2
    fb = mel_filterbank(config).astype(np.float64)
    assert (~fb.any(axis=1)).any() == (config is not CONFIG)
    db = 10 * np.log10(np.maximum(fb @ power.T, config.amin))
    dense = np.maximum(db - db.max(), -config.top_db)
    np.testing.assert_allclose(log_mel(x, config), dense, atol=1e-3)


def test_scratch_buffers_are_per_thread_and_never_returned():
    from concurrent.futures import ThreadPoolExecutor

    clips = [speech_like(seed=0), speech_like(seed=1)[:50_000], speech_like(seed=2)]
    want = [log_mel(clip) for clip in clips]
    first = log_mel(clips[0])
    log_mel(clips[2])  # same shape: reuses this thread's scratch arrays
    np.testing.assert_array_equal(first, want[0])  # an earlier result is not overwritten
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(log_mel, clips * 8))
    for result, expected in zip(got, want * 8):
        np.testing.assert_array_equal(result, expected)


def test_a_long_signal_leaves_no_large_scratch_behind(monkeypatch):
    from ser_edge.edge_runtime import features

    long = np.tile(speech_like(), 20)  # 60 s passed whole: a 46 MB spectrum
    out = log_mel(long)
    assert out.shape == (CONFIG.n_mels, 1 + len(long) // CONFIG.hop_length)
    assert sum(b.nbytes for b in features._scratch.buffers.values()) <= features.SCRATCH_MAX_BYTES
    monkeypatch.setattr(features, "SCRATCH_MAX_BYTES", 2**40)  # kept scratch: the same numbers
    np.testing.assert_array_equal(log_mel(long), out)
    np.testing.assert_array_equal(log_mel(long), out)
    features._scratch.buffers.clear()  # not 46 MB held for the rest of the session


# A fresh interpreter reads the BLAS thread count from the environment at numpy's import.
BLAS_THREADS_PROBE = """
import hashlib, sys
import numpy as np
from ser_edge.edge_runtime.features import log_mel
x = np.random.default_rng(0).standard_normal((2, 150_000)).astype(np.float32)
sys.stdout.write(hashlib.sha256(log_mel(x).tobytes()).hexdigest())
"""
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


@pytest.mark.parametrize("variable", BLAS_THREAD_VARIABLES)
def test_features_do_not_depend_on_the_blas_thread_count(variable):
    """The same bits with one BLAS thread or several (the cached features, the front-end
    fingerprint and so the rebuild must not depend on the machine's core count). On a
    one-core machine OpenBLAS never threads and this cannot tell; CI has two cores."""
    digests = set()
    for threads in ("1", "2"):
        env = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES} | {variable: threads}
        digests.add(fresh_python(BLAS_THREADS_PROBE, env=env))
    assert len(digests) == 1


def test_tone_lands_in_its_mel_band():
    out = log_mel(tone(1000.0, 3.0, CONFIG.sample_rate))
    fb = mel_filterbank(CONFIG)
    expected_band = int(np.argmax(fb[:, int(round(1000.0 * CONFIG.n_fft / CONFIG.sample_rate))]))
    assert abs(int(np.argmax(out[:, CONFIG.n_frames // 2])) - expected_band) <= 1


def test_rejects_bad_rank():
    with pytest.raises(ValueError, match="expects"):
        log_mel(np.zeros((1, 2, 3), np.float32))


def test_config_derived_sizes_and_json_round_trip():
    assert CONFIG.n_samples == 144_000
    assert CONFIG.n_frames == 1 + CONFIG.n_samples // CONFIG.hop_length
    assert FeatureConfig.from_json(CONFIG.to_json()) == CONFIG
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIG.n_mels = 64  # type: ignore[misc]


def test_config_rejects_unknown_and_invalid_fields():
    values = json.loads(CONFIG.to_json())
    with pytest.raises(ModelError, match="unknown fields"):
        FeatureConfig.from_dict({**values, "dither": 1.0})
    with pytest.raises(ModelError, match="invalid feature config"):
        FeatureConfig.from_dict({**values, "window": "hamming"})
    with pytest.raises(ModelError, match="not valid JSON"):
        FeatureConfig.from_json("{nope")
