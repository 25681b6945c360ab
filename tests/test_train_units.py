"""Training units: file-name parsing, actor splits, scaler, class weights, augmentation, metrics."""

from __future__ import annotations

import dataclasses
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.train import metrics
from ser_edge.train.augment import AugmentConfig, add_noise, freq_warp, spec_augment
from ser_edge.train.data import DatasetError, FeatureSet, kfold_splits, parse_name, scan_dataset, split_actors
from ser_edge.train.scaler import Scaler
from ser_edge.train.trainer import class_weights

from conftest import SMALL_FEATURES, front_end_with_blas, small_model_config

ACTORS = [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 20, 21, 23, 24]


def test_parse_valid_name():
    clip = parse_name("Actor_05/03-01-06-02-01-02-05.wav")
    assert (clip.emotion, clip.label, clip.intensity, clip.statement, clip.repetition, clip.actor) == (6, "fearful", 2, 1, 2, 5)
    assert not clip.is_female and clip.label_index == 5


@pytest.mark.parametrize(
    "name,problem",
    [
        ("hello.wav", "not a RAVDESS name"),
        ("03-01-09-01-01-01-01.wav", "emotion code 09"),
        ("03-01-01-01-01-01-25.wav", "actor code 25"),
        ("03-02-03-01-01-01-01.wav", "not an audio-only speech clip"),
        ("01-01-03-01-01-01-01.wav", "not an audio-only speech clip"),
        ("03-01-01-02-01-01-01.wav", "neutral has no strong intensity"),
        ("03-01-1-01-01-01-01.wav", "not a RAVDESS name"),
    ],
)
def test_parse_rejects(name, problem):
    with pytest.raises(DatasetError, match=problem):
        parse_name(name)


def test_scan_skips_or_fails_strict(tmp_path, wav):
    wav(300, 1.0, name="Actor_01/03-01-01-01-01-01-01.wav")
    wav(300, 1.0, name="Actor_01/03-02-01-01-01-01-01.wav")  # song
    wav(300, 1.0, name="Actor_01/notes.wav")
    result = scan_dataset(tmp_path)
    assert [c.actor for c in result.clips] == [1] and len(result.skipped) == 2
    with pytest.raises(DatasetError):
        scan_dataset(tmp_path, strict=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no RAVDESS speech clips"):
        scan_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "missing")


@pytest.mark.parametrize("seed", range(10))
def test_split_is_disjoint_and_balanced(seed):
    split = split_actors(ACTORS, seed=seed)
    sets = [set(split.train), set(split.val), set(split.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(ACTORS)
    assert (len(split.train), len(split.val), len(split.test)) == (16, 2, 2)
    for part in (split.val, split.test):
        assert sorted(a % 2 for a in part) == [0, 1]  # one female, one male
    assert split == split_actors(ACTORS, seed=seed)


def test_kfold_each_actor_tested_once():
    splits = kfold_splits(ACTORS, 5, seed=0)
    tested = [a for s in splits for a in s.test]
    assert sorted(tested) == ACTORS
    for s in splits:
        assert len(s.test) == 4 and len(s.val) == 2
        assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))
        assert sorted(a % 2 for a in s.test) == [0, 0, 1, 1]


def test_kfold_refuses_folds_without_training_actors():
    """5 actors, 2 folds: the first fold's 3 test + 2 validation actors leave none to train
    on; 6 actors leave one in every fold."""
    with pytest.raises(DatasetError, match="5 actors .speakers. are too few for 2 folds"):
        kfold_splits([1, 2, 3, 4, 5], 2)
    assert [len(s.train) for s in kfold_splits([1, 2, 3, 4, 5, 6], 2)] == [1, 1]
    with pytest.raises(DatasetError, match="5 actors .speakers. are too few for 6 folds"):
        kfold_splits([1, 2, 3, 4, 5], 6)
    with pytest.raises(DatasetError, match="at least 2 folds, got 1"):
        kfold_splits(ACTORS, 1)


def test_scaler_fits_train_rows_only(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((10, 4, 5)).astype(np.float32)
    features[5:] += 100.0  # "test" rows far away
    train_rows = np.arange(5)
    scaler = Scaler.fit(features, train_rows)
    np.testing.assert_allclose(scaler.mean, features[:5].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(scaler.scale, features[:5].std(axis=0), rtol=1e-4)
    z = scaler.transform(features[:5])
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    scaler.save(tmp_path / "scaler.npz")
    loaded = Scaler.load(tmp_path / "scaler.npz")
    np.testing.assert_array_equal(loaded.mean, scaler.mean)
    with np.load(tmp_path / "scaler.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["mean", "scale"]


def test_scaler_constant_position_gets_unit_scale():
    features = np.ones((4, 2, 2), np.float32)
    assert (Scaler.fit(features, np.arange(4)).scale == 1).all()


def test_class_weights_inverse_frequency():
    labels = np.array([0] * 4 + [1] * 8 + [2] * 8)
    w = class_weights(labels, ("a", "b", "c"))
    assert w[0] == pytest.approx(2 * w[1]) and w[1] == pytest.approx(w[2])
    assert w.mean() == pytest.approx(1.0)
    with pytest.raises(DatasetError, match=r"no clips labelled \['c'\]"):
        class_weights(np.array([0, 0, 1]), ("a", "b", "c"))


def test_add_noise_hits_the_snr():
    rng = np.random.default_rng(0)
    clean = np.sin(np.linspace(0, 2000, 48_000)).astype(np.float32)[None]
    noisy = add_noise(clean, np.array([10.0]), rng)
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert snr == pytest.approx(10.0, abs=0.2)


def test_freq_warp_stretches_mel_axis():
    features = np.tile(np.linspace(-80, 0, 128, dtype=np.float32)[:, None], (1, 1, 10))
    warped = freq_warp(features.copy(), AugmentConfig(warp_prob=1.0, warp_range=(1.1, 1.1)), np.random.default_rng(0))
    assert warped.shape == features.shape
    assert warped[0, 64, 0] < features[0, 64, 0]  # content moved up: same bin now holds lower values


def test_spec_augment_masks_bands():
    x = torch.ones(4, 1, 128, 200)
    aug = AugmentConfig(freq_masks=1, freq_mask_bins=20, time_masks=1, time_mask_frames=30)
    out = spec_augment(x, aug, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    zero_rows = (out == 0).all(dim=3).sum(dim=(1, 2))
    zero_cols = (out == 0).all(dim=2).sum(dim=(1, 2))
    assert (zero_rows <= 20).all() and (zero_cols <= 30).all() and (out == 0).any()


def test_classification_report_format():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    text = metrics.classification_report(y_true, y_pred, ["a", "b", "c"])
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["a", "0.500", "0.500", "0.500", "2"]
    assert lines[6].split() == ["accuracy", "0.667", "6"]
    summary = metrics.summary(y_true, y_pred, ["a", "b", "c"])
    assert summary["accuracy"] == pytest.approx(4 / 6)
    assert summary["uar"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_ece_of_perfectly_calibrated_is_zero():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.expected_calibration_error(probs, np.array([0, 1])) == 0.0
    assert metrics.expected_calibration_error(probs, np.array([1, 0])) == pytest.approx(1.0)


def test_cross_validate_summary_and_single_folds(tmp_path, monkeypatch):
    from ser_edge.train import pipeline
    from ser_edge.train.data import Clip

    clips = [Clip(f"a{a}.wav", 3, 1, 1, 1, 1, 1, a) for a in ACTORS]
    prepared = pipeline.Prepared(FeatureSet(clips, None, None, np.arange(len(clips)), np.zeros(len(clips))), "h", [], "/d")
    calls = []

    def fake_train(prepared, split, run_dir, **kwargs):
        calls.append(split)
        acc = 0.5 + 0.1 * len(calls)
        run_dir.mkdir(parents=True)
        result = {"test": {"accuracy": acc, "macro_f1": acc, "uar": acc}, "best_epoch": 3}
        (run_dir / "metrics.json").write_text(__import__("json").dumps(result))
        return result

    from ser_edge.train.trainer import ResumeMismatchError, TrainConfig

    kwargs = dict(feature_config=SMALL_FEATURES, train_config=TrainConfig(), model_config=small_model_config(),
                  augment=AugmentConfig.off())
    monkeypatch.setattr(pipeline, "train_split", fake_train)
    assert pipeline.cross_validate(prepared, 5, tmp_path, seed=0, only_fold=1, **kwargs) is None
    assert len(calls) == 1 and calls[0] == kfold_splits(ACTORS, 5, seed=0)[1]
    out = pipeline.cross_validate(prepared, 5, tmp_path, seed=0, **kwargs)
    assert len(calls) == 5  # fold 1 was finished: not trained again
    accs = [f["test"]["accuracy"] for f in out["folds"]]
    assert out["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert out["summary"]["accuracy"]["std"] == pytest.approx(np.std(accs))
    assert (tmp_path / "cv_metrics.json").is_file()
    # A finished fold of another recipe is not summarised as this one's.
    fold_2 = tmp_path / "fold_2"
    other = pipeline.make_trainer(prepared, kfold_splits(ACTORS, 5, seed=0)[2], fold_2,
                                  **{**kwargs, "train_config": TrainConfig(ema_decay=0.9)})
    (fold_2 / "config.json").write_text(__import__("json").dumps(other.config_dict()))
    with pytest.raises(ResumeMismatchError, match="fold_2: .*train.ema_decay"):
        pipeline.cross_validate(prepared, 5, tmp_path, seed=0, **kwargs)
    assert len(calls) == 5


def test_cross_validate_trains_on_folds_that_a_lower_cap_ended(tmp_path, monkeypatch):
    import json

    from ser_edge.train import pipeline
    from ser_edge.train.data import Clip
    from ser_edge.train.trainer import TrainConfig

    clips = [Clip(f"a{a}.wav", 3, 1, 1, 1, 1, 1, a) for a in ACTORS]
    prepared = pipeline.Prepared(FeatureSet(clips, None, None, np.arange(len(clips)), np.zeros(len(clips))), "h", [], "/d")
    # (epochs run, best epoch) per fold under a 150 cap and patience 12: folds 1 and 3 hit the cap.
    stops = {0: (136, 124), 1: (150, 147), 2: (122, 110), 3: (150, 146), 4: (150, 138)}
    trained = []

    def fake_train(prepared, split, run_dir, train_config, **kwargs):
        k = int(run_dir.name.split("_")[1])
        trained.append(k)
        ran, best = stops[k]
        if (run_dir / "metrics.json").is_file():  # trained on from the checkpoint: 5 more good epochs, then early stop
            best = ran + 5
            ran = best + train_config.early_stop_patience
        run_dir.mkdir(parents=True, exist_ok=True)
        result = {"test": {"accuracy": 0.5, "macro_f1": 0.5, "uar": 0.5}, "best_epoch": best, "epochs_run": ran}
        (run_dir / "metrics.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(pipeline, "train_split", fake_train)
    monkeypatch.setattr(pipeline, "make_trainer", lambda *a, **k: types.SimpleNamespace(check_resumable=lambda: None))
    base = dict(feature_config=SMALL_FEATURES, model_config=small_model_config(), augment=AugmentConfig.off())
    capped, longer = TrainConfig(epochs=150), TrainConfig(epochs=250)
    assert pipeline.cross_validate(prepared, 5, tmp_path, seed=0, train_config=capped, **base) is not None
    assert trained == [0, 1, 2, 3, 4]
    assert pipeline.finished(tmp_path / "fold_1", capped) and not pipeline.finished(tmp_path / "fold_1", longer)
    assert pipeline.finished(tmp_path / "fold_4", longer)  # early-stopped at 150: the same under any cap
    # One fold at a time with the higher cap: no summary until every capped fold has trained on.
    assert pipeline.cross_validate(prepared, 5, tmp_path, seed=0, train_config=longer, only_fold=1, **base) is None
    assert trained[5:] == [1]
    out = pipeline.cross_validate(prepared, 5, tmp_path, seed=0, train_config=longer, **base)
    assert trained[5:] == [1, 3] and [f["best_epoch"] for f in out["folds"]] == [124, 155, 110, 155, 138]
    assert not pipeline.finished(tmp_path / "fold_0", TrainConfig(epochs=250, early_stop_patience=30))


def test_synthetic_rir_decays_at_rt60():
    from ser_edge.train.augment import RIR_DECAY_DB, synthetic_rir

    rir = synthetic_rir(0.5, 16_000, np.random.default_rng(0))
    assert len(rir) == 8000 and np.sum(rir**2) == pytest.approx(1.0, rel=1e-4)
    early, late = np.sqrt(np.mean(rir[100:900] ** 2)), np.sqrt(np.mean(rir[7000:8000] ** 2))
    assert 20 * np.log10(early / late) == pytest.approx(RIR_DECAY_DB * (7500 - 500) / 8000, abs=6)


def test_waveform_augmentations_change_only_chosen_rows():
    from ser_edge.train.augment import waveform_log_mel

    config = FeatureConfig()
    rng = np.random.default_rng(0)
    waves = np.stack([np.sin(np.arange(config.n_samples) * 0.05 * (i + 1)).astype(np.float32) for i in range(6)])
    aug = AugmentConfig(noise_prob=0.5, reverb_prob=0.5, bandlimit_prob=0.5)
    chosen, feats = waveform_log_mel(waves, config, aug, rng)
    assert 0 < len(chosen) <= 6 and feats.shape == (len(chosen), config.n_mels, config.n_frames)
    none, empty = waveform_log_mel(waves, config, AugmentConfig.off(), rng)
    assert len(none) == 0 and empty.shape[0] == 0
    narrow = waveform_log_mel(waves[:1], config, AugmentConfig(noise_prob=0, bandlimit_prob=1.0, bandlimit_rates=(8000,)), rng)[1][0]
    from ser_edge.edge_runtime.features import mel_filterbank

    top_band = int(np.argmax(mel_filterbank(config)[:, int(5000 * config.n_fft / config.sample_rate)]))
    assert narrow[top_band:, 8:-8].max() <= -config.top_db + 1  # nothing above 4 kHz (edges: filter transient)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_every_frequency(factor):
    from ser_edge.train.augment import speed_perturb

    rate, n = 48_000, 48_000
    t = np.arange(n) / rate
    wave = (np.sin(2 * np.pi * 200 * t) + 0.5 * np.sin(2 * np.pi * 2_000 * t)).astype(np.float32)
    out = speed_perturb(wave, factor)
    assert out.shape == wave.shape and out.dtype == np.float32
    voiced = int(n / factor) if factor > 1 else n
    spectrum = np.abs(np.fft.rfft(out[:voiced] * np.hanning(voiced)))
    freqs = np.fft.rfftfreq(voiced, 1 / rate)
    low = freqs[np.argmax(spectrum * (freqs < 1_000))]
    high = freqs[np.argmax(spectrum * (freqs > 1_000))]
    assert low == pytest.approx(200 * factor, abs=2) and high == pytest.approx(2_000 * factor, abs=2)
    if factor > 1:
        assert not out[voiced + 1 :].any()  # faster: the window's tail is silence


def test_speed_perturbation_is_off_unless_asked():
    from ser_edge.train.augment import waveform_log_mel

    config = FeatureConfig()
    waves = np.stack([np.sin(np.arange(config.n_samples) * 0.05 * (i + 1)).astype(np.float32) for i in range(4)])
    assert not AugmentConfig(noise_prob=0).touches_waveform
    chosen, feats = waveform_log_mel(waves, config, AugmentConfig(noise_prob=0, speed_prob=1.0), np.random.default_rng(0))
    assert list(chosen) == [0, 1, 2, 3]
    from ser_edge.edge_runtime.features import log_mel

    assert not np.allclose(feats, log_mel(waves, config))


def test_power_spectrogram_then_mel_db_is_the_front_end():
    from ser_edge.edge_runtime.features import log_mel, mel_db, power_spectrogram

    config = FeatureConfig()
    waves = np.random.default_rng(3).standard_normal((2, config.n_samples)).astype(np.float32)
    np.testing.assert_allclose(mel_db(power_spectrogram(waves, config), config), log_mel(waves, config), atol=1e-3)


VOWEL_F0_HZ = 220


def _vowel(config: FeatureConfig) -> np.ndarray:
    """A steady vowel: harmonics of 220 Hz shaped by formants at 700 and 2200 Hz."""
    t = np.arange(config.n_samples) / config.sample_rate
    envelope = lambda f: np.exp(-(((f - 700) / 300) ** 2)) + 0.5 * np.exp(-(((f - 2200) / 400) ** 2)) + 0.02
    return sum(envelope(VOWEL_F0_HZ * k) * np.sin(2 * np.pi * VOWEL_F0_HZ * k * t) for k in range(1, 80)).astype(np.float32)


@pytest.mark.parametrize("factor", [0.85, 1.18])
def test_pitch_shift_moves_the_harmonics_and_keeps_the_formants(factor):
    from ser_edge.edge_runtime.features import power_spectrogram
    from ser_edge.train.augment import _lifter_bases, pitch_shift_power, speed_perturb

    config = FeatureConfig()
    wave = _vowel(config)
    power = power_spectrogram(wave[None], config)[0]
    steady = slice(100, 400)  # frames away from the clip's zero-padded edges

    def pitch_period(p):  # in samples: the real cepstrum's peak
        cepstrum = np.fft.irfft(np.log(p[steady] + 1e-20), n=config.n_fft, axis=-1).mean(axis=0)
        lags = np.arange(80, 500)
        return lags[np.argmax(cepstrum[lags])]

    analysis, synthesis = _lifter_bases(config)

    def envelope_db(p):
        return 10 / np.log(10) * ((np.log(p[steady] + 1e-20) @ analysis) @ synthesis).mean(axis=0)

    shifted = pitch_shift_power(power, factor, config)
    assert shifted.shape == power.shape and shifted.dtype == np.float32
    assert pitch_period(power) == pytest.approx(config.sample_rate / VOWEL_F0_HZ, abs=1)
    assert pitch_period(shifted) == pytest.approx(config.sample_rate / (VOWEL_F0_HZ * factor), abs=1)
    # Formants: the envelope moves far less than under speed perturbation by the same factor.
    freqs = np.arange(config.n_bins) * config.sample_rate / config.n_fft
    band = (freqs > 300) & (freqs < 4_000)
    sped = power_spectrogram(speed_perturb(wave, factor)[None], config)[0]
    kept = np.abs(envelope_db(shifted) - envelope_db(power))[band].mean()
    moved = np.abs(envelope_db(sped) - envelope_db(power))[band].mean()
    assert kept < 3.0 < 6.0 < moved
    np.testing.assert_allclose(pitch_shift_power(power, 1.0, config), power, rtol=1e-4, atol=1e-12)


def test_pitch_shift_is_off_unless_asked_and_reaches_the_features():
    from ser_edge.edge_runtime.features import log_mel
    from ser_edge.train.augment import waveform_log_mel

    config = FeatureConfig()
    waves = np.stack([_vowel(config), _vowel(config)[::-1].copy()])
    assert not AugmentConfig(noise_prob=0).touches_waveform
    shifting = AugmentConfig(noise_prob=0, pitch_prob=1.0, pitch_range=(1.15, 1.15))
    assert shifting.touches_waveform
    chosen, feats = waveform_log_mel(waves, config, shifting, np.random.default_rng(0))
    assert list(chosen) == [0, 1] and feats.shape == (2, config.n_mels, config.n_frames)
    assert np.abs(feats - log_mel(waves, config)).max() > 10
    same = dataclasses.replace(shifting, pitch_range=(1.0, 1.0))
    np.testing.assert_allclose(waveform_log_mel(waves, config, same, np.random.default_rng(0))[1],
                               log_mel(waves, config), atol=1e-3)


BURST_HZ, BURST_START_S, BURST_END_S = 2_000, 1.0, 1.6


def _tone_burst(config: FeatureConfig) -> np.ndarray:
    """One window: a 2 kHz tone from 1.0 s to 1.6 s, silence around it."""
    t = np.arange(config.n_samples) / config.sample_rate
    burst = (t >= BURST_START_S) & (t < BURST_END_S)
    return (np.sin(2 * np.pi * BURST_HZ * t) * burst).astype(np.float32)


def _onset_offset_band(features: np.ndarray, config: FeatureConfig) -> tuple[float, float, int]:
    """(first, last) time in s of the loud frames of a log-mel, and its loudest mel band."""
    loud = features.max(axis=0) > -20
    frame_s = config.hop_length / config.sample_rate
    frames = np.flatnonzero(loud)
    return frames[0] * frame_s, frames[-1] * frame_s, int(np.argmax(features[:, loud].mean(axis=1)))


@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_speed_perturbation_keeping_tempo_moves_frequencies_not_time(factor):
    from ser_edge.edge_runtime.features import log_mel, mel_filterbank
    from ser_edge.train.augment import waveform_log_mel

    config = FeatureConfig()
    wave = _tone_burst(config)[None]
    plain = _onset_offset_band(log_mel(wave[0], config), config)
    fb = mel_filterbank(config)
    expected_band = int(np.argmax(fb[:, int(round(BURST_HZ * factor * config.n_fft / config.sample_rate))]))
    for keep, onset_s, offset_s in ((True, BURST_START_S, BURST_END_S),
                                    (False, BURST_START_S / factor, BURST_END_S / factor)):
        aug = AugmentConfig(noise_prob=0, speed_prob=1.0, speed_range=(factor, factor), speed_keep_tempo=keep)
        _, feats = waveform_log_mel(wave, config, aug, np.random.default_rng(0))
        start, end, band = _onset_offset_band(feats[0], config)
        assert start == pytest.approx(onset_s, abs=0.03) and end == pytest.approx(offset_s, abs=0.03)
        assert abs(band - expected_band) <= 1 and band != plain[2]
    assert feats.shape == (1, config.n_mels, config.n_frames)


def test_stretch_frames_plays_the_frames_faster_or_slower():
    from ser_edge.train.augment import stretch_frames

    features = np.tile(np.arange(10, dtype=np.float32), (3, 1))  # frame j holds the value j
    # Twice as fast: frame j is input frame 2 j; the second half is past the input's end.
    fast = stretch_frames(features, 2.0, -80.0)
    np.testing.assert_array_equal(fast, np.tile([0, 2, 4, 6, 8] + [-80] * 5, (3, 1)).astype(np.float32))
    slow = stretch_frames(features, 0.5, -80.0)  # half as fast: frame j is input frame j / 2
    np.testing.assert_allclose(slow, np.tile(np.arange(10) / 2, (3, 1)))
    np.testing.assert_array_equal(stretch_frames(features, 1.0, -80.0), features)


def test_tempo_perturbation_moves_time_not_frequency():
    from ser_edge.edge_runtime.features import log_mel
    from ser_edge.train.augment import tempo_perturb

    config = FeatureConfig()
    plain = log_mel(_tone_burst(config), config)
    rate = 1.25
    out = tempo_perturb(plain[None].copy(), AugmentConfig(tempo_prob=1.0, tempo_range=(rate, rate)),
                        np.random.default_rng(0), -config.top_db)[0]
    start, end, band = _onset_offset_band(out, config)
    assert start == pytest.approx(BURST_START_S / rate, abs=0.03) and end == pytest.approx(BURST_END_S / rate, abs=0.03)
    assert band == _onset_offset_band(plain, config)[2]
    untouched = tempo_perturb(plain[None].copy(), AugmentConfig(tempo_prob=0.0), np.random.default_rng(0), -config.top_db)
    np.testing.assert_array_equal(untouched[0], plain)


def test_utterance_norm_ignores_a_fixed_spectral_envelope():
    from ser_edge.models.parallel import ModelConfig, ParallelModel

    torch.manual_seed(0)
    model = ParallelModel(ModelConfig(utterance_norm=True)).eval()
    x = torch.randn(2, 1, 128, 563)
    envelope = torch.linspace(-3.0, 3.0, 128)[None, None, :, None]  # per mel band, constant in time
    with torch.no_grad():
        torch.testing.assert_close(model(x + envelope), model(x), atol=1e-4, rtol=1e-4)
        plain = ParallelModel(ModelConfig(utterance_norm=False)).eval()
        plain(x)  # materialise
        assert not torch.allclose(plain(x + envelope), plain(x), atol=1e-2)


def test_recipe_train_config_overrides():
    from ser_edge.train import recipes

    fast = recipes.RECIPES["fast"]
    assert fast.train_config().lr == fast.train["lr"]
    config = fast.train_config(epochs=7, lr=None, batch_size=None)
    assert (config.epochs, config.lr, config.batch_size) == (7, fast.train["lr"], 32)
    mixing = dataclasses.replace(fast, augment=dataclasses.replace(fast.augment, mixup_alpha=0.4))
    assert mixing.augment_config(mixup_alpha=None, reverb_prob=0.3).mixup_alpha == 0.4
    assert mixing.augment_config(mixup_alpha=None, reverb_prob=0.3).reverb_prob == 0.3
    assert mixing.augment_config(mixup_alpha=0.0).mixup_alpha == 0.0  # an explicit 0 turns it off
    assert fast.model_config(mixstyle_prob=None) == fast.model
    assert fast.model_config(mixstyle_prob=0.5) == dataclasses.replace(fast.model, mixstyle_prob=0.5)


def test_recipes_derive_from_the_shipped_one():
    from ser_edge import cli
    from ser_edge.train import recipes

    option = next(p for p in cli.train.params if p.name == "recipe")
    assert option.default == recipes.SHIPPED_RECIPE  # `ser-edge train` trains what ships
    # The one-change variants (_ema_with) derive from the 0.7.0 recipe, not a copy; so does
    # 0.8.0's, and what ships since 0.9.0 is 0.8.0's with only the learning rate changed.
    assert recipes.RECIPES["fast-cmn-speed-wide-ema"] is recipes._EMA
    assert recipes.SHIPPED_RECIPE == "fast-cmn-speed-wide-ema-long-lr2"  # 0.8.0's with lr 2e-3 (below)
    masks = recipes.RECIPES["fast-cmn-speed-wide-ema-masks"]
    assert masks.model == recipes._EMA.model and masks.train == recipes._EMA.train
    assert (masks.augment.freq_mask_bins, masks.augment.time_mask_frames) == (32, 80)
    shipped_masks = {k: getattr(recipes._EMA.augment, k) for k in ("freq_mask_bins", "time_mask_frames")}
    assert dataclasses.replace(masks.augment, **shipped_masks) == recipes._EMA.augment
    # The dropout row separates fast's two changes: default's dropout, the shipped lr.
    drop = recipes.RECIPES["fast-cmn-speed-wide-ema-drop"]
    default = recipes.RECIPES["default"].model
    assert (drop.model.conv_dropout, drop.model.transformer_dropout) == (default.conv_dropout, default.transformer_dropout)
    assert drop.model.conv_dropout > recipes._EMA.model.conv_dropout
    assert drop.train == recipes._EMA.train and drop.augment == recipes._EMA.augment
    assert dataclasses.replace(drop.model, conv_dropout=0.1, transformer_dropout=0.1) == recipes._EMA.model
    # The long-average row changes only the EMA decay, to a longer horizon than the shipped one.
    long = recipes.RECIPES["fast-cmn-speed-wide-ema-long"]
    assert long.model == recipes._EMA.model and long.augment == recipes._EMA.augment
    assert {**long.train, "ema_decay": recipes._EMA.train["ema_decay"]} == recipes._EMA.train
    assert long.train_config().ema_decay > recipes._EMA.train_config().ema_decay
    longer = recipes.RECIPES["fast-cmn-speed-wide-ema-longer"]
    assert (longer.model, longer.augment) == (long.model, long.augment)
    assert {**longer.train, "ema_decay": long.train["ema_decay"]} == long.train
    assert longer.train_config().ema_decay > long.train_config().ema_decay
    # The learning-rate row (shipped since 0.9.0) changes only 0.8.0's learning rate, upwards.
    lr2 = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2"]
    assert (lr2.model, lr2.augment) == (long.model, long.augment)
    assert {**lr2.train, "lr": long.train["lr"]} == long.train
    assert lr2.train_config().lr == 2 * long.train_config().lr
    # The next learning-rate row changes only the shipped recipe's learning rate, upwards.
    lr4 = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr4"]
    assert (lr4.model, lr4.augment) == (lr2.model, lr2.augment)
    assert {**lr4.train, "lr": lr2.train["lr"]} == lr2.train
    assert lr4.train_config().lr == 2 * lr2.train_config().lr
    # The pre-norm row changes only where the shipped recipe's encoder layers normalise.
    prenorm = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-prenorm"]
    assert (prenorm.augment, prenorm.train) == (lr2.augment, lr2.train)
    assert prenorm.model.transformer_norm_first and not lr2.model.transformer_norm_first
    assert dataclasses.replace(prenorm.model, transformer_norm_first=False) == lr2.model
    # The light row changes only the shipped recipe's transformer size, to 0.7.0's light one.
    light = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-light"]
    assert (light.augment, light.train) == (lr2.augment, lr2.train)
    old_light = recipes.RECIPES["fast-cmn-speed-wide-ema-light"].model
    assert (light.model.n_layers, light.model.ff_dim) == (old_light.n_layers, old_light.ff_dim) == (2, 256)
    assert dataclasses.replace(light.model, n_layers=lr2.model.n_layers, ff_dim=lr2.model.ff_dim) == lr2.model
    # The wide-CNN row widens the shipped recipe's second and third CNN blocks by half, nothing else.
    wide = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-widecnn"]
    assert (wide.augment, wide.train) == (lr2.augment, lr2.train)
    first, *later = lr2.model.conv_channels
    assert wide.model.conv_channels == (first, *(3 * c // 2 for c in later))
    assert dataclasses.replace(wide.model, conv_channels=lr2.model.conv_channels) == lr2.model
    # The narrow-masks row halves the shipped recipe's SpecAugment mask widths, nothing else.
    narrow = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-narrowmasks"]
    assert (narrow.model, narrow.train) == (lr2.model, lr2.train)
    assert (2 * narrow.augment.freq_mask_bins, 2 * narrow.augment.time_mask_frames) == (
        lr2.augment.freq_mask_bins, lr2.augment.time_mask_frames)
    assert dataclasses.replace(narrow.augment, freq_mask_bins=lr2.augment.freq_mask_bins,
                               time_mask_frames=lr2.augment.time_mask_frames) == lr2.augment
    # The batch-16 row halves the shipped recipe's batch and keeps its weight average's
    # horizon in epochs (twice the steps per epoch: 1 - decay halves), nothing else.
    small = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-batch16"]
    assert (small.model, small.augment) == (lr2.model, lr2.augment)
    assert 2 * small.train_config().batch_size == lr2.train_config().batch_size == 32
    assert 1 - small.train_config().ema_decay == pytest.approx((1 - lr2.train_config().ema_decay) / 2)
    assert {**small.train, "batch_size": 32, "ema_decay": lr2.train["ema_decay"]} == {**lr2.train, "batch_size": 32}
    # The batch-64 row doubles the shipped recipe's batch and keeps its weight average's
    # horizon in epochs (half the steps per epoch: 1 - decay doubles), nothing else.
    large = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-batch64"]
    assert (large.model, large.augment) == (lr2.model, lr2.augment)
    assert large.train_config().batch_size == 2 * lr2.train_config().batch_size == 64
    assert 1 - large.train_config().ema_decay == pytest.approx(2 * (1 - lr2.train_config().ema_decay))
    assert {**large.train, "batch_size": 32, "ema_decay": lr2.train["ema_decay"]} == {**lr2.train, "batch_size": 32}
    # The no-dropout row turns off the shipped recipe's dropout in both branches, nothing else.
    bare = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-nodrop"]
    assert (bare.augment, bare.train) == (lr2.augment, lr2.train)
    assert (lr2.model.conv_dropout, lr2.model.transformer_dropout) == (0.1, 0.1)
    assert (bare.model.conv_dropout, bare.model.transformer_dropout) == (0.0, 0.0)
    assert dataclasses.replace(bare.model, conv_dropout=0.1, transformer_dropout=0.1) == lr2.model
    # The SNR-20 row raises the lowest noise SNR of the shipped recipe from 10 to 20 dB, nothing else.
    gentle = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-snr20"]
    assert (gentle.model, gentle.train) == (lr2.model, lr2.train)
    assert lr2.augment.noise_snr_db == (10.0, 40.0) and gentle.augment.noise_snr_db == (20.0, 40.0)
    assert dataclasses.replace(gentle.augment, noise_snr_db=lr2.augment.noise_snr_db) == lr2.augment
    assert gentle.augment.noise_prob == lr2.augment.noise_prob > 0
    # The speed-30 row widens the shipped recipe's speed range by 0.1 on either side, nothing else.
    wider = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-speed30"]
    assert (wider.model, wider.train) == (lr2.model, lr2.train)
    low, high = lr2.augment.speed_range
    assert wider.augment.speed_range == pytest.approx((low - 0.1, high + 0.1))
    assert wider.augment.speed_prob == lr2.augment.speed_prob > 0
    assert dataclasses.replace(wider.augment, speed_range=lr2.augment.speed_range) == lr2.augment
    # The speed-all row perturbs every training window's speed instead of half, nothing else.
    every = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-speedall"]
    assert (every.model, every.train) == (lr2.model, lr2.train)
    assert lr2.augment.speed_prob == 0.5 and every.augment.speed_prob == 1.0
    assert every.augment.speed_range == lr2.augment.speed_range
    assert dataclasses.replace(every.augment, speed_prob=lr2.augment.speed_prob) == lr2.augment
    # The plateau-3 row waits 3 stale epochs instead of 5 before halving the rate, nothing else.
    plateau3 = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-plateau3"]
    assert (plateau3.model, plateau3.augment) == (lr2.model, lr2.augment)
    assert lr2.train_config().plateau_patience == 5 and plateau3.train_config().plateau_patience == 3
    assert {**plateau3.train, "plateau_patience": 5} == {**lr2.train, "plateau_patience": 5}
    # The warmup row warms the learning rate up over 5 epochs, nothing else.
    warm = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-warmup"]
    assert (warm.model, warm.augment) == (lr2.model, lr2.augment)
    assert lr2.train_config().warmup_epochs == 0 and warm.train_config().warmup_epochs == 5
    assert {**warm.train, "warmup_epochs": 0} == {**lr2.train, "warmup_epochs": 0}
    # The 8 kHz row changes only the mel filterbank's upper edge; every other recipe trains on
    # the default front-end.
    fmax8k = recipes.RECIPES["fast-cmn-speed-wide-ema-long-lr2-fmax8k"]
    assert (fmax8k.model, fmax8k.augment, fmax8k.train) == (lr2.model, lr2.augment, lr2.train)
    assert fmax8k.feature_config() == dataclasses.replace(FeatureConfig(), f_max_hz=8_000.0)
    assert FeatureConfig().f_max_hz == FeatureConfig().sample_rate / 2
    assert [name for name, r in recipes.RECIPES.items() if r.feature_config() != FeatureConfig()] == [
        "fast-cmn-speed-wide-ema-long-lr2-fmax8k"]


def test_cli_train_uses_the_recipes_front_end(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ser_edge import cli
    from ser_edge.edge_runtime.errors import SerEdgeError

    seen = []

    class Pipeline:  # stands in for train.pipeline: records the front-end, then stops the command
        @staticmethod
        def prepare(data_dir, feature_config, **kwargs):
            seen.append(feature_config)
            raise SerEdgeError(f"{data_dir}: stop here")

    monkeypatch.setattr(cli, "_train_modules", lambda: Pipeline)
    for recipe, f_max_hz in (("fast-cmn-speed-wide-ema-long-lr2-fmax8k", 8_000.0), (None, 24_000.0)):
        args = ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")]
        result = CliRunner().invoke(cli.main, args + (["--recipe", recipe] if recipe else []))
        assert result.exit_code != 0 and "stop here" in result.output
        assert seen.pop().f_max_hz == f_max_hz


def test_cli_export_offers_every_weight_storage():
    from ser_edge import cli
    from ser_edge.export.exporter import WEIGHT_DTYPES
    from ser_edge.train import recipes

    option = next(p for p in cli.export.params if p.name == "weights")
    assert tuple(option.type.choices) == WEIGHT_DTYPES
    assert recipes.SHIPPED_WEIGHTS in WEIGHT_DTYPES


def test_stats_pooling_ignores_the_order_of_time_steps():
    from ser_edge.models.parallel import ModelConfig, ParallelModel

    conv = torch.randn(2, 64, 4, 17)
    shuffled = conv[..., torch.randperm(17)]
    stats = ParallelModel(ModelConfig(conv_time_pool="stats"))
    torch.testing.assert_close(stats.pool_time(shuffled), stats.pool_time(conv))
    assert stats.pool_time(conv).shape == (2, 2 * 64 * 4)
    torch.testing.assert_close(stats.pool_time(conv)[:, : 64 * 4], conv.mean(-1).flatten(1))
    torch.testing.assert_close(stats.pool_time(conv)[:, 64 * 4 :], conv.std(-1, correction=0).flatten(1), atol=1e-4, rtol=1e-4)
    flatten = ParallelModel(ModelConfig())
    assert not torch.allclose(flatten.pool_time(shuffled), flatten.pool_time(conv))
    with pytest.raises(ValueError, match="conv_time_pool"):
        ModelConfig(conv_time_pool="max")


def test_squeeze_excite_scales_each_channel_by_a_gate_from_all_channels_means():
    from ser_edge.models.parallel import ConvBlock, ModelConfig, ParallelModel, SqueezeExcite

    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=4)
    x = torch.randn(3, 8, 5, 7)
    gate = se.gate(x.mean(dim=(2, 3)))
    assert gate.shape == (3, 8) and bool(((gate > 0) & (gate < 1)).all())
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    # The gate sees the whole map: changing one channel's values elsewhere rescales another channel.
    y = x.clone()
    y[:, 0] += 3.0
    assert not torch.allclose(se(y)[:, 1], se(x)[:, 1])
    # Off by default; on, the layers with weights keep their indices, so checkpoints keep their keys.
    plain, gated = ParallelModel(ModelConfig()), ParallelModel(ModelConfig(conv_se_reduction=4))
    assert not any(isinstance(m, SqueezeExcite) for m in plain.modules())
    assert sum(isinstance(m, SqueezeExcite) for m in gated.modules()) == len(ModelConfig().conv_channels)
    plain_keys = {k for k in plain.state_dict() if k.startswith("conv.")}
    assert plain_keys < {k for k in gated.state_dict() if k.startswith("conv.")}
    assert isinstance(ConvBlock(1, 4, (2, 2), 0.1, se_reduction=2)[4], SqueezeExcite)
    with pytest.raises(ValueError, match="conv_se_reduction"):
        ModelConfig(conv_se_reduction=-1)


def test_mixstyle_mixes_two_examples_channel_statistics_in_training_only():
    from ser_edge.models.parallel import STD_EPS, MixStyle, ModelConfig, ParallelModel

    torch.manual_seed(0)
    x = torch.randn(6, 4, 8, 10) * (0.5 + 3 * torch.rand(6, 4, 1, 1)) + 2 * torch.randn(6, 4, 1, 1)
    mean = x.mean(dim=(2, 3))
    std = torch.sqrt(x.var(dim=(2, 3)) + STD_EPS)
    out = MixStyle(1.0, 0.1).train()(x)
    out_mean = out.mean(dim=(2, 3))
    out_std = torch.sqrt(out.var(dim=(2, 3)) + STD_EPS)
    # Each example keeps its own normalised pattern...
    torch.testing.assert_close((out - out_mean[..., None, None]) / out_std[..., None, None],
                               (x - mean[..., None, None]) / std[..., None, None], atol=1e-4, rtol=1e-4)
    # ...under statistics that mix its own with one other example's, by one weight for all channels.
    mixed_with_another = 0
    for i in range(len(x)):
        fits = []
        for j in range(len(x)):
            weight = ((out_mean[i] - mean[j]) / (mean[i] - mean[j]))[0]
            if (torch.allclose(out_mean[i], weight * mean[i] + (1 - weight) * mean[j], atol=1e-4)
                    and torch.allclose(out_std[i], weight * std[i] + (1 - weight) * std[j], atol=1e-3)):
                fits.append((j, float(weight)))
        assert fits, f"example {i}: statistics are no mix of two examples'"
        mixed_with_another += any(j != i and weight < 0.99 for j, weight in fits)
    assert mixed_with_another >= len(x) // 2
    # Identity at inference, with probability 0, and never drawn from the RNG then.
    state = torch.get_rng_state()
    torch.testing.assert_close(MixStyle(1.0, 0.1).eval()(x), x, rtol=0, atol=0)
    torch.testing.assert_close(MixStyle(0.0, 0.1).train()(x), x, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)
    # A model with it on has the same weights and the same inference as one without.
    plain, mixing = (ParallelModel(ModelConfig(mixstyle_prob=p)).eval() for p in (0.0, 1.0))
    spectrogram = torch.randn(2, 1, 128, 563)
    with torch.no_grad():
        plain(spectrogram)
        mixing(spectrogram)
        mixing.load_state_dict(plain.state_dict())
        torch.testing.assert_close(mixing(spectrogram), plain(spectrogram), rtol=0, atol=0)
        mixing.train()
        assert not torch.allclose(mixing.embed(spectrogram), plain.train().embed(spectrogram))
    with pytest.raises(ValueError, match="mixstyle_prob"):
        ModelConfig(mixstyle_prob=1.5)


def test_grad_reverse_flips_and_scales_the_gradient():
    from ser_edge.train.heads import grad_reverse

    x = torch.randn(3, 5, requires_grad=True)
    out = grad_reverse(x, 0.3)
    torch.testing.assert_close(out, x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -0.3))


def _random_feature_set():
    """Random log-mels of 5 actors x 8 emotions (one window each), split 3/1/1 actors."""
    from ser_edge.train.data import Clip, Split

    clips = [Clip(f"{a}-{e}.wav", 3, 1, e, 1, 1, 1, a) for a in (1, 2, 3, 4, 5) for e in range(1, 9)]
    features = np.random.default_rng(0).normal(-40, 10, (len(clips), 32, SMALL_FEATURES.n_frames)).astype(np.float32)
    fs = FeatureSet(clips, features, None, np.arange(len(clips)), np.zeros(len(clips)))
    return fs, Split(train=(1, 2, 3), val=(4,), test=(5,))


def test_speaker_adversarial_mixup_training_runs_and_resumes(tmp_path):
    import json

    from ser_edge.train.trainer import CHECKPOINT, TrainConfig, Trainer

    fc = SMALL_FEATURES
    mc = small_model_config(utterance_norm=True, conv_time_pool="stats")
    fs, split = _random_feature_set()
    tc = TrainConfig(epochs=1, batch_size=8, speaker_adversarial=0.5, threads=1)
    aug = dataclasses.replace(AugmentConfig.off(), mixup_alpha=0.4)
    trainer = Trainer(tmp_path, fs, split, feature_config=fc, train_config=tc, model_config=mc, augment=aug)
    assert sorted(set(trainer.actor_index[trainer.rows["train"]])) == [0, 1, 2]
    assert set(trainer.actor_index[trainer.rows["val"]]) == {-1}
    trainer.run()
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["adversary"]["net.2.weight"].shape == (3, 128)
    # Resume for a second epoch: the adversary's state is restored, training goes on.
    Trainer(tmp_path, fs, split, feature_config=fc, train_config=dataclasses.replace(tc, epochs=2), model_config=mc,
            augment=aug).run()
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert len(history) == 2
    # The adversary's own loss is logged apart from the total, which also holds the emotion loss.
    for record in history:
        assert set(record["train_head_losses"]) == {"adversary"}
        assert 0 < record["train_head_losses"]["adversary"] < record["train_loss"]


def test_intensity_head_learns_the_file_name_intensity_and_resumes(tmp_path):
    """The auxiliary head's target is file-name field 4 and its loss reaches the shared
    model (the same run with other intensity labels ends with other weights); it is saved in
    the checkpoint, restored on resume, and kept out of the model's weights."""
    import json

    from ser_edge.train.trainer import BEST_WEIGHTS, CHECKPOINT, TrainConfig, Trainer

    fc = SMALL_FEATURES
    mc = small_model_config(utterance_norm=True)
    normal, split = _random_feature_set()
    strong = [dataclasses.replace(c, intensity=2) if c.emotion > 1 and c.actor % 2 else c for c in normal.clips]
    mixed = FeatureSet(strong, normal.features, None, normal.window_clip, normal.window_start_s)

    def train(run_dir, fs, epochs, weight):
        tc = TrainConfig(epochs=epochs, batch_size=8, threads=1, intensity_aux=weight)
        trainer = Trainer(run_dir, fs, split, feature_config=fc, train_config=tc, model_config=mc,
                          augment=AugmentConfig.off())
        trainer.run()
        return trainer, torch.load(run_dir / CHECKPOINT, weights_only=True)

    trainer, saved = train(tmp_path / "mixed", mixed, 1, 0.5)
    expected = [1 if c.emotion > 1 and c.actor % 2 else 0 for c in strong]
    assert trainer.intensity_index.tolist() == expected and 0 < sum(expected) < len(expected)
    embed_dim = saved["model"]["classifier.weight"].shape[1]
    assert saved["intensity"]["linear.weight"].shape == (2, embed_dim)
    _, all_normal = train(tmp_path / "normal", normal, 1, 0.5)
    assert not torch.equal(saved["model"]["classifier.weight"], all_normal["model"]["classifier.weight"])
    _, plain = train(tmp_path / "plain", mixed, 1, 0.0)
    assert "intensity" not in plain
    assert "train_head_losses" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())["history"][0]
    head_loss = json.loads((tmp_path / "mixed" / "metrics.json").read_text())["history"][0]["train_head_losses"]
    assert set(head_loss) == {"intensity"} and head_loss["intensity"] > 0
    best = torch.load(tmp_path / "mixed" / BEST_WEIGHTS, weights_only=True)["model"]
    assert best.keys() == plain["model"].keys()  # nothing of the head in the model's weights
    # Resume for a second epoch: the head's state is restored and trained on.
    _, resumed = train(tmp_path / "mixed", mixed, 2, 0.5)
    assert len(json.loads((tmp_path / "mixed" / "metrics.json").read_text())["history"]) == 2
    assert not torch.equal(resumed["intensity"]["linear.weight"], saved["intensity"]["linear.weight"])


def test_weight_ema_is_what_validation_judges_and_it_resumes(tmp_path):
    from ser_edge.train.trainer import BEST_WEIGHTS, CHECKPOINT, TrainConfig, Trainer

    fc = SMALL_FEATURES
    mc = small_model_config(utterance_norm=True)
    fs, split = _random_feature_set()

    def train(run_dir, epochs, decay):
        tc = TrainConfig(epochs=epochs, batch_size=8, threads=1, ema_decay=decay)
        Trainer(run_dir, fs, split, feature_config=fc, train_config=tc, model_config=mc,
                augment=AugmentConfig.off()).run()
        return (torch.load(run_dir / BEST_WEIGHTS, weights_only=True)["model"],
                torch.load(run_dir / CHECKPOINT, weights_only=True))

    # One epoch: the best weights are the averaged model's, not the last step's.
    best, saved = train(tmp_path / "one", 1, 0.9)
    averaged = {k.removeprefix("module."): v for k, v in saved["ema"].items() if k.startswith("module.")}
    assert averaged.keys() == best.keys()
    assert all(torch.equal(best[k], averaged[k]) for k in best)
    assert not all(torch.equal(best[k], saved["model"][k]) for k in best)
    assert int(saved["ema"]["n_averaged"]) == 3  # 24 training clips / batch 8 = 3 steps
    # Two epochs at once == one epoch, then resumed for the second (the average is restored).
    straight, _ = train(tmp_path / "straight", 2, 0.9)
    train(tmp_path / "resumed", 1, 0.9)
    resumed, _ = train(tmp_path / "resumed", 2, 0.9)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_warmup_scale_rises_linearly_to_one_then_stays():
    from ser_edge.train.trainer import warmup_scale

    # Two warmup epochs of three batches: steps 1..6 of 6, then the full rate.
    scales = [warmup_scale(epoch, batch, 3, 2) for epoch in (1, 2, 3) for batch in range(3)]
    assert scales == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 1.0, 1.0, 1.0])
    assert warmup_scale(1, 0, 3, 0) == 1.0  # off


def test_warmup_trains_each_step_at_its_share_and_the_plateau_starts_after_it(tmp_path, monkeypatch):
    from ser_edge.train.trainer import CHECKPOINT, TrainConfig, Trainer

    fs, split = _random_feature_set()
    stepped: list[float] = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        stepped.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    def train(run_dir, epochs, warmup):
        tc = TrainConfig(epochs=epochs, batch_size=8, threads=1, lr=1e-3, warmup_epochs=warmup,
                         plateau_patience=0, early_stop_patience=99)
        metrics = Trainer(run_dir, fs, split, feature_config=SMALL_FEATURES, train_config=tc,
                          model_config=small_model_config(utterance_norm=True), augment=AugmentConfig.off()).run()
        return metrics, torch.load(run_dir / CHECKPOINT, weights_only=True)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    metrics, saved = train(tmp_path / "warm", 3, 2)
    # 24 training clips / batch 8 = 3 steps per epoch: 1/6 .. 6/6 of the rate, then all of it.
    assert stepped[:6] == pytest.approx([1e-3 * s / 6 for s in range(1, 7)])
    assert stepped[6:9] == pytest.approx([1e-3] * 3)
    # The plateau (patience 0) steps only after the warmup: one step, at epoch 3.
    assert saved["plateau"]["last_epoch"] == 1
    assert [r["lr"] for r in metrics["history"][:2]] == [1e-3, 1e-3]
    # Without the warmup the plateau steps every epoch and every step trains at the rate.
    stepped.clear()
    _, plain = train(tmp_path / "plain", 3, 0)
    assert plain["plateau"]["last_epoch"] == 3
    assert stepped[:3] == pytest.approx([1e-3] * 3)
    # Three epochs at once == two, then resumed for the third (the warmup's end included).
    train(tmp_path / "resumed", 2, 2)
    _, resumed = train(tmp_path / "resumed", 3, 2)
    assert all(torch.equal(saved["model"][k], resumed["model"][k]) for k in saved["model"])
    assert not all(torch.equal(saved["model"][k], plain["model"][k]) for k in saved["model"])


def test_mixstyle_trains_and_resumes_exactly(tmp_path):
    """MixStyle's draws come from the checkpointed torch RNG: two epochs at once equal one
    epoch resumed for a second; and it changes what is learned."""
    from ser_edge.train.trainer import CHECKPOINT, TrainConfig, Trainer

    fs, split = _random_feature_set()

    def train(run_dir, epochs, prob):  # the last step's weights
        tc = TrainConfig(epochs=epochs, batch_size=8, threads=1)
        Trainer(run_dir, fs, split, feature_config=SMALL_FEATURES, train_config=tc,
                model_config=small_model_config(utterance_norm=True, mixstyle_prob=prob),
                augment=AugmentConfig.off()).run()
        return torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]

    straight = train(tmp_path / "straight", 2, 1.0)
    train(tmp_path / "resumed", 1, 1.0)
    resumed = train(tmp_path / "resumed", 2, 1.0)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    plain = train(tmp_path / "plain", 2, 0.0)
    assert not all(torch.equal(straight[k], plain[k]) for k in straight)


def test_resuming_another_recipe_or_split_fails_before_the_run_is_touched(tmp_path):
    from ser_edge.train.data import Split
    from ser_edge.train.trainer import ResumeMismatchError, TrainConfig, Trainer, config_changes

    fc, mc = SMALL_FEATURES, small_model_config(utterance_norm=True)
    fs, split = _random_feature_set()
    tc = TrainConfig(epochs=1, batch_size=8, threads=1)

    def trainer(train_config=tc, run_split=split):
        return Trainer(tmp_path, fs, run_split, feature_config=fc, train_config=train_config, model_config=mc,
                       augment=AugmentConfig.off())

    trainer().run()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for other, changed in ((trainer(dataclasses.replace(tc, ema_decay=0.9)), "train.ema_decay"),
                           (trainer(run_split=Split(train=(1, 2, 4), val=(3,), test=(5,))), "split.train")):
        with pytest.raises(ResumeMismatchError, match=changed) as caught:
            other.run()
        assert caught.value.path == str(tmp_path)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing overwritten
    # Where it runs and how long it may run are not the recipe: those resume.
    assert trainer(dataclasses.replace(tc, epochs=2, threads=2, early_stop_patience=3)).check_resumable() is not None
    # An older run's config lacks options added since; they are not compared.
    config = trainer().config_dict()
    older = {**config, "train": {k: v for k, v in config["train"].items() if k != "ema_decay"}}
    assert config_changes(config, older) == []
    # Other BLAS kernels that compute the same features resume; other features are refused,
    # and the message names both kernel sets.
    assert config_changes({**config, "front_end_blas": "openblas 0.3.31 Zen"}, config) == []
    moved = {**config, "front_end": "0" * 16, "front_end_blas": "openblas 0.3.31 Sandybridge"}
    with pytest.raises(ResumeMismatchError, match=r"different front_end; BLAS kernels openblas 0.3.31 Sandybridge "
                                                  r"against openblas \S+ \w+\)"):
        trainer().check_resumable(moved)
    # Kernels are named only where the features differ: another recipe is just that.
    with pytest.raises(ResumeMismatchError, match=r"different train.ema_decay\); ") as caught:
        trainer().check_resumable({**config, "train": {**config["train"], "ema_decay": 0.5},
                                   "front_end_blas": "openblas 0.3.31 Sandybridge"})
    assert "BLAS" not in str(caught.value)


def test_feature_cache_hits_across_path_spellings_and_rewrites_atomically(tmp_path, monkeypatch):
    import os

    from ser_edge.train import data
    from ser_edge.train.data import Clip, load_feature_set

    fc = SMALL_FEATURES
    (tmp_path / "d").mkdir()
    absolute = [Clip(str(tmp_path / "d" / f"{e}.wav"), 3, 1, e, 1, 1, 1, 1) for e in (1, 2)]
    monkeypatch.chdir(tmp_path)
    relative = [dataclasses.replace(c, path=os.path.join("d", Path(c.path).name)) for c in absolute]
    calls = []

    def fake_compute(clips, config, hop_s):
        calls.append(len(clips))
        n = len(clips)
        return (list(clips), np.full((n, 32, config.n_frames), len(calls), np.float32),
                np.zeros((n, config.n_samples), np.float32), np.arange(n), np.zeros(n))

    monkeypatch.setattr(data, "compute_features", fake_compute)
    first = load_feature_set(absolute, fc, cache_dir=tmp_path / "cache", content_hash="h")
    again = load_feature_set(relative, fc, cache_dir=tmp_path / "cache", content_hash="h")
    assert calls == [2]  # the relative spelling hit the cache
    assert [c.path for c in again.clips] == [c.path for c in relative]
    features_file = next((tmp_path / "cache").glob("features-*/features.npy"))
    inode = features_file.stat().st_ino
    # Another clip list rewrites the cache: new files replace the old ones (new inode), and
    # the array a running process has memory-mapped still reads its complete old data.
    load_feature_set(absolute[:1], fc, cache_dir=tmp_path / "cache", content_hash="h")
    assert calls == [2, 1] and features_file.stat().st_ino != inode
    assert float(again.features[1].mean()) == 1.0 and float(first.features[0, 0, 0]) == 1.0
    assert not list((tmp_path / "cache").glob("features-*/.*.tmp"))


def _cli_with_fake_data(monkeypatch, cross_validate):
    """``ser-edge train`` on 20 fake actors, with ``cross_validate`` standing in for the
    pipeline's; returns a click test runner."""
    from click.testing import CliRunner

    from ser_edge.train import pipeline
    from ser_edge.train.data import Clip

    clips = [Clip(f"a{a}.wav", 3, 1, 1, 1, 1, 1, a) for a in ACTORS]
    prepared = pipeline.Prepared(FeatureSet(clips, None, None, np.arange(len(clips)), np.zeros(len(clips))), "h", [], "/d")
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: prepared)
    monkeypatch.setattr(pipeline, "cross_validate", cross_validate)
    return CliRunner()


def test_cli_split_seed_defaults_to_seed_and_is_separate(monkeypatch, tmp_path):
    from ser_edge.cli import main

    seen = []
    runner = _cli_with_fake_data(
        monkeypatch, lambda prepared, folds, out, *, seed, train_config, **k: seen.append((seed, train_config.seed)))
    for extra, want in (([], (3, 3)), (["--split-seed", "0"], (0, 3))):
        result = runner.invoke(main, ["train", str(tmp_path), "--folds", "5", "--seed", "3", "--quiet", *extra])
        assert result.exit_code == 0, result.output
        assert seen[-1] == want


def test_evaluation_only_keeps_the_rows_of_the_chosen_actors():
    from ser_edge.train.evaluate import Evaluation

    probs = np.eye(4, 8)
    ev = Evaluation([3, 7], ("a",) * 8, np.array([0, 1, 2, 0]), probs, [], np.array([3, 7, 3, 7]))
    three = ev.only([3])
    assert three.actors == [3] and three.y_true.tolist() == [0, 2]
    np.testing.assert_array_equal(three.probabilities, probs[[0, 2]])
    assert three.summary["accuracy"] == 1.0 and ev.only([7]).summary["accuracy"] == 0.5
    with pytest.raises(ValueError, match=r"actors \[5\] were not evaluated"):
        ev.only([5])
    with pytest.raises(ValueError, match="does not record"):
        dataclasses.replace(ev, clip_actors=None).only([3])


def test_an_evaluation_on_actors_the_model_has_seen_says_so():
    import json

    from ser_edge.train.evaluate import Evaluation, _exported_split, not_held_out

    split = {"train": [1, 2, 3], "val": [4], "test": [5, 6]}
    assert not_held_out(split, [5, 6]) == {} and not_held_out(None, [1]) == {}
    assert not_held_out(split, [6, 4, 2, 1]) == {"train": [1, 2], "val": [4]}
    ev = Evaluation([2, 4, 5], ("a",) * 8, np.array([0, 1, 2]), np.eye(3, 8), [], np.array([2, 4, 5]),
                    not_held_out(split, [2, 4, 5]))
    head = ev.report().splitlines()[1]
    assert head == ("NOT HELD OUT: the model was trained on actors [2], validated (checkpoint chosen) on actors [4]; "
                    "not a speaker-independent score")
    assert ev.summary["not_held_out"] == {"train": [2], "val": [4]}
    held_out = ev.only([5])
    assert "not_held_out" not in held_out.summary and "NOT HELD OUT" not in held_out.report()
    assert ev.only([4, 5]).not_held_out == {"val": [4]}
    assert _exported_split({"provenance": json.dumps({"split_actors": split})}) == split
    assert _exported_split({}) is None and _exported_split({"provenance": "not json"}) is None


def test_a_failed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    from ser_edge.train.trainer import save_atomic

    path = tmp_path / "checkpoint.pt"
    save_atomic({"epoch": 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # "cannot pickle a local object"
        save_atomic({"epoch": 2, "unpicklable": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_front_end_rounding_change_makes_a_new_feature_cache_and_refuses_old_runs(tmp_path, monkeypatch):
    """0.6.1's faster log-mel changed 17% of values by up to 1.5e-5. No setting recorded that,
    so the feature cache and finished member runs were reused, and the model they made could
    not be rebuilt from scratch. The front-end fingerprint makes such a change visible."""
    from ser_edge.train import data
    from ser_edge.train.trainer import ResumeMismatchError, TrainConfig, Trainer

    fc = SMALL_FEATURES
    fs, split = _random_feature_set()
    run = Trainer(tmp_path, fs, split, feature_config=fc, train_config=TrainConfig(epochs=1, batch_size=8, threads=1),
                  model_config=small_model_config(), augment=AugmentConfig.off())
    fingerprint, key = data.front_end_fingerprint(fc), data._cache_key(fc, "h", 1.0)
    assert run.config_dict()["front_end"] == fingerprint == data.front_end_fingerprint(dataclasses.replace(fc))
    assert data.front_end_fingerprint(dataclasses.replace(fc, n_mels=24)) != fingerprint
    run.run()

    real_log_mel = data.log_mel
    # One float32 step up on every value: far below any tolerance a parity test would use.
    monkeypatch.setattr(data, "log_mel", lambda windows, config: np.nextafter(
        real_log_mel(windows, config), np.float32(np.inf), dtype=np.float32))
    data.front_end_fingerprint.cache_clear()
    try:
        assert data.front_end_fingerprint(fc) != fingerprint
        assert data._cache_key(fc, "h", 1.0) != key  # the old cache is not read
        with pytest.raises(ResumeMismatchError, match="front_end"):
            run.check_resumable()
    finally:
        data.front_end_fingerprint.cache_clear()  # no fingerprint of the patched front-end outlives the test


def test_distillation_loss_is_t2_kl_and_zero_at_the_teacher():
    from ser_edge.train.distill import distillation_loss

    gen = torch.Generator().manual_seed(0)
    teacher_logits, student_logits = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    for temperature in (1.0, 2.0):
        teacher = torch.softmax(teacher_logits / temperature, dim=1)
        at_teacher = distillation_loss(teacher_logits, teacher, temperature)
        assert abs(float(at_teacher)) < 1e-6
        student = torch.softmax(student_logits / temperature, dim=1)
        kl = (teacher * (teacher.log() - student.log())).sum(1).mean()
        torch.testing.assert_close(distillation_loss(student_logits, teacher, temperature), temperature**2 * kl)
    # Its gradient moves the student towards the teacher.
    logits = student_logits.clone().requires_grad_(True)
    teacher = torch.softmax(teacher_logits / 2, dim=1)
    before = distillation_loss(logits, teacher, 2.0)
    before.backward()
    before = before.detach()
    after = distillation_loss(logits.detach() - 0.5 * logits.grad, teacher, 2.0)
    assert float(after) < float(before)


def _emotion_feature_set():
    """Log-mels of 5 actors x 8 emotions with an emotion-specific spectral pattern, split 3/1/1;
    and the same features labelled with the next emotion (a teacher with other answers)."""
    from ser_edge.train.data import Clip, Split

    clips = [Clip(f"{a}-{e}.wav", 3, 1, e, 1, 1, 1, a) for a in (1, 2, 3, 4, 5) for e in range(1, 9)]
    rng = np.random.default_rng(0)
    patterns = rng.normal(0, 10, (8, 32, 1))
    features = (rng.normal(-40, 10, (len(clips), 32, SMALL_FEATURES.n_frames))
                + patterns[[c.emotion - 1 for c in clips]]).astype(np.float32)
    fs = FeatureSet(clips, features, None, np.arange(len(clips)), np.zeros(len(clips)))
    rotated = [dataclasses.replace(c, emotion=c.emotion % 8 + 1) for c in clips]
    return fs, FeatureSet(rotated, features, None, fs.window_clip, fs.window_start_s), Split(train=(1, 2, 3), val=(4,), test=(5,))


def test_a_distilled_student_learns_its_teachers_answers_and_records_them(tmp_path):
    """A teacher trained on shifted labels; a student distilled from it alone (weight 1) ends
    agreeing with it, where the same student trained on the labels does not. The student's
    config names the teacher and its weights' digest; resuming with another teacher fails."""
    import json

    from ser_edge.train.trainer import CHECKPOINT, ResumeMismatchError, TrainConfig, Trainer, build_model, predict_windows

    fs, shifted, split = _emotion_feature_set()
    mc = small_model_config()
    tc = TrainConfig(epochs=8, batch_size=8, threads=1, lr=3e-3)

    def trainer(run_dir, feature_set, **kwargs):
        teachers = kwargs.pop("teachers", ())
        return Trainer(run_dir, feature_set, split, feature_config=SMALL_FEATURES, model_config=mc,
                       train_config=dataclasses.replace(tc, **kwargs), augment=AugmentConfig.off(),
                       teachers=teachers, progress=False)

    teacher_run = trainer(tmp_path / "teacher", shifted)
    teacher_run.run()
    trainer(tmp_path / "student", fs, distill_weight=1.0, distill_temperature=1.0, teachers=[tmp_path / "teacher"]).run()
    trainer(tmp_path / "plain", fs).run()

    rows = teacher_run.rows["train"]
    scaler = Scaler.load(tmp_path / "teacher" / "scaler.npz")

    def answers(run_dir, key):
        model = build_model(mc, SMALL_FEATURES, "cpu")
        saved = torch.load(run_dir / key, weights_only=True)
        model.load_state_dict(saved["model"])
        return predict_windows(model, fs.features, rows, scaler, "cpu").argmax(1)

    taught = answers(tmp_path / "teacher", "best_parallel_ser.pt")
    assert (taught == shifted.labels[rows]).mean() > 0.9  # the teacher learned the shifted labels
    # The students' last weights (the student's own validation labels disagree with its teacher).
    student, plain = answers(tmp_path / "student", CHECKPOINT), answers(tmp_path / "plain", CHECKPOINT)
    assert (plain == fs.labels[rows]).mean() > 0.9
    assert (student == taught).mean() > (plain == taught).mean() + 0.5

    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["train"]["distill_weight"] == 1.0
    assert config["teachers"]["runs"] == [str(tmp_path / "teacher")]
    assert len(config["teachers"]["weights_sha256"][0]) == 16
    with pytest.raises(ResumeMismatchError, match="teachers.weights_sha256"):
        trainer(tmp_path / "student", fs, epochs=9, distill_weight=1.0, distill_temperature=1.0,
                teachers=[tmp_path / "plain"]).run()


def test_a_teacher_must_be_a_finished_run_of_the_students_split(tmp_path):
    from ser_edge.train.data import Split
    from ser_edge.train.distill import TeacherError
    from ser_edge.train.trainer import TrainConfig, Trainer

    fs, _, split = _emotion_feature_set()
    tc = TrainConfig(epochs=1, batch_size=8, threads=1)

    def trainer(run_dir, run_split, teachers=(), weight=0.0):
        return Trainer(run_dir, fs, run_split, feature_config=SMALL_FEATURES, model_config=small_model_config(),
                       train_config=dataclasses.replace(tc, distill_weight=weight), augment=AugmentConfig.off(),
                       teachers=teachers, progress=False)

    other = Split(train=(1, 2, 4), val=(3,), test=(5,))
    trainer(tmp_path / "other", other).run()
    with pytest.raises(TeacherError, match="another actor split") as caught:
        trainer(tmp_path / "student", split, [tmp_path / "other"], 0.5).run()
    assert caught.value.path == str(tmp_path / "other")
    with pytest.raises(TeacherError, match="not a trained run folder"):
        trainer(tmp_path / "student", split, [tmp_path / "missing"], 0.5).run()
    with pytest.raises(ValueError, match="teacher runs and a distill weight"):
        trainer(tmp_path / "student", split, [tmp_path / "other"], 0.0)
    with pytest.raises(ValueError, match="teacher runs and a distill weight"):
        trainer(tmp_path / "student", split, (), 0.5)


def test_cli_distillation_options(monkeypatch, tmp_path):
    from ser_edge.cli import main

    seen = []
    runner = _cli_with_fake_data(
        monkeypatch, lambda prepared, folds, out, *, train_config, teachers, **k: seen.append((train_config, teachers)))
    base = ["train", str(tmp_path), "--folds", "5", "--quiet"]
    result = runner.invoke(main, [*base, "--teacher", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen[-1][0].distill_weight == 0.5 and seen[-1][1] == (str(tmp_path),)  # the default weight
    result = runner.invoke(main, [*base, "--teacher", str(tmp_path), "--distill", "0.7", "--distill-temperature", "3"])
    assert result.exit_code == 0 and (seen[-1][0].distill_weight, seen[-1][0].distill_temperature) == (0.7, 3.0)
    for extra, message in ((["--distill", "0.5"], "--distill needs the teachers' run folders"),
                           (["--teacher", str(tmp_path), "--distill", "0"], "--teacher needs a --distill weight")):
        result = runner.invoke(main, [*base, *extra])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(seen) == 2


@pytest.mark.parametrize("extra, message", [
    (["--only-fold", "2"], "--only-fold needs --folds"),
    (["--folds", "1"], "--folds must be 0 (one split) or at least 2"),
    (["--folds", "5", "--only-fold", "5"], "--only-fold 5 is not below --folds 5"),
    (["--init-member", "1"], "--init-member needs --init-from"),
    (["--actors", "1,x"], "--actors must be comma-separated actor numbers, got '1,x'"),
    (["--distill", "0.5"], "--distill needs the teachers' run folders"),
])
def test_train_usage_errors_come_before_the_data_is_read(monkeypatch, tmp_path, extra, message):
    """Preparing the features of a data folder can take minutes: a wrong option combination
    must fail at once, not after it."""
    from click.testing import CliRunner

    from ser_edge.cli import main
    from ser_edge.train import pipeline

    read = []
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: read.append(a))
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "run"), *extra])
    assert result.exit_code == 2 and f"error: {message}" in result.output and "Traceback" not in result.output
    assert read == []


def test_cli_actors_restrict_the_folds_and_name_missing_ones(monkeypatch, tmp_path):
    from ser_edge.cli import main

    seen = []
    runner = _cli_with_fake_data(monkeypatch, lambda prepared, folds, out, *, actors, **k: seen.append(actors))
    base = ["train", str(tmp_path), "--folds", "2", "--quiet", "--actors"]
    result = runner.invoke(main, [*base, "8,1,2,3,4,6,7,2"])
    assert result.exit_code == 0, result.output
    assert seen == [[1, 2, 3, 4, 6, 7, 8]]
    result = runner.invoke(main, [*base, "1,2,3,4,5,12"])
    assert result.exit_code == 2 and f"error: {tmp_path}: no clips of actors [5, 12]" in result.output


def test_outputs_that_cannot_be_written_fail_before_any_work(monkeypatch, tmp_path):
    """A file where a folder must be: one line and exit 2 before features, training, export
    or benchmarks run, not a traceback minutes later."""
    from click.testing import CliRunner

    from ser_edge import bench
    from ser_edge.cli import main
    from ser_edge.export import exporter
    from ser_edge.train import pipeline

    worked = []
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: worked.append("prepare"))
    monkeypatch.setattr(exporter, "export_run", lambda *a, **k: worked.append("export"))
    monkeypatch.setattr(bench, "run", lambda *a, **k: worked.append("bench"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    bad_targets = tmp_path / "targets.json"
    bad_targets.write_text("{not json")
    cases = [
        (["train", str(tmp_path), "--out", f"{blocker}/run"], f"--out {blocker}/run: {blocker} is a file, not a folder"),
        (["train", str(tmp_path), "--cache", f"{blocker}/c"], f"--cache {blocker}/c: {blocker} is a file, not a folder"),
        (["export", str(run), "--out", f"{blocker}/m.onnx"], f"--out {blocker}/m.onnx: {blocker} is a file"),
        (["evaluate", "--model", "m.onnx", "--json", f"{blocker}/x/y.json"], f"--json {blocker}/x/y.json: {blocker} is a file"),
        (["evaluate", "--model", "m.onnx", "--snr", "20", "--plot", f"{blocker}/p.png"], f"--plot {blocker}/p.png: {blocker} is a file"),
        (["bench", "--json", f"{blocker}/b.json"], f"--json {blocker}/b.json: {blocker} is a file"),
        (["bench", "--targets", str(bad_targets)], f"--targets {bad_targets}: not a readable JSON file"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert f"error: {message}" in result.output and "Traceback" not in result.output
    assert worked == []


def test_why_unwritable_names_the_file_in_the_way(tmp_path):
    from ser_edge.outputs import why_unwritable

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert why_unwritable(tmp_path / "new" / "deeper" / "x.json") is None  # missing folders are made later
    assert why_unwritable(tmp_path / "run", folder=True) is None
    assert why_unwritable(blocker / "x.json") == f"{blocker} is a file, not a folder"
    assert why_unwritable(blocker / "a" / "b", folder=True) == f"{blocker} is a file, not a folder"
    assert why_unwritable(blocker, folder=True) == f"{blocker} is a file, not a folder"
    assert why_unwritable(tmp_path, folder=True) is None
    assert why_unwritable(tmp_path) == f"{tmp_path} is a folder, not a file"  # a report cannot replace a folder
    assert why_unwritable(blocker) is None  # an existing file is overwritten


def test_why_unwritable_names_what_this_process_may_not_write(tmp_path, monkeypatch):
    """The permission branch. Sessions run as root, for whom every mode bit allows writing,
    so the test denies access through ``os.access``, the call the check makes."""
    import os

    from ser_edge import outputs

    locked = tmp_path / "locked"
    locked.mkdir()
    report = tmp_path / "report.json"
    report.write_text("{}")
    real_access = os.access
    denied = {str(locked), str(report)}
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: str(path) not in denied and real_access(path, mode))
    assert outputs.why_unwritable(locked / "new" / "x.json") == f"no permission to write in {locked}"
    assert outputs.why_unwritable(locked, folder=True) == f"no permission to write in {locked}"
    assert outputs.why_unwritable(report) == f"no permission to write {report}"
    assert outputs.why_unwritable(tmp_path / "other.json") is None


def test_rebuild_refuses_an_unwritable_folder_before_training(monkeypatch, tmp_path, capsys):
    from ser_edge.train import rebuild

    monkeypatch.setattr(rebuild, "train_members", lambda *a, **k: pytest.fail("trained before checking its folders"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for option in ("--out-dir", "--run-dir", "--cache"):
        with pytest.raises(SystemExit) as exit_info:
            rebuild.main(["--data", str(tmp_path), option, str(blocker / "x")])
        assert exit_info.value.code == 2
        assert f"error: {option} {blocker / 'x'}: {blocker} is a file, not a folder" in capsys.readouterr().err


def test_a_weight_average_that_spans_many_patiences_is_warned_about():
    from ser_edge.train.trainer import ema_lag_warning

    assert ema_lag_warning(0.997, 30, 12) is None  # RAVDESS's 16 training actors: about 11 epochs
    assert ema_lag_warning(0.997, 27, 12) is None  # a CV fold's 14: about 12
    assert ema_lag_warning(0.0, 1, 12) is None  # off
    tiny = ema_lag_warning(0.997, 1, 12)  # 32 clips: about 333 epochs
    assert tiny is not None and "spans about 333 epochs" in tiny and "after 12" in tiny
    suggested = float(tiny.split("--ema-decay ")[1].split()[0])
    assert ema_lag_warning(suggested, 1, 12) is None and 0 < suggested < 0.997
    assert ema_lag_warning(0.997, 13, 12) is not None and ema_lag_warning(0.997, 14, 12) is None  # 25.6 vs 23.8 epochs


def test_rebuild_pins_the_shipped_blas_kernels_only_where_they_exist():
    """The rebuild runs with the shipped members' OpenBLAS kernels on x86-64 CPUs with AVX2,
    leaves a kernel set the user chose alone, and pins nothing where the kernels do not exist."""
    from ser_edge.train.rebuild import blas_pin
    from ser_edge.train.recipes import SHIPPED_FRONT_END_BLAS

    assert blas_pin({}, machine="x86_64", has_avx2=True) == SHIPPED_FRONT_END_BLAS
    assert blas_pin({"PATH": "/bin"}, machine="AMD64", has_avx2=True) == SHIPPED_FRONT_END_BLAS  # Windows' name
    assert blas_pin({"OPENBLAS_CORETYPE": "SkylakeX"}, machine="x86_64", has_avx2=True) is None
    assert blas_pin({}, machine="x86_64", has_avx2=False) is None
    assert blas_pin({}, machine="aarch64", has_avx2=False) is None
    assert blas_pin({}, machine="arm64", has_avx2=True) is None


def test_blas_kernels_names_the_kernel_set_openblas_was_told_to_use():
    """What the runs and the provenance record is the kernel set numpy's OpenBLAS really
    uses: pinning one through OPENBLAS_CORETYPE shows up in it."""
    from ser_edge.train.rebuild import cpu_has_avx2

    if not cpu_has_avx2():
        pytest.skip("not an x86-64 CPU with AVX2: OpenBLAS's x86 kernel sets cannot be pinned here")
    _, kernels = front_end_with_blas(dataclasses.asdict(SMALL_FEATURES), "Sandybridge")  # AVX: every AVX2 CPU runs it
    assert kernels.split()[0] == "openblas" and kernels.split()[-1] == "Sandybridge"
