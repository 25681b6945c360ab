"""End to end on real RAVDESS clips: train 2 epochs, reload, evaluate, export, classify."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ser_edge.cli import main

from conftest import DATA_DIR, needs_data

ACTORS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Links to one clip per emotion (normal intensity, statement 1, repetition 1) of 4 actors."""
    root = tmp_path_factory.mktemp("ravdess")
    for actor in ACTORS:
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir()
        for emotion in range(1, 9):
            name = f"03-01-{emotion:02d}-01-01-01-{actor:02d}.flac"
            os.symlink(DATA_DIR / f"Actor_{actor:02d}" / name, folder / name)
    return root


@needs_data
@pytest.mark.slow
def test_train_reload_evaluate_export_classify(small_data, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(small_data), "--out", str(run_dir), "--epochs", "2",
                                  "--cache", str(cache), "--quiet", "--seed", "1"])
    assert result.exit_code == 0, result.output
    for name in ("best_parallel_ser.pt", "scaler.npz", "config.json", "metrics.json", "report.txt",
                 "confusion.png", "curves.png", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    split = config["split"]
    assert sorted(split["train"] + split["val"] + split["test"]) == list(ACTORS)
    assert config["data_hash"] and config["features"]["n_mels"] == 128
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["test"]["n"] == 8 * len(split["test"])
    assert any(list(cache.iterdir()))  # features cached on disk

    # Resuming a finished run trains nothing more and reports the same numbers.
    again = runner.invoke(main, ["train", str(small_data), "--out", str(run_dir), "--epochs", "2",
                                 "--cache", str(cache), "--quiet", "--seed", "1"])
    assert again.exit_code == 0
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == metrics["test"]

    evaluated = runner.invoke(main, ["evaluate", str(run_dir), "--cache", str(cache), "--json", str(tmp_path / "eval.json")])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"actors {split['test']}" in evaluated.output
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    onnx_path = tmp_path / "model.onnx"
    exported = runner.invoke(main, ["export", str(run_dir), "--out", str(onnx_path), "--cache", str(cache), "--no-calibrate"])
    assert exported.exit_code == 0, exported.output
    assert "argmax equal" in exported.output

    onnx_eval = runner.invoke(main, ["evaluate", "--model", str(onnx_path), "--data", str(small_data),
                                     "--actors", ",".join(map(str, split["test"])), "--json", str(tmp_path / "onnx.json")])
    assert onnx_eval.exit_code == 0, onnx_eval.output
    assert json.loads((tmp_path / "onnx.json").read_text())["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    clip = next((small_data / f"Actor_{split['test'][0]:02d}").iterdir())
    classified = runner.invoke(main, ["classify", str(clip), "--model", str(onnx_path), "--json"])
    assert classified.exit_code == 0
    assert json.loads(classified.stdout)["label"] in config["labels"]
