"""Clips right on the actor a held-out refit kept out, against the first pass on the same clips.

usage:
    python tools/refit_check.py FIRST_DUMP_DIR REFIT_DUMP_DIR

Both folders are ``tools/ensemble_eval.py --dump`` outputs (``fold_k.probabilities.json``):
FIRST_DUMP_DIR of a cross-validation, REFIT_DUMP_DIR of its refit with
``--refit-hold-out`` (``ser-edge train --refit-from ... --refit-hold-out``). Per fold that
both have, the refit's held-out actor (its only validation actor) is scored by both: the
refit never saw it, the first pass used it (with one other) to choose its epoch and its
learning-rate drops, so the comparison leans towards the first pass. Prints one line per
fold and the totals. Both dumps must use the same window hop (``hop_s``).
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

import numpy as np


def clips_right(dump: dict, actor: int) -> tuple[int, int]:
    """(clips right, clips) of one actor in a dump."""
    mine = np.asarray(dump["clip_actors"]) == actor
    if not mine.any():
        raise ValueError(f"the dump of {dump['run']} has no clips of actor {actor}")
    predicted = np.asarray(dump["probabilities"])[mine].argmax(1)
    return int((predicted == np.asarray(dump["y_true"])[mine]).sum()), int(mine.sum())


def compare(first_dir: Path, refit_dir: Path) -> list[dict]:
    # The --dump file format and its reader (with the window-hop check) live in ensemble_eval.py.
    ensemble_eval = runpy.run_path(str(Path(__file__).with_name("ensemble_eval.py")))
    rows = []
    for path in sorted(refit_dir.glob(f"fold_*{ensemble_eval['PROBABILITIES_SUFFIX']}")):
        first_path = first_dir / path.name
        if not first_path.is_file():
            continue
        first = json.loads(first_path.read_text())
        refit = ensemble_eval["read_dump"](path, first["hop_s"])  # the same window hop, or ValueError
        if refit["split"]["test"] != first["split"]["test"] or len(refit["split"]["val"]) != 1:
            raise ValueError(f"{path}: not a held-out refit of {first_path} (test actors or held-out actor differ)")
        actor = refit["split"]["val"][0]
        if actor not in first["split"]["val"]:
            raise ValueError(f"{path}: held-out actor {actor} was not a validation actor of {first_path}")
        (refit_right, n), (first_right, _) = clips_right(refit, actor), clips_right(first, actor)
        rows.append({"fold": path.name.split(".")[0], "actor": actor, "clips": n, "first": first_right,
                     "refit": refit_right})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("refit", type=Path)
    args = parser.parse_args(argv)
    try:
        rows = compare(args.first, args.refit)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print(f"error: no fold is in both {args.first} and {args.refit}", file=sys.stderr)
        return 1
    for r in rows:
        print(f"{r['fold']}: actor {r['actor']}: first pass {r['first']} of {r['clips']}, refit {r['refit']} "
              f"({r['refit'] - r['first']:+d})")
    first, refit, clips = (sum(r[key] for r in rows) for key in ("first", "refit", "clips"))
    print(f"total: first pass {first} of {clips}, refit {refit} ({refit - first:+d}) over {len(rows)} folds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
