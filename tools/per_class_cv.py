"""Per-class test scores of a cross-validation, from its folds' reports (Markdown).

usage: python tools/per_class_cv.py docs/cv-fast-cmn-speed-wide-ema-ens-e150

Reads every ``fold_k.report.txt`` in the folder (the layout that
``ser_edge.train.metrics.classification_report`` writes, as the trainer and
``tools/ensemble_eval.py`` do) and prints, per class, the mean precision, recall and F1
over the folds with the lowest and highest fold's recall. Nothing is recomputed: the
table summarises what the reports say.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

from ser_edge.train.data import LABELS

# One class row: label, precision, recall, f1-score, support.
ROW = re.compile(r"^\s*(?P<label>\S+)\s+(?P<precision>[\d.]+)\s+(?P<recall>[\d.]+)\s+(?P<f1>[\d.]+)\s+(?P<support>\d+)\s*$")
METRICS = ("precision", "recall", "f1")


class ReportError(ValueError):
    """A fold report that lacks a class row."""


def read_report(path: Path) -> dict[str, dict[str, float]]:
    """``{label: {precision, recall, f1}}`` from one report; every label must be there."""
    rows = {}
    for line in path.read_text().splitlines():
        match = ROW.match(line)
        if match and match["label"] in LABELS:
            rows[match["label"]] = {key: float(match[key]) for key in METRICS}
    missing = [label for label in LABELS if label not in rows]
    if missing:
        raise ReportError(f"{path}: no row for {', '.join(missing)}")
    return rows


def per_class(cv_dir: Path) -> tuple[list[Path], dict[str, dict[str, list[float]]]]:
    reports = sorted(cv_dir.glob("fold_*.report.txt"))
    if not reports:
        raise ReportError(f"{cv_dir}: no fold_*.report.txt")
    folds = [read_report(path) for path in reports]
    return reports, {label: {key: [fold[label][key] for fold in folds] for key in METRICS} for label in LABELS}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        reports, table = per_class(Path(argv[0]))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"| class | precision | recall | F1 | recall, lowest / highest of {len(reports)} folds |")
    print("|---|---|---|---|---|")
    for label, scores in table.items():
        mean = {key: statistics.fmean(values) for key, values in scores.items()}
        print(f"| {label} | {mean['precision']:.3f} | {mean['recall']:.3f} | {mean['f1']:.3f} "
              f"| {min(scores['recall']):.3f} / {max(scores['recall']):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
