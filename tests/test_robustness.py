"""Corruptions used by `ser-edge evaluate --snr`: they hit their SNR / bandwidth, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ser_edge.train import robustness

from conftest import tone


def snr_db(clean, noisy):
    return 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))


@pytest.mark.parametrize("target", [20.0, 5.0, 0.0])
def test_white_noise_snr(target):
    clean = tone(440, 2.0, 16_000)
    noisy, rate = robustness.white_noise(target)(clean, 16_000)
    assert rate == 16_000 and snr_db(clean, noisy) == pytest.approx(target, abs=0.05)
    again, _ = robustness.white_noise(target)(clean, 16_000)
    np.testing.assert_array_equal(noisy, again)


def test_babble_from_other_clips(tmp_path):
    pool = []
    for i in range(8):
        path = tmp_path / f"talker{i}.wav"
        sf.write(path, tone(200 + 50 * i, 1.0 + 0.1 * i, 16_000), 16_000)
        pool.append(str(path))
    clean = tone(1000, 2.0, 16_000)
    noisy, _ = robustness.babble_noise(10.0, pool)(clean, 16_000)
    assert snr_db(clean, noisy) == pytest.approx(10.0, abs=0.05)
    spectrum = np.abs(np.fft.rfft(noisy - clean))
    assert spectrum[:600].sum() > 10 * spectrum[3000:].sum()  # low-frequency talkers, not white


def test_band_limit_removes_high_frequencies():
    x = tone(6000, 1.0, 48_000) + tone(500, 1.0, 48_000)
    y, rate = robustness.band_limit(8_000)(x, 48_000)
    assert rate == 8_000 and len(y) == 8_000
    spectrum = np.abs(np.fft.rfft(y))
    assert spectrum[500] > 1000 * spectrum[3000:].max()


def test_conditions_list():
    names = [c.name for c in robustness.conditions([20, 0], [16_000, 8_000], ["x.wav"])]
    assert names == ["clean", "white 20 dB", "white 0 dB", "babble 20 dB", "babble 0 dB",
                     "16 kHz band-limited", "8 kHz band-limited"]
