"""Cross-validated effect of undoing the class weights at inference (logit adjustment).

usage:
    python tools/logit_adjust_cv.py --data DIR [--cache DIR] [--tau 0,0.5,1] CV_DIR [CV_DIR ...]

The loss weighs each class by ``class_weights`` of its training split (inverse frequency),
so a model estimates probabilities for balanced classes. Logit adjustment (Menon et al.,
ICLR 2021) scores ``log p_c - tau * log w_c``: tau 1 moves the estimate back to the
training prior, tau 0 leaves the model as it is. For every fold the CV folders share, the
ensemble's clip probabilities (the mean over the folders, as ``tools/ensemble_eval.py``
computes them) are scored on the fold's validation and test actors for every tau. Prints
one row per tau: validation clips right (summed over folds) and accuracy, and the test
accuracy, macro-F1 and UAR as mean ± std over folds. Nothing is chosen here.
"""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import numpy as np

from ser_edge.train import metrics
from ser_edge.train.data import LABELS, scan_dataset
from ser_edge.train.pipeline import mean_std
from ser_edge.train.trainer import class_weights

DEFAULT_TAUS = (0.0, 0.5, 1.0)


def adjusted_predictions(probabilities: np.ndarray, weights: np.ndarray, tau: float) -> np.ndarray:
    """Argmax of ``log p - tau * log w`` per row (probabilities of 0 stay impossible)."""
    with np.errstate(divide="ignore"):
        return (np.log(probabilities) - tau * np.log(weights)).argmax(axis=1)


def training_weights(clips: list, train_actors: list[int]) -> np.ndarray:
    """``class_weights`` of the training actors' clips, as the trainer computes them."""
    actors = set(train_actors)
    labels = np.array([c.label_index for c in clips if c.actor in actors])
    return class_weights(labels, LABELS).astype(np.float64)


def fold_scores(cv_dirs: list[Path], data: str, cache: str, taus: tuple[float, ...]) -> list[dict]:
    ensemble_eval = runpy.run_path(str(Path(__file__).with_name("ensemble_eval.py")))
    clips = scan_dataset(data).clips
    rows = []
    for fold in ensemble_eval["shared_folds"](cv_dirs):
        runs = [d / fold for d in cv_dirs]
        split = ensemble_eval["fold_split"](runs)
        _, ens = ensemble_eval["ensemble"](runs, data, [*split["val"], *split["test"]], cache)
        weights = training_weights(clips, split["train"])
        row = {}
        for part in ("val", "test"):
            ev = ens.only(split[part])
            row[part] = {tau: metrics.summary(ev.y_true, adjusted_predictions(ev.probabilities, weights, tau), LABELS)
                         for tau in taus}
        rows.append(row)
        print(f"{fold}: " + "  ".join(
            f"tau {tau:g}: val {_right(row['val'][tau])} of {row['val'][tau]['n']} right, "
            f"test {100 * row['test'][tau]['accuracy']:.1f}%" for tau in taus))
    return rows


def _right(summary: dict) -> int:
    return round(summary["accuracy"] * summary["n"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", default=".cache/ser-edge")
    parser.add_argument("--tau", default=",".join(f"{t:g}" for t in DEFAULT_TAUS),
                        help="comma-separated adjustment strengths (default 0,0.5,1)")
    parser.add_argument("cv_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        taus = tuple(float(t) for t in args.tau.split(","))
        rows = fold_scores(args.cv_dirs, args.data, args.cache, taus)
    except ValueError as exc:
        parser.error(str(exc))
    print("| tau | validation clips right | validation accuracy | test accuracy | test macro-F1 | test UAR |")
    print("|---|---|---|---|---|---|")
    for tau in taus:
        right = sum(_right(r["val"][tau]) for r in rows)
        total = sum(r["val"][tau]["n"] for r in rows)
        test = mean_std([r["test"][tau] for r in rows])
        print(f"| {tau:g} | {right} of {total} | {100 * right / total:.1f}% "
              f"| {100 * test['accuracy']['mean']:.1f}% ± {100 * test['accuracy']['std']:.1f} "
              f"| {test['macro_f1']['mean']:.3f} | {test['uar']['mean']:.3f} |")
    print()
    print("Clips labelled as each class per clip of that class (test actors, all folds):")
    for tau in taus:
        confusion = sum(np.array(r["test"][tau]["confusion"]) for r in rows)  # rows: true, columns: predicted
        ratios = confusion.sum(axis=0) / confusion.sum(axis=1)
        print(f"  tau {tau:g}: " + ", ".join(f"{label} {ratio:.2f}" for label, ratio in zip(LABELS, ratios)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
