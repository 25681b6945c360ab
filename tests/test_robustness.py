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


def test_conditions_with_codecs():
    names = [c.name for c in robustness.conditions([], [], [], codecs=["opus-16k", "mp3-32k"])]
    assert names == ["clean", "opus-16k", "mp3-32k"]
    with pytest.raises(ValueError, match=r"unknown codecs \['aac'\]"):
        robustness.conditions([], [], [], codecs=["aac"])


@pytest.mark.parametrize("name", sorted(robustness.CODECS))
def test_codec_round_trip_keeps_the_speech_band_and_counts_its_bitrate(name):
    """Encoded and decoded in memory: same rate, about the same length, a 500 Hz tone
    survives; the bitrate measured is near the codec's nominal one (a steady tone, no
    silence for a variable-rate encoder to save on)."""
    rate = 48_000
    x = 0.3 * tone(500, 2.0, rate)
    transform = robustness.CodecTransform(robustness.CODECS[name])
    y, out_rate = transform(x, rate)
    assert out_rate == rate and y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x)) <= 0.05 * rate
    spectrum = np.abs(np.fft.rfft(y[: len(x)]))
    peak_hz = np.argmax(spectrum) * rate / (2 * (len(spectrum) - 1))
    assert abs(peak_hz - 500) < 2
    assert transform.seconds == pytest.approx(2.0)
    assert 0.4 * robustness.CODECS[name].nominal_kbps < transform.kbps < 1.5 * robustness.CODECS[name].nominal_kbps


def test_evaluate_cli_reports_codecs_with_their_bitrate(tiny_model, tmp_path):
    """evaluate --model --snr --codecs on RAVDESS-named tones (the tiny model maps 300 Hz to
    neutral and 10 kHz to disgust): every condition is reported, codecs with their bitrate."""
    import json

    from click.testing import CliRunner

    from ser_edge.cli import main

    data = tmp_path / "data"
    for actor in (1, 2):
        for emotion, hz in ((1, 300.0), (7, 10_000.0)):
            path = data / f"Actor_{actor:02d}" / f"03-01-{emotion:02d}-01-01-01-{actor:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone(hz, 2.0, 48_000), 48_000)
    out = tmp_path / "reports" / "robust.json"  # folders that do not exist yet are made
    plot = tmp_path / "plots" / "robust.png"
    result = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--data", str(data), "--snr", "20",
                                       "--bandwidth", "", "--codecs", "opus-32k,mp3-96k", "--json", str(out),
                                       "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert list(summary["robustness"]) == ["clean", "white 20 dB", "opus-32k", "mp3-96k"]  # no --actors: no babble
    assert summary["robustness"]["clean"] == 1.0
    assert set(summary["codec_kbps"]) == {"opus-32k", "mp3-96k"} and all(v > 0 for v in summary["codec_kbps"].values())
    assert f"opus-32k                 {summary['robustness']['opus-32k']:.3f}  (" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # noise curve, codec lines
    unknown = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--data", str(data), "--snr", "20",
                                        "--codecs", "aac-64k"])
    assert unknown.exit_code == 2 and "--codecs: unknown codecs ['aac-64k']" in unknown.output
    assert "accuracy" not in unknown.output  # refused before anything was evaluated
