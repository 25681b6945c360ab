"""Accuracy of the mean of several runs' clip probabilities (a seed ensemble).

usage:
    python tools/ensemble_eval.py --data DIR --actors 7,10,18,21 RUN_DIR RUN_DIR ...
    python tools/ensemble_eval.py --data DIR --cv-out docs/cv-X CV_DIR CV_DIR ...
    python tools/ensemble_eval.py --data DIR --dump docs/ablation/probs-X CV_DIR

With ``--actors``: each run is evaluated alone (PyTorch, its own scaler) and then as the
average of all runs' clip probabilities, on those actors. Runs must have been trained
without them.

With ``--cv-out``: the positional folders are cross-validations (``fold_k/`` each) of
one recipe with different seeds; every fold they share must have the same actor split.
Per fold, the ensemble is evaluated on the fold's validation and test actors; written to
``--cv-out``: ``fold_k.report.txt`` (the test actors' per-class report) and
``cv_metrics.json`` (per fold: ensemble and member summaries; mean +- std over folds).

With ``--dump``: each finished fold of one cross-validation is evaluated on its validation
and test actors and its clip probabilities are written to ``fold_k.probabilities.json``
(a few tens of kB; no weights). Such a folder stands in for the cross-validation in
``--cv-out``, so a seed ensemble can be measured after the run folders are gone (a machine
that comes back empty, a fold trained in another session).

``--hop S`` evaluates with windows every S seconds on clips longer than one window
(default: the runtime's ``DEFAULT_HOP_S``). ``--speed F`` (with ``--dump``) plays every
window F times faster first, as the training's speed perturbation does; dumps of one
cross-validation at several speeds, given together to ``--cv-out``, measure averaging
over speeds at test time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from ser_edge.edge_runtime.audio import DEFAULT_HOP_S
from ser_edge.train.pipeline import SUMMARY_METRICS, mean_std

PROBABILITIES_SUFFIX = ".probabilities.json"
PROBABILITY_DECIMALS = 7  # far below any gap between two classes that decides a clip


def ensemble(runs: list[Path], data: str, actors: list[int], cache: str, hop_s: float = DEFAULT_HOP_S):
    """(member Evaluations, ensemble Evaluation) on ``actors``; ValueError on a misuse."""
    from ser_edge.train.evaluate import evaluate_run

    for run in runs:
        split = json.loads((run / "config.json").read_text())["split"]
        if set(actors) & set(split["train"]):
            raise ValueError(f"{run}: actors {sorted(set(actors) & set(split['train']))} were training actors")
    members = [evaluate_run(run, data, actors, cache_dir=cache, hop_s=hop_s) for run in runs]
    return members, mean_of(runs, members)


def mean_of(sources: list[Path], members: list):
    """The Evaluation whose probabilities are the members' mean; ValueError if their clips differ."""
    for source, ev in zip(sources, members):
        if not np.array_equal(ev.y_true, members[0].y_true) or not np.array_equal(ev.clip_actors, members[0].clip_actors):
            raise ValueError(f"{source}: evaluated a different clip list")
    mean = np.mean([ev.probabilities for ev in members], axis=0)
    return dataclasses.replace(members[0], probabilities=mean)


def dump_probabilities(cv_dir: Path, data: str, cache: str, out: Path, hop_s: float = DEFAULT_HOP_S,
                       speed: float = 1.0) -> list[Path]:
    """Write each finished fold's clip probabilities on its validation and test actors."""
    from ser_edge.train.evaluate import evaluate_run

    folds = _finished_runs(cv_dir)
    if not folds:
        raise ValueError(f"{cv_dir}: no finished fold")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for run in folds:
        config = json.loads((run / "config.json").read_text())
        split = config["split"]
        ev = evaluate_run(run, data, [*split["val"], *split["test"]], cache_dir=cache, hop_s=hop_s, speed=speed)
        record = {"run": str(run), "code_version": config.get("code_version"), "hop_s": hop_s, "speed": speed,
                  "split": split,
                  "labels": list(ev.labels), "actors": list(ev.actors), "skipped": list(ev.skipped),
                  "clip_actors": ev.clip_actors.tolist(), "y_true": ev.y_true.tolist(),
                  "probabilities": np.round(ev.probabilities.astype(float), PROBABILITY_DECIMALS).tolist()}
        path = out / f"{run.name}{PROBABILITIES_SUFFIX}"
        path.write_text(json.dumps(record, separators=(",", ":")))
        written.append(path)
        print(f"{path}: {len(ev.y_true)} clips of actors {ev.actors}")
    return written


def read_dump(path: Path, hop_s: float) -> dict:
    """A ``--dump`` file's record; ValueError if it was made with another hop."""
    record = json.loads(path.read_text())
    if record["hop_s"] != hop_s:
        raise ValueError(f"{path}: evaluated with windows every {record['hop_s']} s, not {hop_s} s")
    return record


def load_probabilities(path: Path, hop_s: float):
    """An Evaluation read back from a ``--dump`` file; ValueError if it was made with another hop."""
    from ser_edge.train.evaluate import Evaluation

    record = read_dump(path, hop_s)
    return Evaluation(actors=record["actors"], labels=tuple(record["labels"]), y_true=np.asarray(record["y_true"]),
                      probabilities=np.asarray(record["probabilities"]), skipped=record["skipped"],
                      clip_actors=np.asarray(record["clip_actors"]))


def _brief(summary: dict) -> dict:
    return {k: summary[k] for k in ("n", *SUMMARY_METRICS, "ece", "actors")}


def _fold_index(name: str) -> int:
    return int(name.split("_")[1])


def _finished_runs(cv_dir: Path) -> list[Path]:
    """A cross-validation's finished fold folders (those with a ``metrics.json``), in fold order."""
    return sorted((p.parent for p in cv_dir.glob("fold_*/metrics.json")), key=lambda run: _fold_index(run.name))


def _finished(cv_dir: Path) -> set[str]:
    """The ``fold_k`` names of a cross-validation's finished folds, or of a ``--dump`` folder's files."""
    dumps = {p.name[: -len(PROBABILITIES_SUFFIX)] for p in cv_dir.glob(f"fold_*{PROBABILITIES_SUFFIX}")}
    return {run.name for run in _finished_runs(cv_dir)} | dumps


def shared_folds(cv_dirs: list[Path]) -> list[str]:
    """The ``fold_k`` names every CV folder has finished, in fold order; ValueError if none."""
    shared = set.intersection(*(_finished(d) for d in cv_dirs))
    if not shared:
        raise ValueError(f"no finished fold is shared by {', '.join(map(str, cv_dirs))}")
    return sorted(shared, key=_fold_index)


def member_source(cv_dir: Path, fold: str) -> Path:
    """Where a CV folder keeps ``fold``: its run folder if it has one, else its ``--dump`` file."""
    run = cv_dir / fold
    return run if (run / "metrics.json").is_file() else cv_dir / f"{fold}{PROBABILITIES_SUFFIX}"


def fold_split(runs: list[Path]) -> dict:
    """The actor split the runs of one fold (run folders or ``--dump`` files) share; ValueError if they differ."""
    splits = [json.loads((run / "config.json" if run.is_dir() else run).read_text())["split"] for run in runs]
    if any(s != splits[0] for s in splits):
        raise ValueError(f"{runs[0].name}: the folders split the actors differently")
    return splits[0]


def _fold_members(sources: list[Path], data: str, actors: list[int], cache: str, hop_s: float):
    """Each member of one fold evaluated on ``actors``: a run folder, or read from its ``--dump`` file."""
    from ser_edge.train.evaluate import evaluate_run

    members = []
    for source in sources:
        if source.is_dir():
            members.append(evaluate_run(source, data, actors, cache_dir=cache, hop_s=hop_s))
            continue
        ev = load_probabilities(source, hop_s)
        if sorted(ev.actors) != sorted(actors):
            raise ValueError(f"{source}: holds actors {ev.actors}, not {sorted(actors)}")
        members.append(ev)
    return members


def cross_validation(cv_dirs: list[Path], data: str, cache: str, out: Path, hop_s: float = DEFAULT_HOP_S) -> dict:
    """Evaluate the seed ensemble on every shared fold; write the reports into ``out``."""
    folds = shared_folds(cv_dirs)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for fold in folds:
        runs = [member_source(d, fold) for d in cv_dirs]
        split = fold_split(runs)
        row = {"fold": _fold_index(fold), "split": split, "members": [{"run": str(r)} for r in runs]}
        # One evaluation per member on the validation and test actors together, split below.
        all_members = _fold_members(runs, data, [*split["val"], *split["test"]], cache, hop_s)
        all_ens = mean_of(runs, all_members)
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
    mode.add_argument("--cv-out", help="report folder (positional: cross-validation or --dump folders)")
    mode.add_argument("--dump", help="folder for each fold's clip probabilities (positional: one cross-validation)")
    parser.add_argument("--cache", default=".cache/ser-edge")
    parser.add_argument("--hop", type=float, default=DEFAULT_HOP_S,
                        help=f"seconds between windows on clips longer than one (default {DEFAULT_HOP_S}, the runtime's)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="with --dump: play each window this many times faster first (default 1: as recorded)")
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.speed != 1.0 and not args.dump:
        parser.error("--speed is for --dump")
    if args.speed <= 0:
        parser.error(f"--speed must be above 0, got {args.speed}")
    try:
        if args.cv_out:
            cross_validation(args.runs, args.data, args.cache, Path(args.cv_out), args.hop)
            return 0
        if args.dump:
            if len(args.runs) != 1:
                raise ValueError("--dump takes one cross-validation folder")
            dump_probabilities(args.runs[0], args.data, args.cache, Path(args.dump), args.hop, args.speed)
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
