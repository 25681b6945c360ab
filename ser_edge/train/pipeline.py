"""From a data folder to run folders: single split or actor-wise K-fold cross-validation."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.models.config import ModelConfig
from ser_edge.train.augment_config import AugmentConfig
from ser_edge.train.data import LABELS, FeatureSet, Split, data_hash, kfold_splits, load_feature_set, scan_dataset, split_actors
from ser_edge.train.refit import RefitError, check_same_recipe, load_replay, refit_split
from ser_edge.train.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("accuracy", "macro_f1", "uar")


@dataclasses.dataclass
class Prepared:
    feature_set: FeatureSet
    data_hash: str
    skipped: list[str]
    root: str  # the RAVDESS folder or the CSV manifest, resolved
    labels: tuple[str, ...] = LABELS
    speakers: dict[int, str] | None = None  # a manifest's speaker name of each actor number


def prepare(data_root: str | os.PathLike, feature_config: FeatureConfig, *, cache_dir, strict: bool = False) -> Prepared:
    """Scan a RAVDESS folder or a CSV manifest (``data.scan_dataset``) and compute (or load
    from the cache) the features of its clips."""
    scan = scan_dataset(data_root, strict=strict)
    digest = data_hash(scan.clips, data_root)
    feature_set = load_feature_set(scan.clips, feature_config, cache_dir=cache_dir, content_hash=digest)
    return Prepared(feature_set, digest, scan.skipped, str(Path(data_root).resolve()), scan.labels, scan.speakers)


def train_split(
    prepared: Prepared,
    split: Split,
    run_dir: str | os.PathLike,
    *,
    feature_config: FeatureConfig,
    train_config: TrainConfig,
    model_config: ModelConfig,
    augment: AugmentConfig,
    teachers: Sequence[str | os.PathLike] = (),
    init_from: str | os.PathLike | None = None,
    init_member: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    return make_trainer(prepared, split, run_dir, feature_config=feature_config, train_config=train_config,
                        model_config=model_config, augment=augment, teachers=teachers, init_from=init_from,
                        init_member=init_member, progress=progress).run()


def make_trainer(prepared: Prepared, split: Split, run_dir: str | os.PathLike, **kwargs) -> Trainer:
    """The Trainer of one run folder (``kwargs``: train_split's keyword arguments)."""
    if "model_config" in kwargs:  # one output per label of the data set
        kwargs["model_config"] = dataclasses.replace(kwargs["model_config"], n_classes=len(prepared.labels))
    return Trainer(
        run_dir,
        prepared.feature_set,
        split,
        data_hash=prepared.data_hash,
        data_root=prepared.root,
        labels=prepared.labels,
        speakers=prepared.speakers,
        **kwargs,
    )


def refit_trainer(prepared: Prepared, first_pass: str | os.PathLike, split: Split, run_dir: str | os.PathLike, *,
                  hold_out: bool = False, **kwargs) -> Trainer:
    """The Trainer of a refit (train/refit.py) of the finished run ``first_pass``, whose split
    must be ``split``: the same recipe on its training and validation actors (all but the
    last of those with ``hold_out``), for its epochs, with its learning rate per epoch."""
    replay, first_config = load_replay(first_pass)
    if first_config["split"] != split.to_dict():
        raise RefitError(f"was trained on another split ({first_config['split']}, not {split.to_dict()})",
                         path=str(first_pass))
    trainer = make_trainer(prepared, refit_split(split, hold_out=hold_out), run_dir, replay=replay, **kwargs)
    check_same_recipe(trainer.config_dict(), first_config, str(first_pass))
    return trainer


def default_split(prepared: Prepared, seed: int) -> Split:
    return split_actors({c.actor for c in prepared.feature_set.clips}, seed=seed)


def mean_std(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and (population) std over folds of each of ``SUMMARY_METRICS``."""
    return {
        name: {"mean": float(np.mean([s[name] for s in summaries])), "std": float(np.std([s[name] for s in summaries]))}
        for name in SUMMARY_METRICS
    }


def finished(run_dir: Path, train_config: TrainConfig | None) -> bool:
    """Whether ``run_dir`` holds a finished run that would also stop under ``train_config``:
    the current early-stopping patience has run out, or the current cap is reached. A run
    ended by a lower cap or a shorter patience is not finished: raising ``--epochs`` (or
    the patience) trains it on from its checkpoint, as it does a single run."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return False
    metrics = json.loads(path.read_text())
    ran, best = metrics.get("epochs_run"), metrics.get("best_epoch")
    if train_config is None or ran is None or best is None:
        return True
    return train_config.stops(ran, ran - best)


def cross_validate(
    prepared: Prepared,
    folds: int,
    out_dir: str | os.PathLike,
    *,
    seed: int,
    actors=None,
    only_fold: int | None = None,
    teachers: Sequence[str | os.PathLike] = (),
    refit_from: str | os.PathLike | None = None,
    hold_out: bool = False,
    **kwargs,
) -> dict[str, Any] | None:
    """Actor-wise K-fold; every fold's run folder under ``out_dir/fold_k``; mean +- std.

    ``only_fold`` trains one fold (to run folds in parallel processes); the summary is
    written once every fold is finished. Finished folds are not retrained; a fold that the
    epoch cap ended trains on from its checkpoint when the cap is raised (``finished``).
    ``teachers`` are cross-validations of the same folds: fold k distils from their
    ``fold_k`` runs. With ``refit_from`` (a finished cross-validation of the same recipe and
    folds), fold k is a refit of its ``fold_k`` (``refit_trainer``).
    """
    out_dir = Path(out_dir)
    actors = actors if actors is not None else {c.actor for c in prepared.feature_set.clips}
    splits = kfold_splits(actors, folds, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_config = kwargs.get("train_config")

    def fold_teachers(k: int) -> list[Path]:
        return [Path(t) / f"fold_{k}" for t in teachers]

    def trainer(k: int, split: Split) -> Trainer:
        run_dir = out_dir / f"fold_{k}"
        if refit_from is not None:
            return refit_trainer(prepared, Path(refit_from) / f"fold_{k}", split, run_dir, hold_out=hold_out, **kwargs)
        return make_trainer(prepared, split, run_dir, teachers=fold_teachers(k), **kwargs)

    def fold_done(k: int) -> bool:
        # A refit runs its first pass's epochs, whatever the command's cap, and writes its
        # metrics only then.
        return finished(out_dir / f"fold_{k}", None if refit_from is not None else train_config)

    for k, split in enumerate(splits):
        if fold_done(k):  # a finished fold is summarised, not retrained: it must be a run of this recipe
            trainer(k, split).check_resumable()
        elif only_fold is None or k == only_fold:
            log.info("fold %d/%d: test actors %s, val actors %s", k + 1, folds, split.test, split.val)
            if refit_from is None:
                train_split(prepared, split, out_dir / f"fold_{k}", teachers=fold_teachers(k), **kwargs)
            else:
                refit = trainer(k, split)
                log.info("refit of %s: training actors %s, held out %s, %d epochs", refit.replay.source,
                         refit.split.train, refit.split.val, refit.tc.epochs)
                refit.run()
    results = []
    for k, split in enumerate(splits):
        if not fold_done(k):
            return None
        metrics = json.loads((out_dir / f"fold_{k}" / "metrics.json").read_text())
        trained = split.to_dict() if refit_from is None else (  # a refit's actors, not the fold's
            json.loads((out_dir / f"fold_{k}" / "config.json").read_text())["split"])
        results.append({"fold": k, "split": trained, "test": metrics["test"], "best_epoch": metrics["best_epoch"]})
    summary = mean_std([r["test"] for r in results])
    out = {"folds": results, "summary": summary, "data_hash": prepared.data_hash}
    (out_dir / "cv_metrics.json").write_text(json.dumps(out, indent=2))
    return out
