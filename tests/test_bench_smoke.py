"""A quick run of the benchmark code (the numbers are not checked: benchmarks are not tests)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ser_edge.bench import evaluate_targets
from ser_edge.cli import main

TARGETS = Path(__file__).resolve().parents[1] / "benchmarks" / "targets.json"


def test_bench_runs_end_to_end(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model), "--repeats", "3",
                                       "--targets", str(TARGETS), "--json", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    stages = results["fp32/threads=1"]["stages"]
    assert set(stages) == {"48000", "44100", "16000"}
    assert set(stages["48000"]) == {"decode", "resample", "log_mel", "inference", "total"}
    assert results["fp32/threads=1"]["pytorch"]["total"]["p50"] > 0
    assert set(results["length_scaling"]) == {"3s", "10s", "60s"}
    assert results["length_scaling"]["60s"]["windows"] == 58
    assert results["peak_rss_mb"] > 10 and results["cold_start"]["in_process_total_ms"] > 0
    assert results["installed_mb"]["train"] > results["installed_mb"]["edge"] > 0
    assert "| total_p50_ms | max 10 |" in result.output
    checked = evaluate_targets(results, json.loads(TARGETS.read_text()))
    assert all(value is not None for _, _, value in checked.values())


def test_the_pytorch_reference_folds_what_the_file_folded(tmp_path):
    """Both sides of the speed-up compute the same thing: a member the file holds folded
    runs folded in the PyTorch reference too, and the result says how many."""
    from ser_edge.bench import BenchConfig, torch_reference
    from ser_edge.edge_runtime.session import EmotionClassifier

    from conftest import band_model

    verdicts = [{"folded": True, "max_logit_deviation": 0.0, "probe_windows": 8},
                {"folded": False, "max_logit_deviation": 0.5, "probe_windows": 8}]
    provenance = {"members": [{"seed": 0}, {"seed": 1}], "branch_fold": verdicts}
    model = band_model(tmp_path / "m.onnx", metadata={"provenance": json.dumps(provenance)})
    config = BenchConfig(repeats=2, warmup=1)
    folded = torch_reference(EmotionClassifier(model), tmp_path, 1, config)
    assert folded["folded_members"] == 1 and folded["inference"]["p50"] > 0
    plain = band_model(tmp_path / "plain.onnx", metadata={"provenance": json.dumps({"members": [{"seed": 0}]})})
    assert torch_reference(EmotionClassifier(plain), tmp_path, 1, config)["folded_members"] == 0
