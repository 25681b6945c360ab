"""Print the ablation table (Markdown) from CV run folders.

usage: python tools/ablation_table.py [--fold K] RUNS_DIR/cv-seed-e60 RUNS_DIR/cv-default-e60 ...

For each CV folder, each finished fold's validation and test accuracy (clip level) and
the mean over the folds that every listed folder has finished (same folds, same seeds).
With ``--fold K``: one row per folder for fold K alone, with the validation loss, UAR and
the test macro-F1 and UAR. Nothing here is chosen: the table lists what each fold's
``metrics.json`` says.
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
                  "val_loss": metrics["val"]["loss"], "val_uar": metrics["val"]["uar"],
                  "f1": metrics["test"]["macro_f1"], "uar": metrics["test"]["uar"],
                  "best": metrics["best_epoch"], "run": metrics["epochs_run"], "split": config["split"]}
    return out


def one_fold(runs: dict[str, dict[int, dict]], k: int) -> None:
    print(f"| run (fold {k}) | val acc | val loss | val UAR | test acc | test macro-F1 | test UAR | best / epochs run |")
    print("|---|---|---|---|---|---|---|---|")
    for name, res in runs.items():
        if k in res:
            r = res[k]
            print(f"| {name} | {100 * r['val']:.1f}% | {r['val_loss']:.3f} | {r['val_uar']:.3f} | {100 * r['test']:.1f}% "
                  f"| {r['f1']:.3f} | {r['uar']:.3f} | {r['best']} / {r['run']} |")


def main(argv: list[str]) -> int:
    fold = None
    if argv[:1] == ["--fold"] and len(argv) > 1:
        fold, argv = int(argv[1]), argv[2:]
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = {Path(a).name: fold_metrics(Path(a)) for a in argv}
    if fold is not None:
        one_fold(runs, fold)
        return 0
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
