"""The export-time transformer rewrite (export/lean.py): same numbers, smaller graph."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

from ser_edge.export.lean import LeanEncoder, LeanEncoderLayer, lean_copy, supports


def _layer(**changes) -> nn.TransformerEncoderLayer:
    settings = dict(d_model=64, nhead=4, dim_feedforward=128, dropout=0.1, activation="relu", batch_first=True)
    settings.update(changes)
    return nn.TransformerEncoderLayer(**settings).eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_lean_layer_computes_what_the_torch_layer_computes(batch):
    torch.manual_seed(0)
    layer = _layer()
    x = torch.randn(batch, 70, 64)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the generic path, as export traces it
    try:
        with torch.no_grad():
            want = layer(x)
            torch.testing.assert_close(LeanEncoderLayer(layer)(x), want, atol=1e-5, rtol=1e-5)
        torch.backends.mha.set_fastpath_enabled(True)
        with torch.no_grad():  # and what the fused eager kernel computes
            torch.testing.assert_close(LeanEncoderLayer(layer)(x), layer(x), atol=1e-5, rtol=1e-5)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def test_unsupported_layers_are_kept_as_they_are():
    torch.manual_seed(0)
    assert supports(_layer())
    pre_norm, gelu, time_major = _layer(norm_first=True), _layer(activation="gelu"), _layer(batch_first=False)
    for layer in (pre_norm, gelu, time_major):
        assert not supports(layer)
        with pytest.raises(ValueError, match="post-norm ReLU"):
            LeanEncoderLayer(layer)
    encoder = nn.TransformerEncoder(_layer(norm_first=True), num_layers=2, enable_nested_tensor=False).eval()
    lean = LeanEncoder(encoder)
    assert all(isinstance(layer, nn.TransformerEncoderLayer) for layer in lean.layers)
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        torch.testing.assert_close(lean(x), encoder(x))


def test_lean_copy_leaves_the_model_untouched_and_agrees_with_it():
    from ser_edge.models.parallel import ModelConfig, ParallelModel

    torch.manual_seed(0)
    model = ParallelModel(ModelConfig(utterance_norm=True)).eval()
    x = torch.randn(2, 1, 128, 563)
    with torch.no_grad():
        want = model(x)  # materialises the LazyLinear head
        rng_state = torch.get_rng_state()
        lean = lean_copy(model)
        assert torch.equal(torch.get_rng_state(), rng_state)  # exporting draws no random numbers
        assert isinstance(model.transformer, nn.TransformerEncoder)
        assert isinstance(lean.transformer, LeanEncoder)
        assert all(isinstance(layer, LeanEncoderLayer) for layer in lean.transformer.layers)
        torch.testing.assert_close(lean(x), want, atol=1e-5, rtol=1e-5)
        lean.transformer.layers[0].in_proj.weight.zero_()
        torch.testing.assert_close(model(x), want)  # the copy shares no tensors with the original


def test_the_exported_graph_has_three_transposes_per_attention_block(tmp_path):
    import onnx

    from conftest import SMALL_FEATURES, small_model_config
    from ser_edge.export.exporter import ExportWrapper, export_onnx
    from ser_edge.train.trainer import build_model

    torch.manual_seed(0)
    config = small_model_config()
    model = build_model(config, SMALL_FEATURES, "cpu").eval()
    shape = (SMALL_FEATURES.n_mels, SMALL_FEATURES.n_frames)
    path = tmp_path / "lean.onnx"
    export_onnx(ExportWrapper(model, torch.zeros(shape).numpy(), torch.ones(shape).numpy()), path, SMALL_FEATURES, {})
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    # into heads, key transposed, back out of heads; plus the branch's one (freq, time) swap
    assert ops["Transpose"] <= 3 * config.n_layers + 1, ops
    assert ops["Shape"] == 0, ops  # no batch size read back at run time
