"""Training on your own clips from a CSV manifest: labels and speakers from the CSV, a
speaker-wise split, export with those labels, and the edge runtime classifying with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ser_edge.cli import main
from ser_edge.train.data import DatasetError, ManifestClip, data_hash, scan_dataset

from conftest import tone

RATE = 16_000
LABEL_HZ = {"low": 250.0, "mid": 1_500.0, "high": 6_000.0}
SPEAKERS = ("ann", "bob", "cat", "dan", "eve")


def write_manifest(root: Path, speakers=SPEAKERS, clips_per_label: int = 2) -> Path:
    """Tones per label, shifted a little per speaker; relative paths in a CSV."""
    rows = ["path,label,speaker"]
    for s, speaker in enumerate(speakers):
        for label, hz in LABEL_HZ.items():
            for k in range(clips_per_label):
                name = f"audio/{speaker}/{label}{k}.wav"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                sf.write(root / name, tone(hz * (1 + 0.03 * s + 0.01 * k), 1.0, RATE), RATE)
                rows.append(f"{name},{label},{speaker}")
    path = root / "clips.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_scan_manifest_numbers_speakers_and_sorts_labels(tmp_path):
    scan = scan_dataset(write_manifest(tmp_path, speakers=("zed", "amy"), clips_per_label=1))
    assert scan.labels == ("high", "low", "mid")
    assert scan.speakers == {1: "amy", 2: "zed"}
    first = scan.clips[0]
    assert isinstance(first, ManifestClip) and first.speaker == "zed" and first.actor == 2
    assert first.label == "low" and first.label_index == 1 and Path(first.path) == tmp_path / "audio/zed/low0.wav"


def test_a_spreadsheet_manifest_with_a_byte_order_mark_reads(tmp_path):
    manifest = write_manifest(tmp_path, clips_per_label=1)
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes().replace(b"\n", b"\r\n"))
    assert [c.path for c in scan_dataset(bom).clips] == [c.path for c in scan_dataset(manifest).clips]


def test_a_data_file_that_is_not_a_csv_is_named(tmp_path):
    (tmp_path / "clips.txt").write_text("path,label,speaker\n")
    with pytest.raises(DatasetError, match=r"clips\.txt: is a file: give a RAVDESS data folder, or a CSV manifest"):
        scan_dataset(tmp_path / "clips.txt")


def test_manifest_data_hash_follows_labels_not_spelling(tmp_path):
    manifest = write_manifest(tmp_path, clips_per_label=1)
    digest = data_hash(scan_dataset(manifest).clips, manifest)
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text(manifest.read_text().replace("low0.wav,low", "low0.wav,mid", 1))
    assert data_hash(scan_dataset(relabelled).clips, relabelled) != digest
    assert data_hash(scan_dataset(manifest).clips, manifest) == digest


@pytest.mark.parametrize(("text", "problem"), [  # problem: a regular expression
    ("path,label\na.wav,x\n", r"missing \['speaker'\]"),
    ("path,label,speaker\na.wav,x,s1\nb.wav,x,s2\n", r"needs at least 2 labels"),
    ("path,label,speaker\na.wav,x,\n", r"line 2: empty speaker"),
    ("path,label,speaker\na.wav,x,s1\nb.wav,y,s1\n./a.wav,y,s2\n", r"line 4: lists .*a\.wav again \(first on line 2\)"),
])
def test_manifest_problems_are_one_line(tmp_path, text, problem):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DatasetError, match=problem):
        scan_dataset(tmp_path / "m.csv")


@pytest.mark.slow
def test_train_export_classify_on_a_manifest(tmp_path, caplog):
    manifest = write_manifest(tmp_path)
    run_dir, cache, model = tmp_path / "run", tmp_path / "cache", tmp_path / "mine.onnx"
    runner = CliRunner()
    trained = runner.invoke(main, ["train", str(manifest), "--out", str(run_dir), "--epochs", "2", "--cache", str(cache),
                                   "--quiet", "--threads", "1"])
    assert trained.exit_code == 0, trained.output
    assert "speakers as actors: 1 = ann, 2 = bob, 3 = cat, 4 = dan, 5 = eve" in trained.output
    # The default recipe's per-step weight average spans hundreds of epochs of 30 clips: said once.
    lags = [r.getMessage() for r in caplog.records if "weight average" in r.getMessage()]
    assert len(lags) == 1 and lags[0].startswith(f"{run_dir}: the weight average (EMA decay 0.997") and "--ema-decay" in lags[0]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["labels"] == ["high", "low", "mid"] and config["model"]["n_classes"] == 3
    assert config["speakers"] == {str(i + 1): name for i, name in enumerate(SPEAKERS)}
    assert config["data_root"] == str(manifest.resolve())
    split = config["split"]
    assert sorted(split["train"] + split["val"] + split["test"]) == [1, 2, 3, 4, 5]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n"] == 6 * len(split["test"])  # 3 labels x 2 clips per test speaker
    test_names = [SPEAKERS[a - 1] for a in split["test"]]
    assert f"speakers: train {[SPEAKERS[a - 1] for a in split['train']]}" in trained.output
    assert (run_dir / "report.txt").read_text().startswith(f"test actors {split['test']} (speakers {test_names}) (")

    evaluated = runner.invoke(main, ["evaluate", str(run_dir), "--cache", str(cache)])  # PyTorch, the run's test speakers
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.output.startswith(f"actors {split['test']} (speakers {test_names}) ({6 * len(test_names)} clips)")

    exported = runner.invoke(main, ["export", str(run_dir), "--out", str(model), "--cache", str(cache)])
    assert exported.exit_code == 0, exported.output
    from ser_edge import EmotionClassifier

    clf = EmotionClassifier(model)
    assert clf.labels == ("high", "low", "mid")
    prediction = clf.predict_file(tmp_path / "audio/ann/low0.wav")
    assert set(prediction.probabilities) == {"high", "low", "mid"}
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    scored = runner.invoke(main, ["evaluate", "--manifest", str(manifest), "--model", str(model)])
    assert scored.exit_code == 0, scored.output
    assert f"{manifest}: speakers {list(SPEAKERS)} (30 clips)" in scored.output

    assert clf.metadata["license"] == "the training data's terms (trained from scratch on the clips of a CSV manifest)"
    described = runner.invoke(main, ["info", "--model", str(model)])
    assert described.exit_code == 0, described.output
    names = {part: ", ".join(SPEAKERS[a - 1] for a in split[part]) for part in ("train", "val", "test")}
    assert "labels: high, low, mid" in described.output
    assert (f"split: train speakers {names['train']}; validation speakers {names['val']}; "
            f"test speakers {names['test']}") in described.output
    assert f"on {metrics['test']['n']} clips of speakers {names['test']}" in described.output

    # Fine-tuning: a second run starts from the exported model (same labels: classifier too), on
    # another split (--seed 1), so that a scaler fitted on its training speakers would differ.
    tuned_dir = tmp_path / "tuned"
    tuned = runner.invoke(main, ["train", str(manifest), "--out", str(tuned_dir), "--epochs", "1", "--cache", str(cache),
                                 "--quiet", "--threads", "1", "--seed", "1", "--init-from", str(model)])
    assert tuned.exit_code == 0, tuned.output
    started = json.loads((tuned_dir / "config.json").read_text())["init_from"]
    assert started["model"] == str(model.resolve()) and started["member"] == 0 and started["labels"] == ["high", "low", "mid"]
    assert started["license"] == clf.metadata["license"] and started["scaler"] == "the model's"
    from ser_edge.train.scaler import Scaler

    first, kept = Scaler.load(run_dir / "scaler.npz"), Scaler.load(tuned_dir / "scaler.npz")
    np.testing.assert_array_equal(kept.mean, first.mean)  # the model's own, not refitted on the new run
    np.testing.assert_allclose(kept.scale, first.scale, rtol=1e-6)  # stored as its inverse in the file
    wrong_member = runner.invoke(main, ["train", str(manifest), "--out", str(tmp_path / "w"), "--epochs", "1",
                                        "--cache", str(cache), "--init-from", str(model), "--init-member", "3"])
    assert wrong_member.exit_code == 1 and f"error: {model.resolve()}: has 1 member(s)" in wrong_member.output

    intensity = runner.invoke(main, ["train", str(manifest), "--out", str(tmp_path / "x"), "--intensity-aux", "0.5",
                                     "--cache", str(cache)])
    assert intensity.exit_code == 2 and "intensity head needs RAVDESS" in intensity.output


def test_too_few_speakers_is_one_line(tmp_path):
    manifest = write_manifest(tmp_path, speakers=("ann", "bob"), clips_per_label=1)
    result = CliRunner().invoke(main, ["train", str(manifest), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: {manifest}: 2 actors (speakers) are too few for a train/val/test split; it needs 3" in result.output


def test_too_few_speakers_for_the_folds_is_one_line(tmp_path):
    manifest = write_manifest(tmp_path, speakers=("ann", "bob", "cy", "dee"), clips_per_label=1)
    args = ["train", str(manifest), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c"), "--folds"]
    result = CliRunner().invoke(main, [*args, "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: {manifest}: 4 actors (speakers) are too few for 2 folds" in result.output
    assert not (tmp_path / "run").exists()
    one = CliRunner().invoke(main, [*args, "1"])
    assert one.exit_code == 2 and "--folds must be 0 (one split) or at least 2" in one.output


def test_ctrl_c_while_training_says_how_to_resume(tmp_path, monkeypatch):
    """Ctrl-C is a one-line note and exit 130, not click's bare "Aborted!" (exit 1)."""
    from ser_edge.train import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_split", interrupted)
    manifest = write_manifest(tmp_path, clips_per_label=1)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(manifest), "--out", str(run_dir), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir}: interrupted; the checkpoint keeps every finished epoch, and the same command resumes from it")
