"""Refit (train/refit.py): a second pass on the training and validation actors that replays
the first pass's epochs and learning rates."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ser_edge.cli import main
from ser_edge.train.augment_config import AugmentConfig
from ser_edge.train.data import Clip, FeatureSet, Split, kfold_splits
from ser_edge.train.refit import RefitError, Replay, learning_rates, refit_split

from conftest import SMALL_FEATURES, small_model_config

ACTORS = (1, 2, 3, 4, 5, 6)


def _prepared():
    """Random log-mels of 6 actors x 8 emotions (one window each)."""
    from ser_edge.train import pipeline

    clips = [Clip(f"{a}-{e}.wav", 3, 1, e, 1, 1, 1, a) for a in ACTORS for e in range(1, 9)]
    features = np.random.default_rng(0).normal(-40, 10, (len(clips), 32, SMALL_FEATURES.n_frames)).astype(np.float32)
    fs = FeatureSet(clips, features, None, np.arange(len(clips)), np.zeros(len(clips)))
    return pipeline.Prepared(fs, "hash", [], "/data")


def _kwargs(**train):
    from ser_edge.train.trainer import TrainConfig

    return dict(feature_config=SMALL_FEATURES, model_config=small_model_config(), augment=AugmentConfig.off(),
                train_config=TrainConfig(batch_size=8, threads=1, ema_decay=0.5, **train), progress=False)


def test_learning_rates_are_the_ones_each_epoch_trained_with():
    # A record's lr is read after the plateau's step: the next epoch's.
    history = [{"lr": 1e-3}, {"lr": 5e-4}, {"lr": 5e-4}, {"lr": 2.5e-4}]
    assert learning_rates(history, 4, 1e-3) == (1e-3, 1e-3, 5e-4, 5e-4)
    assert learning_rates(history, 1, 2e-3) == (2e-3,)
    with pytest.raises(ValueError, match="5 epochs asked of a history of 4"):
        learning_rates(history, 5, 1e-3)


def test_refit_split_moves_the_validation_actors_into_training():
    split = Split(train=(1, 2, 3), val=(4, 6), test=(5,))
    assert refit_split(split) == Split(train=(1, 2, 3, 4, 6), val=(), test=(5,))
    assert refit_split(split, hold_out=True) == Split(train=(1, 2, 3, 4), val=(6,), test=(5,))
    with pytest.raises(RefitError, match=r"needs two or more, the split has \[4\]"):
        refit_split(Split(train=(1, 2, 3), val=(4,), test=(5,)), hold_out=True)


def test_a_refit_trains_its_epochs_at_the_replayed_rates_and_keeps_its_last_weights(tmp_path):
    from ser_edge.train import pipeline
    from ser_edge.train.trainer import BEST_WEIGHTS, CHECKPOINT

    prepared = _prepared()
    split = Split(train=(1, 2, 3), val=(4,), test=(5, 6))
    lrs = (1e-3, 5e-4, 2.5e-4)
    refit = pipeline.make_trainer(prepared, refit_split(split), tmp_path, replay=Replay("first", "sha", lrs), **_kwargs())
    assert refit.tc.epochs == 3  # the replay's, not the config's 150
    metrics = refit.run()
    assert metrics["epochs_run"] == metrics["best_epoch"] == 3
    assert [r["lr"] for r in metrics["history"]] == list(lrs)
    assert all("val_loss" not in r for r in metrics["history"]) and "val" not in metrics
    assert metrics["test"]["actors"] == [5, 6] and metrics["test"]["n"] == 16
    # The saved model is the last epoch's (averaged) weights.
    best = torch.load(tmp_path / BEST_WEIGHTS, weights_only=True)["model"]
    ema = torch.load(tmp_path / CHECKPOINT, weights_only=True)["ema"]
    assert all(torch.equal(best[k], ema[f"module.{k}"]) for k in best)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["split"] == {"train": [1, 2, 3, 4], "val": [], "test": [5, 6]}
    assert config["replay"] == {"from": "first", "metrics_sha256": "sha", "epochs": 3, "lrs": list(lrs)}


def test_cross_validated_refit_replays_each_fold_and_checks_its_first_pass(tmp_path):
    from ser_edge.train import pipeline

    prepared = _prepared()
    first, again = tmp_path / "first", tmp_path / "refit"
    # A refit of a fold whose first pass has not finished: one line naming that run.
    with pytest.raises(RefitError, match=r"first/fold_0: no finished run to refit from"):
        pipeline.cross_validate(prepared, 2, again, seed=0, refit_from=first, **_kwargs(epochs=3))
    kwargs = _kwargs(epochs=3, plateau_patience=0)
    assert pipeline.cross_validate(prepared, 2, first, seed=0, **kwargs) is not None
    out = pipeline.cross_validate(prepared, 2, again, seed=0, refit_from=first, hold_out=True, **kwargs)
    for k, split in enumerate(kfold_splits(ACTORS, 2, seed=0)):
        before = json.loads((first / f"fold_{k}" / "metrics.json").read_text())
        after = json.loads((again / f"fold_{k}" / "metrics.json").read_text())
        assert after["epochs_run"] == before["best_epoch"]
        assert [r["lr"] for r in after["history"]] == [3e-4, *(r["lr"] for r in before["history"][: before["best_epoch"] - 1])]
        assert out["folds"][k]["split"] == {"train": sorted([*split.train, split.val[0]]), "val": [split.val[1]],
                                            "test": list(split.test)}
        assert after["val"]["actors"] == [split.val[1]] and after["test"]["actors"] == list(split.test)
    # Finished refits are summarised, not retrained (their checkpoints are not touched).
    stamp = (again / "fold_0" / "checkpoint.pt").stat().st_mtime_ns
    assert pipeline.cross_validate(prepared, 2, again, seed=0, refit_from=first, hold_out=True, **kwargs) == out
    assert (again / "fold_0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    # Another recipe than the first pass's is refused, naming what differs.
    other = {**kwargs, "train_config": dataclasses.replace(kwargs["train_config"], ema_decay=0.9)}
    with pytest.raises(RefitError, match=r"first/fold_0: was trained with another recipe \(different train.ema_decay\)"):
        pipeline.cross_validate(prepared, 2, tmp_path / "other", seed=0, refit_from=first, **other)
    # A run of another split is refused.
    with pytest.raises(RefitError, match="was trained on another split"):
        pipeline.refit_trainer(prepared, first / "fold_0", kfold_splits(ACTORS, 2, seed=0)[1], tmp_path / "x", **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--refit-hold-out"], "--refit-hold-out needs --refit-from"),
    (["--refit-from", ".", "--init-from", "default"], "--refit-from replays a plain run; it does not combine with --teacher or --init-from"),
])
def test_refit_option_mistakes_are_one_line_usage_errors(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and f"error: {message}" in result.output
    assert "Traceback" not in result.output


def test_an_option_the_first_pass_predates_counts_as_its_default():
    from ser_edge.train.refit import recipe_changes

    old = {"model": {"d_model": 64}, "train": {"lr": 2e-3, "epochs": 150}, "split": {"val": [3, 14]}}
    same = {"model": {"d_model": 64, "transformer_norm_first": False}, "train": {"lr": 2e-3, "epochs": 133},
            "split": {"val": []}}
    assert recipe_changes(same, old) == []  # the epochs and split are what a refit changes
    prenorm = {**same, "model": {"d_model": 64, "transformer_norm_first": True}}
    assert recipe_changes(prenorm, old) == ["model.transformer_norm_first"]
