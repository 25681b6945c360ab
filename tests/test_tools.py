"""The ablation-table tool reads the committed fold metrics and prints what they say."""

from __future__ import annotations

import json
import runpy

from conftest import REPO

ABLATION = REPO / "docs" / "ablation"


def test_ablation_table_prints_each_runs_fold_metrics(capsys):
    runs = sorted(p for p in ABLATION.iterdir() if (p / "fold_0" / "metrics.json").is_file())
    assert len(runs) >= 2
    tool = runpy.run_path(str(REPO / "tools" / "ablation_table.py"))
    assert tool["main"](["--fold", "0", *map(str, runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for run in runs:
        metrics = json.loads((run / "fold_0" / "metrics.json").read_text())
        row = next(line for line in lines if line.startswith(f"| {run.name} |"))
        assert f"{100 * metrics['val']['accuracy']:.1f}%" in row
        assert f"{100 * metrics['test']['accuracy']:.1f}%" in row
        assert f"{metrics['best_epoch']} / {metrics['epochs_run']}" in row
