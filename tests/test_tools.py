"""The tools under tools/: each does what its docstring says, on small inputs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

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


def _probe():
    return runpy.run_path(str(REPO / "tools" / "speaker_norm_probe.py"))


def test_speaker_norm_probe_normalises_each_speaker_by_its_own_reference():
    probe = _probe()
    rng = np.random.default_rng(0)
    actors = np.repeat([1, 2, 3], 16)
    labels = np.tile(np.arange(8), 6)
    stats = rng.normal(size=(48, 4)) + actors[:, None] * 10.0  # a large per-speaker offset
    none = probe["normalise"](stats, actors, labels, "none")
    np.testing.assert_array_equal(none, stats)
    enrolled = probe["normalise"](stats, actors, labels, "enrol-neutral")
    all_clips = probe["normalise"](stats, actors, labels, "all-clips")
    for actor in (1, 2, 3):
        own = actors == actor
        reference = own & np.isin(labels, probe["ENROLMENT_EMOTIONS"])
        np.testing.assert_allclose(enrolled[reference].mean(axis=0), 0.0, atol=1e-9)
        np.testing.assert_allclose(enrolled[own] - enrolled[own][0], stats[own] - stats[own][0])
        np.testing.assert_allclose(all_clips[own].mean(axis=0), 0.0, atol=1e-9)
        np.testing.assert_allclose(all_clips[own].std(axis=0), 1.0, rtol=1e-2)


def test_speaker_norm_probe_pools_each_clips_windows():
    probe = _probe()
    features = np.arange(2 * 3 * 5, dtype=np.float32).reshape(3, 2, 5)  # 3 windows, 2 mels
    feature_set = SimpleNamespace(clips=["a", "b"], features=features, window_clip=np.array([0, 0, 1]))
    stats = probe["clip_statistics"](feature_set)
    expected_a = np.concatenate([features[:2].mean(axis=2).mean(axis=0), features[:2].std(axis=2).mean(axis=0)])
    np.testing.assert_allclose(stats[0], expected_a)
    np.testing.assert_allclose(stats[1], np.concatenate([features[2].mean(axis=1), features[2].std(axis=1)]))


def _member_latency():
    return runpy.run_path(str(REPO / "tools" / "member_latency.py"))


def test_member_latency_builds_the_shipped_graph_from_untrained_members(tmp_path):
    """The probe's graph for the shipped recipe and member count has the shipped model's
    operators and weight bytes, so its timings stand for the shipped graph's."""
    import collections

    import onnx

    from ser_edge.edge_runtime.features import FeatureConfig
    from ser_edge.export.exporter import latency_ms
    from ser_edge.export.fold import folded_indices
    from ser_edge.train.recipes import SHIPPED_RECIPE, SHIPPED_SEEDS

    tool = _member_latency()
    assert tool["parse_spec"](f"{SHIPPED_RECIPE}:2") == (SHIPPED_RECIPE, 2, False)
    assert tool["parse_spec"](f"{SHIPPED_RECIPE}:3:folded") == (SHIPPED_RECIPE, 3, True)
    for bad in ("nope:2", f"{SHIPPED_RECIPE}:0", f"{SHIPPED_RECIPE}:x", SHIPPED_RECIPE, f"{SHIPPED_RECIPE}:2:half"):
        with pytest.raises(argparse.ArgumentTypeError, match="RECIPE:N"):
            tool["parse_spec"](bad)
    config = FeatureConfig()
    path = tmp_path / "probe.onnx"
    shipped_folded = bool(folded_indices(json.loads(  # the shipped file's form (folded since 0.10.0)
        {p.key: p.value for p in onnx.load(str(REPO / "ser_edge" / "models" / "ser_edge_default.onnx")).metadata_props}
        ["provenance"])))
    size = tool["build_graph"](SHIPPED_RECIPE, len(SHIPPED_SEEDS), path, config, folded=shipped_folded)
    probe, shipped = onnx.load(str(path)), onnx.load(str(REPO / "ser_edge" / "models" / "ser_edge_default.onnx"))

    def op_types(model):
        return collections.Counter(node.op_type for node in model.graph.node)

    def weight_bytes(model):
        return sum(onnx.numpy_helper.to_array(init).nbytes for init in model.graph.initializer)

    assert op_types(probe) == op_types(shipped)
    assert weight_bytes(probe) == pytest.approx(weight_bytes(shipped), rel=0.01)
    assert size == path.stat().st_size
    features = np.zeros((1, config.n_mels, config.n_frames), np.float32)
    assert latency_ms(path, features, repeats=3) > 0


def test_per_class_cv_averages_each_class_over_the_fold_reports(tmp_path, capsys):
    from ser_edge.train.data import LABELS
    from ser_edge.train.metrics import classification_report

    tool = runpy.run_path(str(REPO / "tools" / "per_class_cv.py"))
    y_true = np.repeat(np.arange(len(LABELS)), 4)
    first = y_true.copy()
    first[y_true == 3] = 1  # fold 0: every sad clip heard as calm
    second = y_true.copy()  # fold 1: all right
    for k, y_pred in enumerate((first, second)):
        (tmp_path / f"fold_{k}.report.txt").write_text(classification_report(y_true, y_pred, LABELS))
    assert tool["main"]([str(tmp_path)]) == 0
    rows = {line.split(" | ")[0][2:]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["sad"] == "| sad | 0.500 | 0.500 | 0.500 | 0.000 / 1.000 |"
    # calm: precision 4/8 then 1; F1 0.667 (as the report rounds it) then 1
    assert rows["calm"] == "| calm | 0.750 | 1.000 | 0.834 | 1.000 / 1.000 |"
    assert rows["angry"] == "| angry | 1.000 | 1.000 | 1.000 | 1.000 / 1.000 |"

    (tmp_path / "fold_1.report.txt").write_text("accuracy 1.0\n")
    assert tool["main"]([str(tmp_path)]) == 1
    assert "fold_1.report.txt: no row for neutral" in capsys.readouterr().err


def test_logit_adjustment_moves_decisions_towards_the_training_prior():
    tool = runpy.run_path(str(REPO / "tools" / "logit_adjust_cv.py"))
    weights = np.array([2.0, 1.0, 1.0])  # class 0 counted twice in the loss (half as many clips)
    probs = np.array([[0.52, 0.33, 0.15],   # 0.52 / 2 < 0.33: tau 1 moves it to class 1
                      [0.62, 0.30, 0.08],   # 0.62 / 2 > 0.30: class 0 at every tau
                      [0.00, 0.45, 0.55]])  # a zero probability stays impossible
    assert tool["adjusted_predictions"](probs, weights, 0.0).tolist() == [0, 0, 2]
    assert tool["adjusted_predictions"](probs, weights, 1.0).tolist() == [1, 0, 2]
    assert tool["adjusted_predictions"](probs, weights, 0.5).tolist() == [0, 0, 2]  # 0.52 / sqrt(2) > 0.33


def _trained_like(model, seed):
    """Make every weight and running statistic distinct, as training does: the exporter shares
    one initializer between equal tensors (fresh BatchNorm statistics, copied layers)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = 0.05 * torch.randn(tensor.shape, generator=generator)
                tensor.add_(noise.abs() if name.endswith("running_var") else noise)
    return model


def _old_style_export(path, members, provenance):
    """An ensemble exported the way the exporter wrote graphs before export/lean.py."""
    from unittest import mock

    import torch

    from conftest import LABELS, SMALL_FEATURES
    from ser_edge.export import exporter

    shape = (SMALL_FEATURES.n_mels, SMALL_FEATURES.n_frames)
    rng = np.random.default_rng(1)
    wrapper = exporter.ExportWrapper(members, rng.normal(-40, 5, shape).astype(np.float32),
                                     rng.uniform(5, 15, shape).astype(np.float32), temperature=0.8)
    props = exporter.metadata_props(LABELS, SMALL_FEATURES, model_name="old", model_version="0.0.1",
                                    extra={"provenance": provenance})
    with mock.patch.object(exporter, "lean_copy", lambda module: module), torch.no_grad():
        exporter.export_onnx(wrapper, path, SMALL_FEATURES, props)
    exporter.store_float16(path)
    return wrapper


def test_reexport_rebuilds_an_old_graph_from_its_own_weights(tmp_path, capsys):
    import collections
    import dataclasses

    import onnx
    import torch

    from conftest import SMALL_FEATURES, small_model_config
    from ser_edge.export.exporter import onnx_probabilities, round_to_float16
    from ser_edge.train.trainer import build_model

    tool = runpy.run_path(str(REPO / "tools" / "reexport_onnx.py"))
    config = small_model_config(utterance_norm=True)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(round_to_float16(_trained_like(build_model(config, SMALL_FEATURES, "cpu").eval(), seed)))
    old, new = tmp_path / "old.onnx", tmp_path / "new.onnx"
    provenance = json.loads(json.dumps({"recipe": {"model": dataclasses.asdict(config)}, "weights": "float16"}))
    wrapper = _old_style_export(old, members, provenance)

    assert tool["main"]([str(old), str(new)]) == 0
    assert "probabilities equal" in capsys.readouterr().out
    features = np.random.default_rng(2).uniform(-80, 0, (5, 1, SMALL_FEATURES.n_mels, SMALL_FEATURES.n_frames))
    features = features.astype(np.float32)
    with torch.no_grad():
        want = wrapper(torch.from_numpy(features)).numpy()
    for path in (old, new):
        np.testing.assert_allclose(onnx_probabilities(path, features[:, 0]), want, atol=1e-6)
    old_model, new_model = onnx.load(str(old)), onnx.load(str(new))
    ops = [collections.Counter(node.op_type for node in m.graph.node) for m in (old_model, new_model)]
    assert ops[1]["Transpose"] < ops[0]["Transpose"] and ops[1]["Reshape"] < ops[0]["Reshape"]
    old_props = {p.key: p.value for p in old_model.metadata_props}
    new_props = {p.key: p.value for p in new_model.metadata_props}
    assert {k: v for k, v in new_props.items() if k not in ("provenance", "export_date")} == \
        {k: v for k, v in old_props.items() if k not in ("provenance", "export_date")}
    record = json.loads(new_props["provenance"]).pop("reexport")
    assert record["from_export_date"] == old_props["export_date"] and record["max_abs_diff"] <= 1e-6
    assert {k: v for k, v in json.loads(new_props["provenance"]).items() if k != "reexport"} == provenance
    again = tmp_path / "again.onnx"  # a lean file re-exports too (its out_proj is stored transposed)
    assert tool["main"]([str(new), str(again)]) == 0
    np.testing.assert_allclose(onnx_probabilities(again, features[:, 0]), want, atol=1e-6)


def test_reexport_refuses_a_file_it_cannot_rebuild(tmp_path, capsys):
    import dataclasses

    import torch

    from conftest import SMALL_FEATURES, small_model_config
    from ser_edge.train.trainer import build_model

    tool = runpy.run_path(str(REPO / "tools" / "reexport_onnx.py"))
    config = small_model_config()
    torch.manual_seed(0)
    model = _trained_like(build_model(config, SMALL_FEATURES, "cpu").eval(), 0)
    # the provenance names another architecture than the weights in the file
    wrong = dataclasses.replace(config, ff_dim=2 * config.ff_dim)
    _old_style_export(tmp_path / "m.onnx", [model], {"recipe": {"model": dataclasses.asdict(wrong)}})
    assert tool["main"]([str(tmp_path / "m.onnx"), str(tmp_path / "out.onnx")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'm.onnx'}: ") and "does not fit" in error
    assert not (tmp_path / "out.onnx").exists()
    assert tool["main"]([str(tmp_path / "absent.onnx"), str(tmp_path / "out.onnx")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_onnx_ab_times_two_graphs_in_alternation(tmp_path, capsys):
    from conftest import band_model

    tool = runpy.run_path(str(REPO / "tools" / "onnx_ab.py"))
    a, b = band_model(tmp_path / "a.onnx"), band_model(tmp_path / "b.onnx")
    times_a, times_b = tool["paired_times"](a, b, 5, 1)
    assert times_a.shape == times_b.shape == (5,) and (times_a > 0).all() and (times_b > 0).all()
    assert tool["main"]([str(a), str(b), "--pairs", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"A {a}: p50 ") and out[1].startswith(f"B {b}: p50 ")
    assert out[2].startswith("paired over 4: median B - A ")
    assert tool["main"]([str(a), str(tmp_path / "absent.onnx")]) == 1
    assert "absent.onnx: no such file" in capsys.readouterr().err


def test_logmel_ab_times_two_checkouts_front_ends(tmp_path, capsys):
    tool = runpy.run_path(str(REPO / "tools" / "logmel_ab.py"))
    assert tool["main"]([str(REPO), str(REPO), "--pairs", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "largest |B - A|: 0.00e+00 dB"  # the same code twice: the same bits
    assert out[1].startswith(f"A {REPO}: p50 ") and out[2].startswith(f"B {REPO}: p50 ")
    assert out[3].startswith("paired over 3: median B - A ")
    assert tool["main"]([str(REPO), str(tmp_path)]) == 1
    assert f"{tmp_path}: no ser_edge/edge_runtime/features.py there" in capsys.readouterr().err


def test_branch_share_sees_a_branch_the_classifier_ignores(tmp_path):
    """Zero the classifier's weights on the transformer's features: that branch's part of
    the logits no longer varies and gets no gradient, while the CNN's still does."""
    import dataclasses

    import torch

    from ser_edge.edge_runtime.features import FeatureConfig
    from ser_edge.models.parallel import ModelConfig
    from ser_edge.train.trainer import build_model

    tool = runpy.run_path(str(REPO / "tools" / "branch_share.py"))
    torch.manual_seed(0)
    config = ModelConfig()
    model = build_model(config, FeatureConfig(), "cpu")
    path = tmp_path / "weights.pt"
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(config)}, path)
    alive = tool["branch_share"](tool["load"](path), 8, 0)
    assert alive["logit_std_transformer"] > 0 and alive["grad_norm_transformer_layer0"] > 0
    with torch.no_grad():
        model.classifier.weight[:, -config.d_model :] = 0
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(config)}, path)
    dead = tool["branch_share"](tool["load"](path), 8, 0)
    assert dead["head_weight_norm_transformer"] == 0 and dead["logit_std_transformer"] == 0
    assert dead["grad_norm_transformer_layer0"] == 0
    assert dead["logit_std_cnn"] == pytest.approx(alive["logit_std_cnn"])
    assert dead["grad_norm_cnn_last_conv"] > 0


def test_branch_share_onnx_mode_ablates_the_members_classifier_columns(tmp_path, wav):
    """Zeroing no columns changes nothing; zeroing them all leaves a model whose answer no
    longer depends on the audio. A graph whose branch was folded at export is refused, not
    ablated in its CNN columns."""
    import onnx
    import torch

    from conftest import LABELS, SMALL_FEATURES, small_model_config
    from ser_edge.edge_runtime.session import EmotionClassifier
    from ser_edge.export.exporter import ExportWrapper, export_onnx, metadata_props
    from ser_edge.train.trainer import build_model

    tool = runpy.run_path(str(REPO / "tools" / "branch_share.py"))
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(_trained_like(build_model(small_model_config(), SMALL_FEATURES, "cpu").eval(), seed))
    shape = (SMALL_FEATURES.n_mels, SMALL_FEATURES.n_frames)
    graph = tmp_path / "live.onnx"
    verdicts = [{"folded": False, "max_logit_deviation": 0.3, "probe_windows": 8}] * 2
    export_onnx(ExportWrapper(members, np.full(shape, -40, np.float32), np.full(shape, 10, np.float32)), graph,
                SMALL_FEATURES, metadata_props(LABELS, SMALL_FEATURES, model_name="t", model_version="0",
                                               extra={"provenance": {"branch_fold": verdicts}}))
    clips = [wav(220.0, name="low.wav"), wav(1760.0, name="high.wav")]
    unchanged = tool["compare_without_columns"](graph, clips, 0)
    assert unchanged == {"clips": 2, "same_label": 2, "median_change": 0.0, "max_change": 0.0}
    width = members[0].classifier.weight.shape[1]
    blind = tmp_path / "blind.onnx"
    tool["without_columns"](graph, blind, width)
    low, high = (EmotionClassifier(blind).predict_file(c).probabilities for c in clips)
    assert low == pytest.approx(high, abs=1e-6)
    assert EmotionClassifier(graph).predict_file(clips[0]).probabilities != pytest.approx(
        EmotionClassifier(graph).predict_file(clips[1]).probabilities, abs=1e-3)
    with pytest.raises(SystemExit, match=f"--columns {width + 1} is more than the {width} features"):
        tool["without_columns"](graph, blind, width + 1)

    folded = onnx.load(str(graph))
    for entry in folded.metadata_props:
        if entry.key == "provenance":
            entry.value = json.dumps({"branch_fold": [verdicts[0], {**verdicts[1], "folded": True}]})
    onnx.save(folded, str(tmp_path / "folded.onnx"))
    with pytest.raises(SystemExit, match=r"member\(s\) \[1\] was folded into the classifier bias"):
        tool["without_columns"](tmp_path / "folded.onnx", blind, 16)


def test_refit_check_scores_the_held_out_actor_with_both_passes(tmp_path, capsys):
    tool = runpy.run_path(str(REPO / "tools" / "refit_check.py"))
    first_dir, refit_dir = tmp_path / "first", tmp_path / "refit"
    first_dir.mkdir(), refit_dir.mkdir()
    y = [0, 1, 2, 0, 1, 2]
    actors = [4, 4, 4, 6, 6, 6]

    def dump(path, split, predicted, hop_s=1.0):
        probs = np.eye(3)[predicted].tolist()
        path.write_text(json.dumps({"run": str(path), "hop_s": hop_s, "split": split, "clip_actors": actors,
                                    "y_true": y, "probabilities": probs}))

    dump(first_dir / "fold_0.probabilities.json", {"train": [1, 2], "val": [4, 6], "test": [5]}, [0, 1, 2, 0, 0, 0])
    dump(refit_dir / "fold_0.probabilities.json", {"train": [1, 2, 4], "val": [6], "test": [5]}, [1, 1, 1, 0, 1, 2])
    assert tool["main"]([str(first_dir), str(refit_dir)]) == 0
    out = capsys.readouterr().out
    # Actor 6 only: the first pass gets 1 of its 3 clips, the refit 3 (actor 4's clips do not count).
    assert "fold_0: actor 6: first pass 1 of 3, refit 3 (+2)" in out
    assert "total: first pass 1 of 3, refit 3 (+2) over 1 folds" in out
    # Dumps scored with different window hops are not the same clip scores: refused in one line.
    dump(refit_dir / "fold_0.probabilities.json", {"train": [1, 2, 4], "val": [6], "test": [5]}, [1, 1, 1, 0, 1, 2],
         hop_s=0.5)
    assert tool["main"]([str(first_dir), str(refit_dir)]) == 1
    assert "windows every 0.5 s" in capsys.readouterr().err
    # A refit that kept out an actor the first pass trained on is refused in one line.
    dump(refit_dir / "fold_0.probabilities.json", {"train": [1, 4, 6], "val": [2], "test": [5]}, [0, 0, 0, 0, 0, 0])
    assert tool["main"]([str(first_dir), str(refit_dir)]) == 1
    assert "held-out actor 2 was not a validation actor" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--cv-out", "report", "--speed", "1.1"], "--speed is for --dump"),
    (["--dump", "probs", "--speed", "0"], "--speed must be above 0, got 0.0"),
])
def test_ensemble_eval_refuses_a_speed_it_cannot_use(args, message, capsys):
    tool = runpy.run_path(str(REPO / "tools" / "ensemble_eval.py"))
    with pytest.raises(SystemExit) as exit_info:
        tool["main"](["--data", "clips", *args, "runs"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def _ruled_cv():
    spec = importlib.util.spec_from_file_location("ruled_cv", REPO / "tools" / "ruled_cv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fold_metrics(clips: int, val_acc_at_20: float = 0.5, train_loss: float = 1.0) -> dict:
    history = [{"epoch": e, "train_loss": train_loss, "val_acc": val_acc_at_20} for e in range(1, 31)]
    return {"best_epoch": 25, "epochs_run": 30, "history": history,
            "val": {"n": 120, "accuracy": clips / 120}, "test": {"n": 240, "accuracy": 0.5}}


def _fake_trainer(tool, monkeypatch, out, clips: dict[int, int], failing: tuple[int, ...] = ()) -> list[int]:
    """Stand in for ``ser-edge train`` in the tool: a fold "trains" into ``out`` with
    ``clips[fold]`` validation clips (exit 3 for ``failing`` folds); returns the folds it ran."""
    trained = []

    def run(command):
        fold = int(command[command.index("--only-fold") + 1])
        assert command[command.index("--out") + 1] == str(out) and command[command.index("--recipe") + 1] == "r"
        trained.append(fold)
        (out / f"fold_{fold}").mkdir(parents=True)
        (out / f"fold_{fold}" / "metrics.json").write_text(json.dumps(_fold_metrics(clips[fold])))
        return SimpleNamespace(returncode=3 if fold in failing else 0)

    monkeypatch.setattr(tool, "subprocess", SimpleNamespace(run=run))
    return trained


def test_ruled_cv_stops_once_the_gate_is_out_of_reach():
    tool = _ruled_cv()
    bar, margin = [80, 70, 60], 5
    assert tool.ceiling({}, bar, margin) == 225
    assert tool.verdict({}, bar, 225, margin) == ("open", [])
    assert tool.verdict({}, bar, 226, margin) == ("stopped", [])  # out of reach before any fold
    assert tool.ceiling({0: 70}, bar, margin) == 70 + 75 + 65
    assert tool.verdict({0: 70}, bar, 210, margin) == ("open", [0])
    assert tool.verdict({0: 70}, bar, 211, margin) == ("stopped", [0])
    assert tool.verdict({0: 80, 1: 70, 2: 60}, bar, 210, margin) == ("passed", [0, 1, 2])
    assert tool.verdict({0: 80, 1: 70, 2: 59}, bar, 210, margin) == ("missed", [0, 1, 2])
    assert tool.val_clips(_fold_metrics(77)) == 77


def test_ruled_cv_judges_folds_finished_out_of_order_as_if_run_in_order():
    tool = _ruled_cv()
    bar, gate, margin = [80, 70, 60, 50], 270, 12
    # Fold 3 finished (two copies side by side) while fold 2 still trains: the rule, in
    # order, runs fold 2 whatever fold 3 got, so nothing is decided yet.
    assert tool.ceiling({0: 80, 1: 65, 3: 40}, bar, margin) < gate
    assert tool.verdict({0: 80, 1: 65, 3: 40}, bar, gate, margin) == ("open", [0, 1])
    # Fold 2 done: in order the rule would run fold 3 (215 + 50 + 12 reaches 270): it counts.
    assert tool.verdict({0: 80, 1: 65, 2: 70, 3: 40}, bar, gate, margin) == ("missed", [0, 1, 2, 3])
    assert tool.verdict({0: 80, 1: 65, 2: 70, 3: 55}, bar, gate, margin) == ("passed", [0, 1, 2, 3])
    # In order the rule would have stopped before fold 3 (195 + 62 < 270): fold 3 does not count.
    assert tool.verdict({0: 80, 1: 65, 2: 50, 3: 90}, bar, gate, margin) == ("stopped", [0, 1, 2])


def test_ruled_cv_divergence_reads_epoch_20_and_the_training_loss():
    tool = _ruled_cv()
    assert not tool.diverged(_fold_metrics(60, val_acc_at_20=0.35)["history"], 0.442)
    assert tool.diverged(_fold_metrics(60, val_acc_at_20=0.34)["history"], 0.442)
    assert tool.diverged(_fold_metrics(60, train_loss=float("nan"))["history"], 0.442)
    short = _fold_metrics(60, val_acc_at_20=0.2)["history"][:12]  # stopped before epoch 20: its last epoch
    assert tool.diverged(short, 0.442)


def test_ruled_cv_trains_folds_in_order_and_stops_by_the_rule(tmp_path, monkeypatch, capsys):
    tool = _ruled_cv()
    out, done = tmp_path / "cv", tmp_path / "docs"
    (done / "fold_0").mkdir(parents=True)
    (done / "fold_0" / "metrics.json").write_text(json.dumps(_fold_metrics(80)))  # copied, not retrained
    # Fold 1 is 5 below its bar: with fold 2 at its bar too, fold 3 at 50 + 12 cannot reach.
    trained = _fake_trainer(tool, monkeypatch, out, {1: 65, 2: 60, 3: 90})
    args = ["--data", "clips", "--recipe", "r", "--out", str(out), "--done", str(done),
            "--bar", "80,70,60,50", "--gate", "270", "--margin", "12", "--epoch20", "0.4,0.4,0.4,0.4"]
    assert tool.main(args) == 0
    assert trained == [1, 2]  # after fold 2: 80 + 65 + 60 + (50 + 12) = 267 < 270
    lines = capsys.readouterr().out.splitlines()
    assert "fold 1: 65 validation clips (bar 70)" in lines[2] and "not diverged" in lines[2]
    assert lines[-3] == "before fold 3: 205 validation clips from folds [0, 1, 2], ceiling 267, gate 270"
    assert lines[-2] == "the gate is out of reach: no fold from 3 on is run"
    assert lines[-1].startswith("verdict: stopped (205 validation clips from folds [0, 1, 2]")
    assert (out / ".claims" / "fold_1").is_file() and not (out / ".claims" / "fold_0").exists()


def test_ruled_cv_command_is_one_the_cli_accepts(tmp_path):
    from ser_edge.cli import main as cli

    tool = _ruled_cv()
    args = argparse.Namespace(
        data="clips", recipe="fast-cmn-speed-wide-ema-long-lr2", out=tmp_path, bar=[1, 2, 3], seed=1, epochs=7,
        cache="cache")
    command = tool.train_command(args, 2)
    assert command[1:5] == ["-m", "ser_edge.cli", "train", "clips"]
    context = cli.commands["train"].make_context("train", command[4:])  # parses, as the CLI would
    assert context.params["folds"] == 3 and context.params["only_fold"] == 2 and context.params["seed"] == 1
    assert context.params["epochs"] == 7 and context.params["threads"] == 1 and context.params["split_seed"] == 0


def test_ruled_cv_runs_an_earlier_fold_that_a_later_ones_result_cannot_stop(tmp_path, monkeypatch, capsys):
    tool = _ruled_cv()
    out = tmp_path / "cv"
    (out / "fold_1").mkdir(parents=True)
    (out / "fold_1" / "metrics.json").write_text(json.dumps(_fold_metrics(40)))  # finished first, by another copy
    trained = _fake_trainer(tool, monkeypatch, out, {0: 90})
    args = ["--data", "clips", "--recipe", "r", "--out", str(out), "--bar", "80,70", "--gate", "140"]
    assert tool.main(args) == 0
    assert trained == [0]  # in order, fold 0 runs whatever fold 1 got; then fold 1 counts
    assert capsys.readouterr().out.splitlines()[-1] == "verdict: missed (130 validation clips from folds [0, 1]; gate 140)"


def test_ruled_cv_leaves_a_fold_another_copy_claimed(tmp_path, monkeypatch, capsys):
    tool = _ruled_cv()
    out = tmp_path / "cv"
    (out / ".claims").mkdir(parents=True)
    (out / ".claims" / "fold_0").write_text(str(os.getppid()))  # a live copy trains fold 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".claims" / "fold_1").write_text(dead.stdout)  # a copy that is gone: fold 1 resumes here
    trained = _fake_trainer(tool, monkeypatch, out, {1: 70, 2: 70}, failing=(2,))
    args = ["--data", "clips", "--recipe", "r", "--out", str(out), "--bar", "70,70,70", "--gate", "200"]
    assert tool.main(args) == 1  # fold 2's training failed
    assert trained == [1, 2]
    assert f"error: fold 2 failed to train ({out})" in capsys.readouterr().err
    assert (out / ".claims" / "fold_1").read_text() == str(os.getpid())
    assert not (out / ".claims" / "fold_2").exists()  # released: a rerun trains it again
