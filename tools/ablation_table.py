"""Print the ablation table (Markdown) from CV run folders.

usage: python tools/ablation_table.py RUNS_DIR/cv-seed-e60 RUNS_DIR/cv-default-e60 ...

For each CV folder, each finished fold's validation and test accuracy (clip level) and
the mean over the folds that every listed folder has finished (same folds, same seeds).
Nothing here is chosen: the table lists what ``metrics.json`` of each fold says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fold_metrics(cv_dir: Path) -> dict[int, dict]:
    out = {}
    for path in sorted(cv_dir.glob("fold_*/metrics.json")):
        k = int(path.parent.name.split("_")[1])
        metrics = json.loads(path.read_text())
        config = json.loads((path.parent / "config.json").read_text())
        out[k] = {"val": metrics["val"]["accuracy"], "test": metrics["test"]["accuracy"],
                  "f1": metrics["test"]["macro_f1"], "uar": metrics["test"]["uar"],
                  "best": metrics["best_epoch"], "run": metrics["epochs_run"], "split": config["split"]}
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = {Path(a).name: fold_metrics(Path(a)) for a in argv}
    common = sorted(set.intersection(*(set(r) for r in runs.values())))
    folds = sorted(set().union(*(set(r) for r in runs.values())))
    head = " | ".join(f"fold {k} val / test" for k in folds)
    print(f"| recipe | {head} | mean test over folds {common} | mean val |")
    print("|---|" + "---|" * (len(folds) + 2))
    for name, res in runs.items():
        cells = [f"{100 * res[k]['val']:.1f} / {100 * res[k]['test']:.1f} (best {res[k]['best']}/{res[k]['run']})"
                 if k in res else "-" for k in folds]
        mean_test = sum(res[k]["test"] for k in common) / len(common) if common else float("nan")
        mean_val = sum(res[k]["val"] for k in common) / len(common) if common else float("nan")
        print(f"| {name} | " + " | ".join(cells) + f" | {100 * mean_test:.1f} | {100 * mean_val:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
