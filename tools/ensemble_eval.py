"""Accuracy of the mean of several runs' clip probabilities (a model ensemble), per actor set.

usage: python tools/ensemble_eval.py --data DIR --actors 7,10,18,21 RUN_DIR RUN_DIR ...

Each run is evaluated alone (PyTorch, its own scaler) and then as the average of all runs'
clip probabilities. Runs must have been trained without these actors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--actors", required=True, help="comma-separated actor numbers")
    parser.add_argument("--cache", default=".cache/ser-edge")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    from ser_edge.train.evaluate import evaluate_run

    actors = [int(a) for a in args.actors.split(",")]
    for run in args.runs:
        split = json.loads((Path(run) / "config.json").read_text())["split"]
        if set(actors) & set(split["train"]):
            parser.error(f"{run}: actors {sorted(set(actors) & set(split['train']))} were training actors")
    evaluations = [evaluate_run(run, args.data, actors, cache_dir=args.cache) for run in args.runs]
    y = evaluations[0].y_true
    for run, ev in zip(args.runs, evaluations):
        if not np.array_equal(ev.y_true, y):
            parser.error(f"{run}: evaluated a different clip list")
        print(f"{run}: accuracy {100 * ev.summary['accuracy']:.1f}%")
    mean = np.mean([ev.probabilities for ev in evaluations], axis=0)
    ensemble = dataclasses.replace(evaluations[0], probabilities=mean)
    print(f"ensemble of {len(evaluations)} on actors {actors} ({len(y)} clips): "
          f"accuracy {100 * ensemble.summary['accuracy']:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
