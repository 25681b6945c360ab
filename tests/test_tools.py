"""The ablation-table tool reads the committed fold metrics and prints what they say."""

from __future__ import annotations

import json
import runpy
from types import SimpleNamespace

import numpy as np

from conftest import REPO

ABLATION = REPO / "docs" / "ablation"


def test_ablation_table_prints_each_runs_fold_metrics(capsys):
    runs = sorted(p for p in ABLATION.iterdir() if (p / "fold_0" / "metrics.json").is_file())
    assert len(runs) >= 2
    tool = runpy.run_path(str(REPO / "tools" / "ablation_table.py"))
    assert tool["main"](["--fold", "0", *map(str, runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for run in runs:
        metrics = json.loads((run / "fold_0" / "metrics.json").read_text())
        row = next(line for line in lines if line.startswith(f"| {run.name} |"))
        assert f"{100 * metrics['val']['accuracy']:.1f}%" in row
        assert f"{100 * metrics['test']['accuracy']:.1f}%" in row
        assert f"{metrics['best_epoch']} / {metrics['epochs_run']}" in row


def _probe():
    return runpy.run_path(str(REPO / "tools" / "speaker_norm_probe.py"))


def test_speaker_norm_probe_normalises_each_speaker_by_its_own_reference():
    probe = _probe()
    rng = np.random.default_rng(0)
    actors = np.repeat([1, 2, 3], 16)
    labels = np.tile(np.arange(8), 6)
    stats = rng.normal(size=(48, 4)) + actors[:, None] * 10.0  # a large per-speaker offset
    none = probe["normalise"](stats, actors, labels, "none")
    np.testing.assert_array_equal(none, stats)
    enrolled = probe["normalise"](stats, actors, labels, "enrol-neutral")
    all_clips = probe["normalise"](stats, actors, labels, "all-clips")
    for actor in (1, 2, 3):
        own = actors == actor
        reference = own & np.isin(labels, probe["ENROLMENT_EMOTIONS"])
        np.testing.assert_allclose(enrolled[reference].mean(axis=0), 0.0, atol=1e-9)
        np.testing.assert_allclose(enrolled[own] - enrolled[own][0], stats[own] - stats[own][0])
        np.testing.assert_allclose(all_clips[own].mean(axis=0), 0.0, atol=1e-9)
        np.testing.assert_allclose(all_clips[own].std(axis=0), 1.0, rtol=1e-2)


def test_speaker_norm_probe_pools_each_clips_windows():
    probe = _probe()
    features = np.arange(2 * 3 * 5, dtype=np.float32).reshape(3, 2, 5)  # 3 windows, 2 mels
    feature_set = SimpleNamespace(clips=["a", "b"], features=features, window_clip=np.array([0, 0, 1]))
    stats = probe["clip_statistics"](feature_set)
    expected_a = np.concatenate([features[:2].mean(axis=2).mean(axis=0), features[:2].std(axis=2).mean(axis=0)])
    np.testing.assert_allclose(stats[0], expected_a)
    np.testing.assert_allclose(stats[1], np.concatenate([features[2].mean(axis=1), features[2].std(axis=1)]))
