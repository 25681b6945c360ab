"""Exporter on a small ParallelModel: parity, dynamic batch, checker, reference evaluator, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ser_edge.edge_runtime import EmotionClassifier, FeatureConfig
from ser_edge.export.exporter import (
    PARITY_ATOL,
    ExportError,
    ExportWrapper,
    check_parity,
    export_onnx,
    fit_temperature,
    load_members,
    metadata_props,
    onnx_probabilities,
    round_to_float16,
    store_float16,
    torch_probabilities,
)
from ser_edge.train.trainer import build_model

from conftest import LABELS, SMALL_FEATURES, small_model_config, tone



@pytest.fixture(scope="module", params=["seed-head", "cmn-stats-head"])
def exported(tmp_path_factory, request):
    torch.manual_seed(0)
    config = small_model_config() if request.param == "seed-head" else small_model_config(
        utterance_norm=True, conv_time_pool="stats")
    model = build_model(config, SMALL_FEATURES, "cpu").eval()
    rng = np.random.default_rng(0)
    mean = rng.normal(-40, 5, (32, SMALL_FEATURES.n_frames)).astype(np.float32)
    scale = rng.uniform(5, 15, (32, SMALL_FEATURES.n_frames)).astype(np.float32)
    wrapper = ExportWrapper(model, mean, scale, temperature=1.5)
    path = tmp_path_factory.mktemp("export") / "small.onnx"
    props = metadata_props(LABELS, SMALL_FEATURES, model_name="small-test", model_version="0.0.1",
                           extra={"provenance": {"split_actors": {"test": [1]}}})
    export_onnx(wrapper, path, SMALL_FEATURES, props)
    features = rng.uniform(-80, 0, (8, 32, SMALL_FEATURES.n_frames)).astype(np.float32)
    return wrapper, path, features


def test_parity_and_dynamic_batch(exported):
    wrapper, path, features = exported
    result = check_parity(wrapper, path, features)
    assert result.max_abs_diff < PARITY_ATOL and result.argmax_equal
    assert result.reference_max_abs_diff is not None and result.reference_max_abs_diff < PARITY_ATOL
    want = torch_probabilities(wrapper, features)
    for batch in (1, 3, 8):
        np.testing.assert_allclose(onnx_probabilities(path, features, batch=batch), want, atol=PARITY_ATOL)


def test_scaler_and_temperature_are_in_the_graph(exported):
    wrapper, path, features = exported
    x = torch.from_numpy(features[:, None])
    with torch.no_grad():
        (model,) = wrapper.models
        manual = torch.softmax(model((x - wrapper.mean) / torch.from_numpy(1 / wrapper.inv_scale.numpy())) / 1.5, dim=1)
    np.testing.assert_allclose(onnx_probabilities(path, features), manual.numpy(), atol=1e-5)


def test_single_file_checker_and_metadata(exported):
    import onnx

    _, path, _ = exported
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == LABELS
    assert FeatureConfig.from_json(meta["feature_config"]) == SMALL_FEATURES
    assert meta["opset"] == "18" and meta["model_name"] == "small-test" and "export_date" in meta
    assert json.loads(meta["provenance"])["split_actors"]["test"] == [1]
    # No per-node debug records (stack traces with the exporting machine's paths).
    assert not any(node.metadata_props or node.doc_string for node in model.graph.node)
    assert b"stack_trace" not in path.read_bytes() and b"site-packages" not in path.read_bytes()


def test_runtime_loads_the_export(exported):
    wrapper, path, _ = exported
    clf = EmotionClassifier(path)
    assert clf.labels == tuple(LABELS) and clf.feature_config == SMALL_FEATURES
    signal = tone(440, 2.5, 16_000)
    pred = clf.predict(signal, 16_000)
    from ser_edge.edge_runtime import log_mel, split_windows

    windows, _ = split_windows(signal, SMALL_FEATURES)
    want = torch_probabilities(wrapper, log_mel(windows, SMALL_FEATURES)).mean(axis=0)
    np.testing.assert_allclose([pred.probabilities[l] for l in LABELS], want, atol=PARITY_ATOL)


def test_parity_failure_is_loud(exported):
    wrapper, path, features = exported
    torch.manual_seed(1)
    other = ExportWrapper(build_model(small_model_config(), SMALL_FEATURES, "cpu").eval(), wrapper.mean[0, 0].numpy(),
                          1 / wrapper.inv_scale[0, 0].numpy())
    with pytest.raises(ExportError, match="parity failed"):
        check_parity(other, path, features, reference=False)


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    n, k = 400, 4
    labels = rng.integers(0, k, n)
    true_logits = rng.normal(0, 1, (n, k))
    true_logits[np.arange(n), labels] += 1.0
    # Sample labels from softmax(true_logits) would be ideal; instead scale logits up 3x
    # (overconfident) and check the fitted temperature undoes a good part of it.
    temperature = fit_temperature(3.0 * true_logits, np.arange(n), labels)
    assert temperature > 1.5
    # An ensemble's logits (members, windows, labels): two identical members fit the same.
    assert fit_temperature(np.stack([3.0 * true_logits] * 2), np.arange(n), labels) == temperature


def test_ensemble_graph_is_the_mean_of_its_members(tmp_path):
    torch.manual_seed(0)
    members = [build_model(small_model_config(utterance_norm=True), SMALL_FEATURES, "cpu").eval() for _ in range(2)]
    rng = np.random.default_rng(1)
    mean = rng.normal(-40, 5, (32, SMALL_FEATURES.n_frames)).astype(np.float32)
    scale = rng.uniform(5, 15, (32, SMALL_FEATURES.n_frames)).astype(np.float32)
    features = rng.uniform(-80, 0, (6, 32, SMALL_FEATURES.n_frames)).astype(np.float32)
    ensemble = ExportWrapper(members, mean, scale, temperature=0.8)
    path = tmp_path / "ensemble.onnx"
    export_onnx(ensemble, path, SMALL_FEATURES, metadata_props(LABELS, SMALL_FEATURES, model_name="e", model_version="0"))
    assert check_parity(ensemble, path, features).argmax_equal
    singles = [torch_probabilities(ExportWrapper(m, mean, scale, temperature=0.8), features) for m in members]
    assert not np.allclose(singles[0], singles[1], atol=1e-3)  # two different members
    np.testing.assert_allclose(onnx_probabilities(path, features), np.mean(singles, axis=0), atol=PARITY_ATOL)


def test_round_to_float16_leaves_only_float16_values():
    torch.manual_seed(0)
    model = build_model(small_model_config(), SMALL_FEATURES, "cpu").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    round_to_float16(model)
    changed = 0
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32
            assert torch.equal(tensor, tensor.half().float()), name
            assert (tensor - before[name]).abs().max() <= before[name].abs().max() * 2**-11
            changed += int(not torch.equal(tensor, before[name]))
    assert changed > 0


def test_store_float16_halves_the_weights_and_keeps_the_outputs(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = round_to_float16(build_model(small_model_config(), SMALL_FEATURES, "cpu").eval())
    rng = np.random.default_rng(2)
    mean = rng.normal(-40, 5, (32, SMALL_FEATURES.n_frames)).astype(np.float32)  # not float16 values
    scale = rng.uniform(5, 15, (32, SMALL_FEATURES.n_frames)).astype(np.float32)
    wrapper = ExportWrapper(model, mean, scale)
    path = tmp_path / "small.onnx"
    export_onnx(wrapper, path, SMALL_FEATURES, metadata_props(LABELS, SMALL_FEATURES, model_name="s", model_version="0"))
    features = rng.uniform(-80, 0, (5, 32, SMALL_FEATURES.n_frames)).astype(np.float32)
    before_probs, before_size = onnx_probabilities(path, features), path.stat().st_size

    converted = store_float16(path)
    graph = onnx.load(str(path)).graph
    halves = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert converted == len(halves) > 0
    assert {n.input[0] for n in graph.node if n.op_type == "Cast"} == halves
    # The scaler (mean, 1/scale) is not made of float16 values: it stays float32.
    assert any(i.data_type == onnx.TensorProto.FLOAT and i.dims[-1] == SMALL_FEATURES.n_frames for i in graph.initializer)
    assert path.stat().st_size < before_size
    np.testing.assert_array_equal(onnx_probabilities(path, features), before_probs)
    assert check_parity(wrapper, path, features).argmax_equal
    assert EmotionClassifier(path).labels == tuple(LABELS)


def _fake_member(folder, seed, *, front_end="abc123", blas="openblas 0.3.31 Haswell", mean=0.0, n_mels=32):
    """A run folder as load_members reads it (the checkpoint's bytes are not read there)."""
    from ser_edge.train.scaler import Scaler

    folder.mkdir()
    config = {"train": {"seed": seed, "threads": 1, "device": "cpu", "lr": 1e-3}, "model": {"d_model": 16},
              "augment": {"speed_prob": 0.5}, "labels": LABELS, "features": json.loads(SMALL_FEATURES.to_json()),
              "split": {"train": [1, 2], "val": [3], "test": [4]}, "data_hash": "d", "front_end": front_end,
              "front_end_blas": blas}
    (folder / "config.json").write_text(json.dumps(config))
    Scaler(np.full((n_mels, 4), mean, np.float32), np.ones((n_mels, 4), np.float32)).save(folder / "scaler.npz")
    (folder / "best_parallel_ser.pt").write_bytes(b"")
    return folder


def test_load_members_accepts_runs_that_differ_in_seed_only(tmp_path):
    runs = [_fake_member(tmp_path / f"seed_{s}", s) for s in (0, 1)]
    shared, configs, scaler = load_members(runs)
    assert [c["train"]["seed"] for c in configs] == [0, 1] and shared is configs[0]
    np.testing.assert_array_equal(scaler.mean, np.zeros((32, 4), np.float32))


@pytest.mark.parametrize("change, message", [
    ({"front_end": "fff999"}, r"another front-end .*fingerprint fff999 against abc123"),
    ({"front_end": None}, r"another front-end .*fingerprint not recorded against abc123\)"),
    ({"front_end": "fff999", "blas": "openblas 0.3.31 SkylakeX"},
     r"fingerprint fff999 against abc123; BLAS kernels openblas 0.3.31 SkylakeX against openblas 0.3.31 Haswell\)"),
    ({"mean": 1.0}, "scaler differs"),
])
def test_load_members_refuses_a_member_with_other_features(tmp_path, change, message):
    first = _fake_member(tmp_path / "seed_0", 0)
    other = _fake_member(tmp_path / "seed_1", 1, **change)
    with pytest.raises(ExportError, match=message) as error:
        load_members([first, other])
    assert error.value.path == str(other)


def test_load_members_refuses_another_recipe_or_a_missing_checkpoint(tmp_path):
    first = _fake_member(tmp_path / "seed_0", 0)
    other = _fake_member(tmp_path / "seed_1", 1)
    config = json.loads((other / "config.json").read_text())
    config["augment"]["speed_prob"] = 0.8
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="not the same recipe"):
        load_members([first, other])
    (first / "best_parallel_ser.pt").unlink()
    with pytest.raises(ExportError, match="no best_parallel_ser.pt"):
        load_members([first])
