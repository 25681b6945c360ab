"""Fine-tuning from an exported model: its member's weights seed the new model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.export.onnx_weights import read_onnx_members
from ser_edge.train import warm_start
from ser_edge.train.recipes import RECIPES, SHIPPED_RECIPE
from ser_edge.train.trainer import build_model

from conftest import LABELS, SMALL_FEATURES


def shipped_architecture(n_classes: int):
    return dataclasses.replace(RECIPES[SHIPPED_RECIPE].model, n_classes=n_classes)


def test_start_from_the_shipped_model_with_other_labels():
    source = warm_start.describe("default", 1)
    assert source["labels"] == LABELS and source["member"] == 1 and len(source["sha256"]) == 16
    assert source["license"].startswith("CC BY-NC-SA 4.0")
    torch.manual_seed(0)
    model = build_model(shipped_architecture(3), FeatureConfig(), "cpu")
    fresh_classifier = model.classifier.weight.detach().clone()
    assert warm_start.initialise(model, source, ("a", "b", "c"), FeatureConfig()) is False
    member = read_onnx_members(source["model"])[0].models[1].state_dict()
    state = model.state_dict()
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        torch.testing.assert_close(value, member[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(model.classifier.weight, fresh_classifier, rtol=0, atol=0)  # other labels: a new head


def test_same_labels_copy_the_classifier_too():
    source = warm_start.describe("default", 0)
    model = build_model(shipped_architecture(len(LABELS)), FeatureConfig(), "cpu")
    assert warm_start.initialise(model, source, LABELS, FeatureConfig()) is True
    member = read_onnx_members(source["model"])[0].models[0]
    torch.testing.assert_close(model.classifier.weight, member.classifier.weight, rtol=0, atol=0)


def test_the_scaler_comes_from_the_file():
    import onnx
    from onnx import numpy_helper

    source = warm_start.describe("default", 0)
    scaler = warm_start.source_scaler(source, FeatureConfig())
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(source["model"]).graph.initializer}
    assert scaler.mean.shape == scaler.scale.shape == (FeatureConfig().n_mels, FeatureConfig().n_frames)
    np.testing.assert_array_equal(scaler.mean, stored["mean"].reshape(scaler.mean.shape).astype(np.float32))
    np.testing.assert_allclose(scaler.scale * stored["inv_scale"].reshape(scaler.mean.shape), 1.0, rtol=1e-6)
    assert scaler.scale.min() > 0 and scaler.scale.std() > 0  # a real fit, not ones
    with pytest.raises(warm_start.WarmStartError, match="feature settings differ"):
        warm_start.source_scaler(source, SMALL_FEATURES)


def test_what_cannot_seed_a_run_is_refused_in_one_line(tmp_path):
    with pytest.raises(warm_start.WarmStartError, match="no such model file"):
        warm_start.describe(tmp_path / "none.onnx", 0)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(warm_start.WarmStartError, match="not an ONNX model"):
        warm_start.describe(tmp_path / "junk.onnx", 0)
    source = warm_start.describe("default", 2)
    model = build_model(shipped_architecture(len(LABELS)), FeatureConfig(), "cpu")
    with pytest.raises(warm_start.WarmStartError, match="has 2 member"):
        warm_start.initialise(model, source, LABELS, FeatureConfig())
    source = warm_start.describe("default", 0)
    with pytest.raises(warm_start.WarmStartError, match="feature settings differ"):
        warm_start.initialise(model, source, LABELS, SMALL_FEATURES)
    wider = build_model(dataclasses.replace(shipped_architecture(len(LABELS)), ff_dim=1024), FeatureConfig(), "cpu")
    with pytest.raises(warm_start.WarmStartError, match="not this recipe's architecture"):
        warm_start.initialise(wider, source, LABELS, FeatureConfig())


def test_an_export_says_which_license_its_weights_carry(tmp_path):
    from ser_edge.export.exporter import RAVDESS_LICENSE, weights_license

    folder, manifest = str(tmp_path), str(tmp_path / "clips.csv")
    assert weights_license({"data_root": folder}) == RAVDESS_LICENSE
    assert weights_license({"data_root": manifest}) == "the training data's terms (trained from scratch on the clips of a CSV manifest)"
    tuned = weights_license({"data_root": manifest, "init_from": warm_start.describe("default", 0)})
    assert tuned.startswith("CC BY-NC-SA 4.0") and tuned.endswith("fine-tuned on the clips of a CSV manifest, whose terms apply too")


def test_a_run_reads_the_file_once_and_refuses_it_changed(tmp_path, monkeypatch):
    import shutil

    import onnx

    from ser_edge.export import onnx_weights
    from ser_edge.edge_runtime.session import default_model_path

    path = tmp_path / "model.onnx"
    shutil.copyfile(default_model_path(), path)
    reads = []
    real_read = onnx_weights.read_model_bytes
    monkeypatch.setattr(onnx_weights, "read_model_bytes", lambda *a, **k: reads.append(a[0]) or real_read(*a, **k))
    source = warm_start.describe(path, 0)
    warm_start.source_scaler(source, FeatureConfig())
    model = build_model(shipped_architecture(len(LABELS)), FeatureConfig(), "cpu")
    warm_start.initialise(model, source, LABELS, FeatureConfig())
    assert len(reads) == 1  # metadata, digest, scaler and weights from one read

    changed = onnx.load(path)
    onnx.helper.set_model_props(changed, {p.key: p.value for p in changed.metadata_props} | {"note": "edited"})
    onnx.save(changed, path)
    with pytest.raises(warm_start.WarmStartError, match="changed since the run read it"):
        warm_start.source_scaler(source, FeatureConfig())
    assert warm_start.describe(path, 0)["sha256"] != source["sha256"]
