"""How much would per-speaker normalisation help, and is any of it usable at run time?

usage:
    python tools/speaker_norm_probe.py --data ../shared/data/ravdess-speech [--cache DIR]

Needs the dev extra (scikit-learn).

A cheap linear probe, not the model: each clip becomes the mean and standard deviation
over time of its 128 log-mel bands (averaged over its windows), and a logistic regression
(fixed C, no tuning) is trained on each CV fold's training and validation actors and
scored on its test actors, with the same actor folds as ``ser-edge train --folds 5``.
Three ways to normalise a speaker's clips before the classifier:

* ``none``: no speaker normalisation;
* ``enrol-neutral``: subtract the mean of the speaker's neutral and calm clips, which is
  what an app can ask of a new user ("read this sentence calmly"). Scored on the other
  six emotions only, beside ``none`` on the same clips;
* ``all-clips``: z-score with the mean and std over all 60 of the speaker's clips. RAVDESS
  gives every speaker the same number of clips of each emotion, so this reference is
  emotion-balanced, which no deployment can guarantee: an upper bound, not a recipe.

Prints one line per variant: the per-fold and mean test accuracy.
"""

from __future__ import annotations

import argparse

import numpy as np

# Inverse regularisation of the probe's logistic regression, fixed before any run.
PROBE_C = 0.1
# Emotion indices (0-based, RAVDESS order) an enrolment recording can ask for.
ENROLMENT_EMOTIONS = (0, 1)  # neutral, calm
STD_FLOOR = 1e-3  # keeps the all-clips z-score finite for a constant band


def clip_statistics(feature_set) -> np.ndarray:
    """(clips, 2 * n_mels): per-band mean and std over time, averaged over each clip's windows."""
    n_clips = len(feature_set.clips)
    n_mels = feature_set.features.shape[1]
    sums = np.zeros((n_clips, 2 * n_mels))
    for row, clip in enumerate(feature_set.window_clip):
        window = np.asarray(feature_set.features[row], dtype=np.float64)
        sums[clip] += np.concatenate([window.mean(axis=1), window.std(axis=1)])
    counts = np.bincount(feature_set.window_clip, minlength=n_clips)
    return sums / counts[:, None]


def normalise(stats: np.ndarray, actors: np.ndarray, labels: np.ndarray, variant: str) -> np.ndarray:
    out = stats.copy()
    for actor in np.unique(actors):
        own = actors == actor
        if variant == "enrol-neutral":
            out[own] -= stats[own & np.isin(labels, ENROLMENT_EMOTIONS)].mean(axis=0)
        elif variant == "all-clips":
            out[own] = (stats[own] - stats[own].mean(axis=0)) / (stats[own].std(axis=0) + STD_FLOOR)
    return out


def fold_predictions(features, labels, actors, split) -> tuple[np.ndarray, np.ndarray]:
    """Fit on the fold's training and validation actors; return (test-actor rows, predictions)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit = np.isin(actors, split.train + split.val)
    test = np.flatnonzero(np.isin(actors, split.test))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=5000))
    probe.fit(features[fit], labels[fit])
    return test, probe.predict(features[test])


def main(argv=None) -> None:
    from ser_edge.edge_runtime.features import FeatureConfig
    from ser_edge.train.data import data_hash, kfold_splits, load_feature_set, scan_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args(argv)

    clips = scan_dataset(args.data).clips
    feature_set = load_feature_set(clips, FeatureConfig(), cache_dir=args.cache,
                                   content_hash=data_hash(clips, args.data))
    stats = clip_statistics(feature_set)
    labels = np.array([c.label_index for c in feature_set.clips])
    actors = np.array([c.actor for c in feature_set.clips])
    splits = kfold_splits(sorted(set(actors)), args.folds, seed=args.split_seed)
    everything = np.ones(len(labels), dtype=bool)
    not_enrolment = ~np.isin(labels, ENROLMENT_EMOTIONS)
    every, not_enrol = "all 8 emotions", "6 emotions (not neutral/calm)"
    subsets = {every: everything, not_enrol: not_enrolment}
    # Each variant is fitted once per fold, then scored on the subsets where it means something:
    # enrolment-normalised neutral/calm clips would be scored against their own reference.
    for variant, scored_on in (("none", (every, not_enrol)), ("enrol-neutral", (not_enrol,)), ("all-clips", (every,))):
        features = normalise(stats, actors, labels, variant)
        folds = [fold_predictions(features, labels, actors, split) for split in splits]
        for subset in scored_on:
            accs = [float((predicted == labels[rows])[subsets[subset][rows]].mean()) for rows, predicted in folds]
            print(f"{variant:14s} scored on {subset:29s} folds {' '.join(f'{a:.3f}' for a in accs)}"
                  f"  mean {np.mean(accs):.3f}")


if __name__ == "__main__":
    main()
