"""End to end on real RAVDESS clips: train 2 epochs, reload, evaluate, export, classify."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ser_edge.cli import main

from conftest import DATA_DIR, front_end_with_blas, needs_data

ACTORS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Links to one clip per emotion (normal intensity, statement 1, repetition 1) of 4 actors."""
    root = tmp_path_factory.mktemp("ravdess")
    for actor in ACTORS:
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir()
        for emotion in range(1, 9):
            name = f"03-01-{emotion:02d}-01-01-01-{actor:02d}.flac"
            os.symlink(DATA_DIR / f"Actor_{actor:02d}" / name, folder / name)
    return root


@needs_data
@pytest.mark.slow
def test_train_reload_evaluate_export_classify(small_data, tmp_path, monkeypatch):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(small_data), "--out", str(run_dir), "--epochs", "2",
                                  "--cache", str(cache), "--quiet", "--seed", "1"])
    assert result.exit_code == 0, result.output
    for name in ("best_parallel_ser.pt", "scaler.npz", "config.json", "metrics.json", "report.txt",
                 "confusion.png", "curves.png", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    split = config["split"]
    assert sorted(split["train"] + split["val"] + split["test"]) == list(ACTORS)
    assert config["data_hash"] and config["features"]["n_mels"] == 128
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["test"]["n"] == 8 * len(split["test"])
    assert any(list(cache.iterdir()))  # features cached on disk

    # Resuming a finished run trains nothing more and reports the same numbers; the config
    # keeps the code version that trained it and lists the one that resumed it.
    from ser_edge.train import trainer

    monkeypatch.setattr(trainer, "code_version", lambda: "9.9.9+gresumed")
    again = runner.invoke(main, ["train", str(small_data), "--out", str(run_dir), "--epochs", "2",
                                 "--cache", str(cache), "--quiet", "--seed", "1"])
    assert again.exit_code == 0
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == metrics["test"]
    resumed = json.loads((run_dir / "config.json").read_text())
    assert resumed["code_version"] == config["code_version"] != "9.9.9+gresumed"
    assert resumed["resumed_with_code_versions"] == ["9.9.9+gresumed"]
    monkeypatch.undo()
    # Resuming with another recipe is refused in one line, and the run is left as it was.
    other = runner.invoke(main, ["train", str(small_data), "--out", str(run_dir), "--epochs", "2",
                                 "--cache", str(cache), "--quiet", "--seed", "1", "--ema-decay", "0.5"])
    assert other.exit_code == 1
    assert f"error: {run_dir}: holds another run (different train.ema_decay)" in other.output
    assert "Traceback" not in other.output
    mixing = runner.invoke(main, ["train", str(small_data), "--out", str(run_dir), "--epochs", "2",
                                  "--cache", str(cache), "--quiet", "--seed", "1", "--mixstyle", "0.5"])
    assert mixing.exit_code == 1 and "(different model.mixstyle_prob)" in mixing.output
    warming = runner.invoke(main, ["train", str(small_data), "--out", str(run_dir), "--epochs", "2",
                                   "--cache", str(cache), "--quiet", "--seed", "1", "--warmup-epochs", "1"])
    assert warming.exit_code == 1 and "(different train.warmup_epochs)" in warming.output
    assert json.loads((run_dir / "config.json").read_text()) == resumed

    evaluated = runner.invoke(main, ["evaluate", str(run_dir), "--cache", str(cache), "--json", str(tmp_path / "eval.json")])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"actors {split['test']}" in evaluated.output and "NOT HELD OUT" not in evaluated.output
    seen = runner.invoke(main, ["evaluate", str(run_dir), "--cache", str(cache), "--actors", str(split["train"][0])])
    assert seen.exit_code == 0 and f"NOT HELD OUT: the model was trained on actors [{split['train'][0]}]" in seen.output
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    onnx_path = tmp_path / "model.onnx"
    exported = runner.invoke(main, ["export", str(run_dir), "--out", str(onnx_path), "--cache", str(cache), "--no-calibrate"])
    assert exported.exit_code == 0, exported.output
    assert "argmax equal" in exported.output
    assert "transformer branch folded into the classifier bias in" in exported.output  # measured, either way

    onnx_eval = runner.invoke(main, ["evaluate", "--model", str(onnx_path), "--data", str(small_data),
                                     "--actors", ",".join(map(str, split["test"])), "--json", str(tmp_path / "onnx.json")])
    assert onnx_eval.exit_code == 0, onnx_eval.output
    assert json.loads((tmp_path / "onnx.json").read_text())["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    clip = next((small_data / f"Actor_{split['test'][0]:02d}").iterdir())
    classified = runner.invoke(main, ["classify", str(clip), "--model", str(onnx_path), "--json"])
    assert classified.exit_code == 0
    assert json.loads(classified.stdout)["label"] in config["labels"]


@needs_data
@pytest.mark.slow
def test_rebuild_trains_and_ships_a_two_seed_ensemble(small_data, tmp_path):
    """The one-command rebuild: two seeds in parallel -> one ensemble graph -> provenance."""
    import onnx

    from ser_edge.edge_runtime import EmotionClassifier
    from ser_edge.train.rebuild import blas_pin, cpu_has_avx2
    from ser_edge.train.rebuild import main as rebuild
    from ser_edge.train.recipes import SHIPPED_FRONT_END_BLAS

    run_dir, out_dir, cache = tmp_path / "runs", tmp_path / "models", tmp_path / "cache"
    args = ["--data", str(small_data), "--run-dir", str(run_dir), "--out-dir", str(out_dir), "--cache", str(cache),
            "--seeds", "1,2", "--epochs", "2"]
    assert rebuild(args) == 0
    provenance = json.loads((out_dir / "ser_edge_default.json").read_text())
    assert [m["seed"] for m in provenance["members"]] == [1, 2]
    assert all(m["epochs_run"] == 2 for m in provenance["members"])
    for member in provenance["members"]:  # each member names the code that trained it
        config = json.loads((run_dir / member["run"] / "config.json").read_text())
        assert member["code_version"] == config["code_version"]
        assert config["front_end"] == provenance["front_end"]  # the features they saw, on record
    # The members learned from the shipped members' BLAS kernels where this CPU has them
    # (the rebuild pins them): the fingerprint on record is the one those kernels compute.
    pin = blas_pin(os.environ, machine=platform.machine(), has_avx2=cpu_has_avx2())
    fingerprint, kernels = front_end_with_blas(config["features"], pin)
    assert provenance["front_end"] == fingerprint
    assert provenance["front_end_blas"] == config["front_end_blas"] == kernels
    if pin:
        assert provenance["front_end_blas"].split()[-1] == SHIPPED_FRONT_END_BLAS
    assert provenance["command"].endswith(" ".join(args))
    split = provenance["split"]
    test_summary = provenance["test_edge_runtime"]["fp32"]["summary"]
    assert test_summary["actors"] == split["test"] and test_summary["n"] == 8 * len(split["test"])

    model = out_dir / "ser_edge_default.onnx"
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    # The graph and the JSON carry the same member records (one function writes both).
    assert json.loads(meta["provenance"])["members"] == provenance["members"]
    # Who trained the members and who exported them are both on record.
    assert provenance["export_code_version"] == json.loads(meta["provenance"])["export_code_version"]
    assert provenance["export_code_version"].split("+")[0] == provenance["code_version"].split("+")[0]
    assert "code_version" not in provenance["export"]  # said once, at the top level
    assert all(m["validation"]["actors"] == split["val"] for m in provenance["members"])
    # The clean robustness condition is the fp32 test report.
    assert provenance["robustness_test_accuracy"]["clean"] == test_summary["accuracy"]
    # The shipped weights are stored as float16 (SHIPPED_WEIGHTS).
    assert json.loads(meta["provenance"])["weights"] == provenance["export"]["weights"] == "float16"
    # Each member's branch verdict is on record, in the graph and in the JSON.
    folds = json.loads(meta["provenance"])["branch_fold"]
    assert folds == provenance["export"]["branch_fold"] and len(folds) == 2
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(model)).graph.initializer)
    # The shipped graph averages the two members' tempered softmax: recompute it in
    # PyTorch from the member runs (weights rounded to float16, as shipped), window by
    # window, and compare with the edge runtime.
    import torch

    from ser_edge.edge_runtime import FeatureConfig, load_audio, log_mel, split_windows
    from ser_edge.export.exporter import round_to_float16
    from ser_edge.train.scaler import Scaler
    from ser_edge.train.trainer import load_model

    fc = FeatureConfig.from_json(meta["feature_config"])
    clip = next((small_data / f"Actor_{split['test'][0]:02d}").iterdir())
    features = log_mel(split_windows(load_audio(clip).samples, fc)[0], fc)
    temperature = provenance["export"]["temperature"]
    members = []
    for seed in (1, 2):
        scaled = torch.from_numpy(Scaler.load(run_dir / f"seed_{seed}" / "scaler.npz").transform(features)[:, None])
        with torch.no_grad():
            logits = round_to_float16(load_model(run_dir / f"seed_{seed}", fc))(scaled)
        members.append(torch.softmax(logits / temperature, dim=1).numpy())
    assert not np.allclose(members[0], members[1], atol=1e-3)
    expected = np.mean(members, axis=0).mean(axis=0)
    got = EmotionClassifier(model).predict_file(clip).probabilities
    np.testing.assert_allclose([got[label] for label in json.loads(meta["labels"])], expected, atol=1e-4)

    # Runs of different splits cannot form one ensemble: one line, non-zero exit. (The other
    # run learns from the members' BLAS kernels, or its front-end would be what differs.)
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "ser_edge.cli", "train", str(small_data), "--out", str(other), "--epochs", "1",
                    "--cache", str(cache), "--quiet", "--seed", "1", "--split-seed", "5"],
                   env={**os.environ, **({"OPENBLAS_CORETYPE": pin} if pin else {})}, check=True)
    mixed = CliRunner().invoke(main, ["export", str(run_dir / "seed_1"), str(other), "--out", str(tmp_path / "x.onnx"),
                                      "--cache", str(cache)])
    assert mixed.exit_code != 0
    assert "same recipe and actor split" in mixed.output and mixed.output.count("\n") == 1

    # The seed-ensemble CV tool on the same members, seen as fold 0 of two cross-validations.
    import runpy
    import shutil

    from conftest import REPO

    cv = {name: tmp_path / name for name in ("cv_a", "cv_b", "cv_other")}
    for name, run in zip(cv, (run_dir / "seed_1", run_dir / "seed_2")):
        cv[name].mkdir()
        os.symlink(run, cv[name] / "fold_0")
    # A fold whose actor split differs (validation and test actors swapped).
    shutil.copytree(run_dir / "seed_2", cv["cv_other"] / "fold_0")
    swapped = json.loads((run_dir / "seed_2" / "config.json").read_text())
    swapped["split"]["val"], swapped["split"]["test"] = swapped["split"]["test"], swapped["split"]["val"]
    (cv["cv_other"] / "fold_0" / "config.json").write_text(json.dumps(swapped))
    tool = runpy.run_path(str(REPO / "tools" / "ensemble_eval.py"))
    report_dir = tmp_path / "cv_report"
    record = tool["cross_validation"]([cv["cv_a"], cv["cv_b"]], str(small_data), str(cache), report_dir)
    fold = record["folds"][0]
    for seed, member in zip((1, 2), fold["members"]):
        member_metrics = json.loads((run_dir / f"seed_{seed}" / "metrics.json").read_text())
        assert member["test_accuracy"] == pytest.approx(member_metrics["test"]["accuracy"])
        assert member["val_accuracy"] == pytest.approx(member_metrics["val"]["accuracy"])
    assert fold["test"]["actors"] == split["test"] and fold["test"]["n"] == 8 * len(split["test"])
    assert record["summary"]["test"]["accuracy"] == {"mean": fold["test"]["accuracy"], "std": 0.0}
    assert f"actors {split['test']}" in (report_dir / "fold_0.report.txt").read_text()
    assert json.loads((report_dir / "cv_metrics.json").read_text()) == record
    with pytest.raises(ValueError, match="split the actors differently"):
        tool["cross_validation"]([cv["cv_a"], cv["cv_other"]], str(small_data), str(cache), report_dir)
    # One member's clip probabilities written out stand in for its run folder: same CV.
    dump_dir = tmp_path / "cv_b_probabilities"
    written = tool["dump_probabilities"](cv["cv_b"], str(small_data), str(cache), dump_dir)
    assert [p.name for p in written] == ["fold_0.probabilities.json"]
    from_dump = tool["cross_validation"]([cv["cv_a"], dump_dir], str(small_data), str(cache), tmp_path / "cv_report_2")
    for part in ("val", "test"):
        got, want = from_dump["folds"][0][part], fold[part]
        assert {k: got[k] for k in ("n", "accuracy", "macro_f1", "uar", "actors")} == \
            {k: want[k] for k in ("n", "accuracy", "macro_f1", "uar", "actors")}
        assert got["ece"] == pytest.approx(want["ece"], abs=1e-6)
    assert from_dump["folds"][0]["members"][1]["run"] == str(dump_dir / "fold_0.probabilities.json")
    with pytest.raises(ValueError, match="windows every 1.0 s, not 0.25 s"):
        tool["cross_validation"]([cv["cv_a"], dump_dir], str(small_data), str(cache), tmp_path / "cv_report_3", 0.25)
    # Denser windows: the same clips, more windows per clip longer than 3 s, so other
    # averaged probabilities (every clip here lasts 3.2-4.0 s).
    _, coarse = tool["ensemble"]([run_dir / "seed_1"], str(small_data), list(split["test"]), str(cache))
    _, dense = tool["ensemble"]([run_dir / "seed_1"], str(small_data), list(split["test"]), str(cache), 0.25)
    np.testing.assert_array_equal(dense.y_true, coarse.y_true)
    assert not np.allclose(dense.probabilities, coarse.probabilities, atol=1e-4)
    # Speed at test time: the same clips, every window played 1.1x faster, other probabilities, on record.
    fast_dir = tmp_path / "cv_b_speed"
    tool["dump_probabilities"](cv["cv_b"], str(small_data), str(cache), fast_dir, speed=1.1)
    fast, plain = (json.loads((d / "fold_0.probabilities.json").read_text()) for d in (fast_dir, dump_dir))
    assert (fast["speed"], plain["speed"]) == (1.1, 1.0) and fast["y_true"] == plain["y_true"]
    assert not np.allclose(fast["probabilities"], plain["probabilities"], atol=1e-4)


@needs_data
@pytest.mark.slow
def test_a_refit_run_trains_evaluates_and_exports(small_data, tmp_path):
    """--refit-from on real clips: the validation actor joins training, the run reports
    it as trained on, and it exports (no validation actor left to calibrate on)."""
    first, refit, cache = tmp_path / "first", tmp_path / "refit", tmp_path / "cache"
    runner = CliRunner()
    common = ["--cache", str(cache), "--quiet", "--seed", "1"]
    assert runner.invoke(main, ["train", str(small_data), "--out", str(first), "--epochs", "2", *common]).exit_code == 0
    before = json.loads((first / "config.json").read_text())["split"]
    done = runner.invoke(main, ["train", str(small_data), "--out", str(refit), "--refit-from", str(first), *common])
    assert done.exit_code == 0, done.output
    assert f"refit: train {sorted(before['train'] + before['val'])}, held out []" in done.output
    metrics = json.loads((refit / "metrics.json").read_text())
    assert metrics["epochs_run"] == json.loads((first / "metrics.json").read_text())["best_epoch"]
    seen = runner.invoke(main, ["evaluate", str(refit), "--cache", str(cache), "--actors", str(before["val"][0])])
    assert seen.exit_code == 0 and "NOT HELD OUT" in seen.output
    onnx_path = tmp_path / "refit.onnx"
    exported = runner.invoke(main, ["export", str(refit), "--out", str(onnx_path), "--cache", str(cache)])
    assert exported.exit_code == 0, exported.output
    assert "argmax equal" in exported.output
    # Another seed than the first pass's is refused in one line, before any training.
    other = runner.invoke(main, ["train", str(small_data), "--out", str(tmp_path / "x"), "--refit-from", str(first),
                                 "--cache", str(cache), "--quiet", "--seed", "2"])
    assert other.exit_code == 1 and "was trained with another recipe (different train.seed)" in other.output
    assert "Traceback" not in other.output
