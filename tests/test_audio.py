"""Audio in: formats, mix-down, resampling quality, window policy, and every bad input."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import scipy.signal  # reference only (welch); the runtime does not use scipy.signal
import soundfile as sf

from ser_edge.edge_runtime import audio as audio_mod
from ser_edge.edge_runtime.audio import (
    check_signal,
    load_audio,
    split_windows,
    to_model_rate,
    window_starts,
)
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
    SerEdgeError,
    SilentAudioError,
)
from ser_edge.edge_runtime.features import FeatureConfig

from conftest import tone

CONFIG = FeatureConfig()


@pytest.mark.parametrize(
    "fmt,subtype,atol",
    [("WAV", "PCM_16", 1e-4), ("WAV", "PCM_24", 1e-6), ("WAV", "PCM_32", 1e-6),
     ("WAV", "FLOAT", 0), ("WAV", "DOUBLE", 0), ("FLAC", "PCM_16", 1e-4), ("FLAC", "PCM_24", 1e-6)],
)
def test_reads_formats(tmp_path, fmt, subtype, atol):
    x = tone(440, 0.5, 48_000)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, x, 48_000, format=fmt, subtype=subtype)
    got = load_audio(path)
    assert got.sample_rate == 48_000
    assert got.samples.dtype == np.float32
    np.testing.assert_allclose(got.samples, x, atol=atol + 1e-7)


def test_mixes_down_any_channel_count(tmp_path):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((48_000, 8))).astype(np.float32)
    sf.write(tmp_path / "multi.wav", x, 48_000, subtype="FLOAT")
    got = load_audio(tmp_path / "multi.wav")
    np.testing.assert_allclose(got.samples, x.mean(axis=1), atol=1e-6)


def test_anti_aliasing_96k_to_48k():
    """A 30 kHz tone at 96 kHz would alias to 18 kHz: nothing may remain above -60 dB below 20 kHz."""
    x = tone(30_000, 1.0, 96_000, amplitude=1.0)
    y = to_model_rate(x, 96_000, CONFIG)
    freqs, power = scipy.signal.welch(y, fs=48_000, nperseg=4096, window="blackmanharris", scaling="spectrum")
    reference = scipy.signal.welch(tone(1000, 1.0, 48_000, amplitude=1.0), fs=48_000, nperseg=4096,
                                   window="blackmanharris", scaling="spectrum")[1].max()
    level_db = 10 * np.log10(power[freqs < 20_000].max() / reference)
    assert level_db < -60, f"alias at {level_db:.1f} dB"


def test_passband_kept_when_resampling():
    x = tone(1000, 1.0, 16_000, amplitude=0.5)
    y = to_model_rate(x, 16_000, CONFIG)
    assert len(y) == 48_000
    mid = y[4800:-4800]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_100, 48_000, 96_000])
def test_resampled_length(rate):
    x = tone(440, 2.0, rate)
    assert abs(len(to_model_rate(x, rate, CONFIG)) - 96_000) <= 1


def test_short_clip_is_centred():
    x = np.ones(48_000, np.float32)
    windows, starts = split_windows(x, CONFIG)
    assert windows.shape == (1, CONFIG.n_samples) and list(starts) == [0.0]
    nonzero = np.flatnonzero(windows[0])
    assert nonzero[0] == 48_000 and nonzero[-1] == 96_000 - 1


def test_long_clip_windows_cover_everything():
    n = int(5.5 * 48_000)
    assert window_starts(n, CONFIG, 1.0) == [0, 48_000, 96_000, n - CONFIG.n_samples]
    assert window_starts(5 * 48_000, CONFIG, 1.0) == [0, 48_000, 96_000]
    x = np.arange(n, dtype=np.float32)
    windows, starts = split_windows(x, CONFIG, 1.0)
    np.testing.assert_allclose(starts, [0.0, 1.0, 2.0, 2.5])
    assert windows[-1, -1] == n - 1 and windows[0, 0] == 0


def test_missing_file(tmp_path):
    with pytest.raises(AudioFileNotFoundError, match="no such file"):
        load_audio(tmp_path / "nope.wav")


def test_directory(tmp_path):
    with pytest.raises(NotAudioError, match="directory"):
        load_audio(tmp_path)


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples\n" * 20)
    with pytest.raises(NotAudioError, match="not a supported audio file") as info:
        load_audio(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name, data", [("notes.mp3", b"hello\n"), ("header.ogg", b"OggS" + bytes(100))])
def test_not_audio_under_a_decoder_extension(tmp_path, name, data):
    """libsndfile picks a decoder by extension; its "does not exist" / "unimplemented
    format" for an existing non-audio file must not reach the user."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(NotAudioError, match="not a supported audio file") as info:
        load_audio(path)
    assert str(info.value) == f"{path}: not a supported audio file (WAV, FLAC, Ogg Vorbis/Opus or MP3)"


def _damaged_mp3(path, seed=0):
    """A 2 s MP3 tone with bytes overwritten every 97 bytes after its first frames:
    libmpg123 resyncs past the damage and prints notes to descriptor 2 while it does."""
    sf.write(path, tone(220, 2.0, 48_000), 48_000, format="MP3")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in range(2000, len(data), 97):
        data[i] = int(rng.integers(256))
    path.write_bytes(bytes(data))


def test_damaged_mp3_decodes_without_decoder_chatter(tmp_path, capfd):
    path = tmp_path / "damaged.mp3"
    _damaged_mp3(path)
    audio = load_audio(path)  # decodes what survives, as MP3 players do
    assert audio.duration_s > 1.0
    assert capfd.readouterr().err == ""  # libmpg123's "Note: Illegal Audio-MPEG-Header ..." dropped


def test_mp3_garbage_gives_one_error_and_nothing_else_on_stderr(tmp_path, capfd):
    path = tmp_path / "garbage.mp3"
    path.write_bytes(np.random.default_rng(0).integers(1, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(NotAudioError, match="not a supported audio file"):
        load_audio(path)
    with path.open("rb") as stream:  # a stream's format is unknown: filtered too
        with pytest.raises(NotAudioError):
            load_audio(stream)
    assert capfd.readouterr().err == ""


def test_decoder_filter_keeps_other_lines_and_restores_stderr(capfd):
    before = os.fstat(2)
    with decoder_stderr_filtered():
        os.write(2, b"Note: Trying to resync...\nanother thread's line\n")
        with decoder_stderr_filtered():  # nested: one redirection, ended by the outer block
            os.write(2, b"[src/libmpg123/layer3.c:INT123_do_layer3():1804] error: dequantization failed!\n")
        os.write(2, b"still inside\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "another thread's line\nstill inside\nafter\n"
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_decoder_filter_from_many_threads_restores_stderr(capfd):
    before = os.fstat(2)
    barrier = threading.Barrier(4)

    def decode(k):
        with decoder_stderr_filtered():
            barrier.wait()  # all four inside at once
            os.write(2, f"Note: from {k}\nline {k}\n".encode())

    threads = [threading.Thread(target=decode, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == ["after", "line 0", "line 1", "line 2", "line 3"]
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_truncated_flac(tmp_path):
    path = tmp_path / "cut.flac"
    rng = np.random.default_rng(0)
    sf.write(path, (0.3 * rng.standard_normal(48_000 * 2)).astype(np.float32), 48_000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(4096))
    with pytest.raises((CorruptAudioError, NotAudioError)):
        load_audio(path)


def test_corrupt_header(tmp_path):
    path = tmp_path / "bad.wav"
    sf.write(path, tone(440, 0.5, 48_000), 48_000)
    data = bytearray(path.read_bytes())
    data[20:36] = b"\xff" * 16  # fmt chunk garbage
    path.write_bytes(bytes(data))
    with pytest.raises(SerEdgeError):
        load_audio(path)


def test_zero_samples(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 48_000)
    with pytest.raises(EmptyAudioError, match="zero samples"):
        load_audio(tmp_path / "empty.wav")


def test_empty_file_and_broken_link(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(EmptyAudioError, match=r"file is empty \(0 bytes\)"):
        load_audio(tmp_path / "zero.wav")
    (tmp_path / "link.wav").symlink_to(tmp_path / "elsewhere.wav")
    with pytest.raises(AudioFileNotFoundError, match="broken link"):
        load_audio(tmp_path / "link.wav")


def test_all_zero(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(48_000, np.float32), 48_000)
    with pytest.raises(SilentAudioError, match="all zeros"):
        load_audio(tmp_path / "silent.wav")


def test_non_finite(tmp_path):
    x = tone(440, 0.5, 48_000)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 48_000, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")
    with pytest.raises(NonFiniteAudioError):
        check_signal(np.array([0.1, np.inf], np.float32), 48_000, min_duration_s=None)


@pytest.mark.parametrize("rate", [1, 500, 768_000])
def test_absurd_sample_rate(tmp_path, rate):
    path = tmp_path / "rate.wav"
    sf.write(path, tone(10, 0.5, max(rate, 100))[:1000], rate)
    with pytest.raises(SampleRateError, match="outside"):
        load_audio(path)


def test_too_long_is_configurable(tmp_path):
    sf.write(tmp_path / "long.wav", tone(440, 4.0, 8_000), 8_000)
    with pytest.raises(AudioTooLongError, match="over the 3 s limit"):
        load_audio(tmp_path / "long.wav", max_duration_s=3.0)
    assert load_audio(tmp_path / "long.wav", max_duration_s=5.0).duration_s == pytest.approx(4.0)


def test_too_short_is_an_error_and_configurable(tmp_path):
    rate = 16_000
    sf.write(tmp_path / "blip.wav", tone(440, 0.05, rate), rate)
    with pytest.raises(AudioTooShortError, match=r"blip.wav: audio is 0.050 s long, under the 0.2 s minimum"):
        load_audio(tmp_path / "blip.wav")
    assert load_audio(tmp_path / "blip.wav", min_duration_s=None).duration_s == pytest.approx(0.05)
    assert load_audio(tmp_path / "blip.wav", min_duration_s=0.05).duration_s == pytest.approx(0.05)  # the bound is inclusive
    with pytest.raises(AudioTooShortError):
        check_signal(tone(440, 0.1, rate), rate)
    assert check_signal(tone(440, audio_mod.MIN_DURATION_S, rate), rate).size == int(audio_mod.MIN_DURATION_S * rate)


def test_default_limit_is_ten_minutes():
    assert audio_mod.MAX_DURATION_S == 600.0


@pytest.mark.parametrize("rate", [1_000, 8_000, 11_025, 16_000, 22_050, 44_100, 44_101, 96_000, 384_000])
def test_resampler_matches_scipy(rate):
    scipy_signal = pytest.importorskip("scipy.signal")
    import math

    x = np.random.default_rng(rate).standard_normal(rate // 2).astype(np.float32)
    g = math.gcd(rate, 48_000)
    want = scipy_signal.resample_poly(x.astype(np.float64), 48_000 // g, rate // g,
                                      window=("kaiser", audio_mod.RESAMPLE_KAISER_BETA))
    got = to_model_rate(x, rate, CONFIG)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
