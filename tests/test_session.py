"""EmotionClassifier: contract checks at load, real outputs, invariances, timeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ser_edge.edge_runtime import EmotionClassifier, FeatureConfig
from ser_edge.edge_runtime.errors import ModelError, NotAudioError, SilentAudioError

from conftest import LABELS, band_model, tone

LOW_HZ, HIGH_HZ = 300.0, 10_000.0  # mel groups 0 ("neutral") and 6 ("disgust") of the band model


def test_reads_labels_and_feature_config(tiny_model):
    clf = EmotionClassifier(tiny_model)
    assert clf.labels == tuple(LABELS)
    assert clf.feature_config == FeatureConfig()
    assert clf.threads == 1


def test_threads_is_keyword_only(tiny_model):
    with pytest.raises(TypeError):
        EmotionClassifier(tiny_model, 2)  # type: ignore[misc]


@pytest.mark.parametrize("threads", [0, -1, 2.5, "2", True])
def test_threads_must_be_a_whole_number(tiny_model, threads):
    with pytest.raises(ValueError, match=f"threads must be a whole number >= 1, got {threads!r}"):
        EmotionClassifier(tiny_model, threads=threads)


def test_wrong_argument_types_say_what_was_meant(tiny_model, tmp_path):
    from ser_edge.edge_runtime.errors import SampleRateError

    clf = EmotionClassifier(tiny_model)
    with pytest.raises(TypeError, match="use predict_file for files"):
        clf.predict(str(tmp_path / "clip.wav"), 16_000)
    with pytest.raises(TypeError, match="a path or a binary file object, got int"):
        clf.predict_file(3)  # soundfile would read file descriptor 3
    for rate in ("16000", 16000.5, 16000.0):
        with pytest.raises(SampleRateError, match=f"sample rate must be a whole number of Hz, got {rate!r}"):
            clf.predict(tone(HIGH_HZ, 1.0, 16_000), rate)
    signal = tone(HIGH_HZ, 1.0, 48_000)
    assert clf.predict(signal, np.int32(48_000)).label == clf.predict(signal, 48_000).label == "disgust"


@pytest.mark.parametrize("bounds", [{"min_duration_s": -1.0}, {"min_duration_s": 5.0, "max_duration_s": 3.0}])
def test_duration_bounds_are_checked(tiny_model, bounds):
    with pytest.raises(ValueError, match="min_duration_s"):
        EmotionClassifier(tiny_model, **bounds)


def test_real_outputs_follow_the_input(tiny_model):
    clf = EmotionClassifier(tiny_model)
    low = clf.predict(tone(LOW_HZ, 2.0, 48_000), 48_000)
    high = clf.predict(tone(HIGH_HZ, 2.0, 48_000), 48_000)
    assert low.label == "neutral" and high.label == "disgust"
    assert sum(low.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert low.confidence == max(low.probabilities.values())


def test_path_and_array_agree(tiny_model, wav):
    clf = EmotionClassifier(tiny_model)
    path = wav(LOW_HZ, 2.5, 22_050, subtype="FLOAT")
    from_file = clf.predict_file(path)
    from_array = clf.predict(tone(LOW_HZ, 2.5, 22_050), 22_050)
    assert from_file.path == str(path)
    for label in LABELS:
        assert from_file.probabilities[label] == pytest.approx(from_array.probabilities[label], abs=1e-6)


def test_stereo_array_is_mixed_down(tiny_model):
    clf = EmotionClassifier(tiny_model)
    mono = tone(HIGH_HZ, 2.0, 48_000)
    stereo = np.stack([mono, mono], axis=1)
    assert clf.predict(stereo, 48_000).probabilities == pytest.approx(clf.predict(mono, 48_000).probabilities, abs=1e-6)


def test_channels_first_array_is_refused_with_the_fix(tiny_model):
    clf = EmotionClassifier(tiny_model)
    mono = tone(HIGH_HZ, 2.0, 48_000)
    with pytest.raises(NotAudioError, match=r"got shape \(2, 96000\), more channels than samples.*transpose"):
        clf.predict(np.stack([mono, mono]), 48_000)
    assert clf.predict(np.stack([mono, mono]).T, 48_000).label == clf.predict(mono, 48_000).label


def test_long_clip_timeline_and_mean(tiny_model):
    clf = EmotionClassifier(tiny_model, hop_s=1.0)
    signal = np.concatenate([tone(LOW_HZ, 4.0, 48_000), tone(HIGH_HZ, 4.0, 48_000)])
    pred = clf.predict(signal, 48_000)
    starts = [w.start_s for w in pred.windows]
    assert starts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert pred.windows[0].label == "neutral" and pred.windows[-1].label == "disgust"
    assert pred.windows[-1].end_s == pytest.approx(8.0)
    mean = np.mean([[w.probabilities[l] for l in LABELS] for w in pred.windows], axis=0)
    np.testing.assert_allclose([pred.probabilities[l] for l in LABELS], mean, atol=1e-6)


def test_window_batching_does_not_change_results(tiny_model, monkeypatch):
    from ser_edge.edge_runtime import session

    clf = EmotionClassifier(tiny_model)
    signal = np.concatenate([tone(f, 1.0, 48_000) for f in (200, 800, 3000, 9000, 500, 12000, 300, 7000)])
    whole = clf.predict(signal, 48_000)
    monkeypatch.setattr(session, "WINDOW_BATCH", 2)
    chunked = clf.predict(signal, 48_000)
    as_array = lambda pred: np.array([[w.probabilities[l] for l in LABELS] for w in pred.windows])
    assert len(whole.windows) == 6
    np.testing.assert_allclose(as_array(chunked), as_array(whole), atol=1e-7)


def test_to_dict_shape(tiny_model):
    pred = EmotionClassifier(tiny_model).predict(tone(LOW_HZ, 4.0, 48_000), 48_000)
    plain = pred.to_dict()
    assert set(plain) == {"path", "label", "confidence", "probabilities"}
    with_timeline = pred.to_dict(timeline=True)
    assert set(with_timeline["windows"][0]) == {"start_s", "end_s", "label", "probabilities"}
    json.dumps(with_timeline)


def test_bad_input_is_typed(tiny_model):
    with pytest.raises(SilentAudioError):
        EmotionClassifier(tiny_model).predict(np.zeros(48_000, np.float32), 48_000)


def test_label_count_mismatch_names_both_sizes(tmp_path):
    path = band_model(tmp_path / "m.onnx", n_outputs=6)
    with pytest.raises(ModelError, match="6 classes but the metadata lists 8 labels"):
        EmotionClassifier(path)


def test_input_shape_mismatch(tmp_path):
    path = band_model(tmp_path / "m.onnx", input_frames=100)
    with pytest.raises(ModelError, match=r"n_frames=563"):
        EmotionClassifier(path)


def test_missing_metadata(tmp_path):
    import onnx

    path = band_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "feature_config"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="no 'feature_config'"):
        EmotionClassifier(path)


def test_unreadable_and_missing_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        EmotionClassifier(bad)
    with pytest.raises(ModelError, match="model file not found"):
        EmotionClassifier(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match=f"{tmp_path}: not a regular file, so not a model file"):
        EmotionClassifier(tmp_path)


def test_feature_config_travels_with_the_model(tmp_path):
    config = FeatureConfig(sample_rate=16_000, n_fft=512, hop_length=160, n_mels=64, clip_s=2.0, f_max_hz=8000.0)
    path = band_model(tmp_path / "small.onnx", config)
    clf = EmotionClassifier(path)
    assert clf.feature_config == config
    pred = clf.predict(tone(LOW_HZ, 1.0, 48_000), 48_000)
    assert pred.label == "neutral"
