"""One seed of a recipe over the cross-validation folds, under a stopping rule set before it.

usage:
    python tools/ruled_cv.py --data ../shared/data/ravdess-speech --recipe R --out runs/cv-NAME \\
        --bar 85,79,77,65,72 --gate 389 [--margin 12] [--epoch20 0.442,0.242,0.375,0.417,0.358] \\
        [--seed 0] [--epochs 150] [--cache DIR] [--done docs/ablation/cv-NAME]

The rule of docs/ablation.md's one-change experiments, applied by a program instead of by
hand: the folds train in order, each as

    ser-edge train DATA --folds N --only-fold K --threads 1 --recipe R --seed S --split-seed 0
        --epochs E --cache DIR --quiet --out OUT

(a started fold resumes from its checkpoint; a finished one, with its ``metrics.json`` in
OUT or in ``--done``, where finished folds' metrics may have been copied, is kept).

The rule: fold k starts only while the gate is within reach with folds 0..k-1 as they
finished (one that another copy still trains: at its bar fold + ``--margin``) and every
later fold ``--margin`` validation clips above its bar fold. After each
fold the tool prints its validation clips against its bar and, with ``--epoch20``, whether
the run diverged: a training loss that is not finite, or a validation accuracy after 20
epochs more than 10 points below that fold's threshold. The last line is the verdict, as
if the folds had run in order: ``passed`` (every fold finished, at least the gate),
``missed`` (every fold finished, below it), ``stopped`` (the rule stopped before a fold;
only the folds before it count) or ``open`` (a fold the rule runs is unfinished).

Two copies on one OUT share its folds, side by side: each claims a fold
(``OUT/.claims/fold_K``, naming its process) before training it. The claim of a copy that
is gone is taken over, so that its fold resumes; a fold one copy finishes before an
earlier one counts only if the rule, in order, would have run it.

Exit 0 once the rule has run its course (whatever the verdict) or every unclaimed fold is
done, 1 when a fold's training fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

DIVERGENCE_EPOCH = 20  # the epoch whose validation accuracy the divergence check reads
DIVERGENCE_POINTS = 0.10  # below the fold's threshold by more than this: diverged
CLAIMS = ".claims"


def val_clips(metrics: dict) -> int:
    """How many validation clips a finished fold got right (its ``metrics.json``)."""
    return round(metrics["val"]["accuracy"] * metrics["val"]["n"])


def ceiling(done: dict[int, int], bar: list[int], margin: int) -> int:
    """The most validation clips the run can still reach: the finished folds' clips, and
    each unfinished fold at its bar fold + ``margin``."""
    return sum(done[k] if k in done else bar[k] + margin for k in range(len(bar)))


def before(done: dict[int, int], fold: int) -> dict[int, int]:
    """The finished folds that the rule, run in order, knows when it decides on ``fold``."""
    return {k: clips for k, clips in done.items() if k < fold}


def verdict(done: dict[int, int], bar: list[int], gate: int, margin: int) -> tuple[str, list[int]]:
    """The rule's verdict (``passed``, ``missed``, ``stopped`` or ``open``) and the folds it
    counts, as if the folds ran one after another: before fold k, the remaining folds are
    stopped once the gate is out of reach with folds 0..k-1 as finished and each later
    fold at its bar fold + ``margin``; ``open`` while a fold the rule runs is unfinished."""
    for fold in range(len(bar)):
        earlier = before(done, fold)
        if ceiling(earlier, bar, margin) < gate:
            return "stopped", sorted(earlier)
        if fold not in done:
            return "open", sorted(earlier)
    return ("passed" if sum(done.values()) >= gate else "missed"), sorted(done)


def diverged(history: list[dict], threshold: float) -> bool:
    """Whether a run's history shows divergence: a training loss that is not finite, or a
    validation accuracy after ``DIVERGENCE_EPOCH`` epochs more than ``DIVERGENCE_POINTS``
    below ``threshold`` (a run that stopped before that epoch is judged by its last one)."""
    if any(not math.isfinite(epoch["train_loss"]) for epoch in history):
        return True
    checked = history[min(DIVERGENCE_EPOCH, len(history)) - 1]
    return checked["val_acc"] < threshold - DIVERGENCE_POINTS


def _metrics(fold: int, places: list[Path]) -> dict | None:
    for place in places:
        path = place / f"fold_{fold}" / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def finished(places: list[Path], folds: int) -> dict[int, int]:
    """``{fold: validation clips}`` of the finished folds, from the first place that holds each."""
    found = {k: _metrics(k, places) for k in range(folds)}
    return {k: val_clips(metrics) for k, metrics in found.items() if metrics is not None}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def claim(out: Path, fold: int) -> bool:
    """Whether this process got ``fold``: no other live copy on ``out`` holds it. A claim
    file names its process; one whose process is gone (killed, machine restarted) is taken
    over, so that its fold resumes."""
    path = out / CLAIMS / f"fold_{fold}"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            with path.open("x") as handle:
                handle.write(str(os.getpid()))
            return True
        except FileExistsError:
            owner = path.read_text().strip()
            if owner.isdigit() and _alive(int(owner)):
                return False
            path.unlink(missing_ok=True)  # a dead copy's claim
    return False


def release(out: Path, fold: int) -> None:
    (out / CLAIMS / f"fold_{fold}").unlink(missing_ok=True)


def train_command(args: argparse.Namespace, fold: int) -> list[str]:
    return [sys.executable, "-m", "ser_edge.cli", "train", args.data, "--folds", str(len(args.bar)),
            "--only-fold", str(fold), "--threads", "1", "--recipe", args.recipe, "--seed", str(args.seed),
            "--split-seed", "0", "--epochs", str(args.epochs), "--cache", args.cache, "--quiet",
            "--out", str(args.out)]


def report(fold: int, metrics: dict, bar: list[int], epoch20: list[float] | None) -> str:
    line = (f"fold {fold}: {val_clips(metrics)} validation clips (bar {bar[fold]}), best epoch "
            f"{metrics['best_epoch']} of {metrics['epochs_run']}, test {100 * metrics['test']['accuracy']:.1f}%")
    if epoch20:
        state = "DIVERGED" if diverged(metrics["history"], epoch20[fold]) else "not diverged"
        line += f"; epoch-{DIVERGENCE_EPOCH} check {state} (threshold {epoch20[fold]:.3f} - {DIVERGENCE_POINTS:.2f})"
    return line


def run(args: argparse.Namespace) -> int:
    places = [args.out, *([args.done] if args.done else [])]
    folds = len(args.bar)
    for fold in range(folds):
        done = finished(places, folds)
        earlier = before(done, fold)
        reach = ceiling(earlier, args.bar, args.margin)
        print(f"before fold {fold}: {sum(earlier.values())} validation clips from folds {sorted(earlier)}, "
              f"ceiling {reach}, gate {args.gate}", flush=True)
        if reach < args.gate:
            print(f"the gate is out of reach: no fold from {fold} on is run", flush=True)
            break
        if fold in done or not claim(args.out, fold):
            continue
        if subprocess.run(train_command(args, fold)).returncode != 0:
            release(args.out, fold)
            print(f"error: fold {fold} failed to train ({args.out})", file=sys.stderr)
            return 1
        print(report(fold, _metrics(fold, places), args.bar, args.epoch20), flush=True)
    done = finished(places, folds)
    state, counted = verdict(done, args.bar, args.gate, args.margin)
    print(f"verdict: {state} ({sum(done[k] for k in counted)} validation clips from folds {counted}; gate {args.gate})")
    return 0


def _numbers(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {kind.__name__}: {text!r}") from None
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--out", required=True, type=Path, help="the cross-validation's run folder")
    parser.add_argument("--bar", required=True, type=_numbers(int), help="the bar's validation clips per fold")
    parser.add_argument("--gate", required=True, type=int, help="validation clips over all folds to pass")
    parser.add_argument("--margin", type=int, default=12, help="clips above its bar fold an unfinished fold may add")
    parser.add_argument("--epoch20", type=_numbers(float), help="per fold: the divergence check's threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--cache", default=".cache/ser-edge")
    parser.add_argument("--done", type=Path, help="another folder holding finished folds' metrics.json")
    args = parser.parse_args(argv)
    if args.epoch20 and len(args.epoch20) != len(args.bar):
        parser.error(f"--epoch20 has {len(args.epoch20)} folds, --bar {len(args.bar)}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
