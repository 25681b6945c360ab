"""Accuracy of the mean of several runs' clip probabilities (a seed ensemble).

usage:
    python tools/ensemble_eval.py --data DIR --actors 7,10,18,21 RUN_DIR RUN_DIR ...
    python tools/ensemble_eval.py --data DIR --cv-out docs/cv-X CV_DIR CV_DIR ...

With ``--actors``: each run is evaluated alone (PyTorch, its own scaler) and then as the
average of all runs' clip probabilities, on those actors. Runs must have been trained
without them.

With ``--cv-out``: the positional folders are cross-validations (``fold_k/`` each) of
one recipe with different seeds; every fold they share must have the same actor split.
Per fold, the ensemble is evaluated on the fold's validation and test actors; written to
``--cv-out``: ``fold_k.report.txt`` (the test actors' per-class report) and
``cv_metrics.json`` (per fold: ensemble and member summaries; mean +- std over folds).

``--hop S`` evaluates with windows every S seconds on clips longer than one window
(default: the runtime's ``DEFAULT_HOP_S``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from ser_edge.edge_runtime.audio import DEFAULT_HOP_S
from ser_edge.train.pipeline import SUMMARY_METRICS, mean_std


def ensemble(runs: list[Path], data: str, actors: list[int], cache: str, hop_s: float = DEFAULT_HOP_S):
    """(member Evaluations, ensemble Evaluation) on ``actors``; ValueError on a misuse."""
    from ser_edge.train.evaluate import evaluate_run

    for run in runs:
        split = json.loads((run / "config.json").read_text())["split"]
        if set(actors) & set(split["train"]):
            raise ValueError(f"{run}: actors {sorted(set(actors) & set(split['train']))} were training actors")
    members = [evaluate_run(run, data, actors, cache_dir=cache, hop_s=hop_s) for run in runs]
    for run, ev in zip(runs, members):
        if not np.array_equal(ev.y_true, members[0].y_true):
            raise ValueError(f"{run}: evaluated a different clip list")
    mean = np.mean([ev.probabilities for ev in members], axis=0)
    return members, dataclasses.replace(members[0], probabilities=mean)


def _brief(summary: dict) -> dict:
    return {k: summary[k] for k in ("n", *SUMMARY_METRICS, "ece", "actors")}


def shared_folds(cv_dirs: list[Path]) -> list[str]:
    """The ``fold_k`` names every CV folder has finished, in fold order; ValueError if none."""
    shared = set.intersection(*({p.parent.name for p in d.glob("fold_*/metrics.json")} for d in cv_dirs))
    if not shared:
        raise ValueError(f"no finished fold is shared by {', '.join(map(str, cv_dirs))}")
    return sorted(shared, key=lambda name: int(name.split("_")[1]))


def fold_split(runs: list[Path]) -> dict:
    """The actor split the runs of one fold share; ValueError if they differ."""
    splits = [json.loads((run / "config.json").read_text())["split"] for run in runs]
    if any(s != splits[0] for s in splits):
        raise ValueError(f"{runs[0].name}: the folders split the actors differently")
    return splits[0]


def cross_validation(cv_dirs: list[Path], data: str, cache: str, out: Path, hop_s: float = DEFAULT_HOP_S) -> dict:
    """Evaluate the seed ensemble on every shared fold; write the reports into ``out``."""
    folds = shared_folds(cv_dirs)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for fold in folds:
        runs = [d / fold for d in cv_dirs]
        split = fold_split(runs)
        row = {"fold": int(fold.split("_")[1]), "split": split, "members": [{"run": str(r)} for r in runs]}
        # One evaluation per member on the validation and test actors together, split below.
        all_members, all_ens = ensemble(runs, data, [*split["val"], *split["test"]], cache, hop_s)
        for part in ("val", "test"):
            members, ens = [ev.only(split[part]) for ev in all_members], all_ens.only(split[part])
            row[part] = _brief(ens.summary)
            for record, ev in zip(row["members"], members):
                record[f"{part}_accuracy"] = ev.summary["accuracy"]
            if part == "test":
                (out / f"{fold}.report.txt").write_text(ens.report())
        results.append(row)
        members_val = ", ".join(f"{100 * m['val_accuracy']:.1f}" for m in row["members"])
        print(f"{fold}: ensemble val {100 * row['val']['accuracy']:.1f}% / test {100 * row['test']['accuracy']:.1f}% "
              f"(members val {members_val})")
    summary = {part: mean_std([r[part] for r in results]) for part in ("val", "test")}
    record = {"cv_dirs": [str(d) for d in cv_dirs], "hop_s": hop_s, "folds": results, "summary": summary}
    (out / "cv_metrics.json").write_text(json.dumps(record, indent=2))
    for part in ("val", "test"):
        s = summary[part]
        print(f"{part}: accuracy {100 * s['accuracy']['mean']:.1f}% ± {100 * s['accuracy']['std']:.1f}, "
              f"macro-F1 {s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f}, "
              f"UAR {s['uar']['mean']:.3f} ± {s['uar']['std']:.3f} over {len(results)} folds")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--actors", help="comma-separated actor numbers (positional: run folders)")
    mode.add_argument("--cv-out", help="report folder (positional: cross-validation folders)")
    parser.add_argument("--cache", default=".cache/ser-edge")
    parser.add_argument("--hop", type=float, default=DEFAULT_HOP_S,
                        help=f"seconds between windows on clips longer than one (default {DEFAULT_HOP_S}, the runtime's)")
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cv_out:
            cross_validation(args.runs, args.data, args.cache, Path(args.cv_out), args.hop)
            return 0
        actors = [int(a) for a in args.actors.split(",")]
        members, ens = ensemble(args.runs, args.data, actors, args.cache, args.hop)
    except ValueError as exc:
        parser.error(str(exc))
    for run, ev in zip(args.runs, members):
        print(f"{run}: accuracy {100 * ev.summary['accuracy']:.1f}%")
    print(f"ensemble of {len(members)} on actors {actors} ({len(ens.y_true)} clips): "
          f"accuracy {100 * ens.summary['accuracy']:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
