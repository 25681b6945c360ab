"""Folding a constant transformer branch into the classifier bias (export/fold.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from ser_edge.export.exporter import (
    PARITY_ATOL,
    ExportError,
    ExportWrapper,
    check_parity,
    export_onnx,
    metadata_props,
    onnx_probabilities,
    torch_probabilities,
)
from ser_edge.export.fold import FOLD_MAX_LOGIT_DEVIATION, FoldedMember, fold_members, probe_rows
from ser_edge.train.trainer import build_model

from conftest import LABELS, SMALL_FEATURES, small_model_config

N_MELS = 32


def _model(seed: int, *, dead: bool, **changes):
    """A small ParallelModel; ``dead``: its transformer outputs one vector whatever the input,
    as the trained members' branches do (the last layer norm's gain zeroed, its bias kept)."""
    torch.manual_seed(seed)
    model = build_model(small_model_config(**changes), SMALL_FEATURES, "cpu").eval()
    with torch.no_grad():  # distinct weights and statistics, as training leaves them (the exporter
        for name, tensor in model.state_dict().items():  # shares one initializer between equal tensors)
            if tensor.is_floating_point():
                noise = 0.05 * torch.randn(tensor.shape)
                tensor.add_(noise.abs() if name.endswith("running_var") else noise)
    if dead:
        norm = model.transformer.layers[-1].norm2
        with torch.no_grad():
            norm.weight.zero_()
            norm.bias.copy_(torch.randn_like(norm.bias))
    return model


def _scaler(rng):
    mean = rng.normal(-40, 5, (N_MELS, SMALL_FEATURES.n_frames)).astype(np.float32)
    scale = rng.uniform(5, 15, (N_MELS, SMALL_FEATURES.n_frames)).astype(np.float32)
    return mean, scale


def _windows(rng, n):
    return rng.uniform(-80, 0, (n, N_MELS, SMALL_FEATURES.n_frames)).astype(np.float32)


def _standardised(features, mean, scale):
    return (features - mean) * (1.0 / scale)


def _export(wrapper, path):
    export_onnx(wrapper, path, SMALL_FEATURES, metadata_props(LABELS, SMALL_FEATURES, model_name="f", model_version="0"))
    return path


@pytest.mark.parametrize("changes", [{}, {"utterance_norm": True, "conv_time_pool": "stats"}, {"conv_se_reduction": 2}])
def test_a_dead_branch_is_folded_and_the_member_computes_the_same_logits(changes):
    rng = np.random.default_rng(0)
    model = _model(0, dead=True, **changes)
    mean, scale = _scaler(rng)
    (folded,), (verdict,) = fold_members([model], _standardised(_windows(rng, 20), mean, scale))
    assert isinstance(folded, FoldedMember) and verdict.folded and verdict.probe_windows == 20
    assert verdict.max_logit_deviation < 1e-5
    assert not any(isinstance(m, torch.nn.TransformerEncoder) for m in folded.modules())
    # Inputs the probe never saw, louder and quieter than it, in batches of 1 and 7.
    for batch, gain in ((1, 1.0), (7, 3.0), (7, 0.2)):
        x = torch.from_numpy(_standardised(_windows(rng, batch) * gain, mean, scale)[:, None])
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_live_branch_is_kept():
    rng = np.random.default_rng(1)
    model = _model(1, dead=False)  # at initialisation the branch follows its input
    mean, scale = _scaler(rng)
    (kept,), (verdict,) = fold_members([model], _standardised(_windows(rng, 20), mean, scale))
    assert kept is model and not verdict.folded
    assert verdict.max_logit_deviation > FOLD_MAX_LOGIT_DEVIATION


def test_the_folded_ensemble_graph_matches_the_unfolded_members_and_is_smaller(tmp_path):
    rng = np.random.default_rng(2)
    members = [_model(seed, dead=True, utterance_norm=True) for seed in (2, 3)]
    mean, scale = _scaler(rng)
    full = ExportWrapper(members, mean, scale, temperature=0.8)
    folded_members, verdicts = fold_members(members, _standardised(_windows(rng, 16), mean, scale))
    assert all(v.folded for v in verdicts)
    folded_path = _export(ExportWrapper(folded_members, mean, scale, temperature=0.8), tmp_path / "folded.onnx")
    full_path = _export(full, tmp_path / "full.onnx")

    features = _windows(rng, 8)
    result = check_parity(full, folded_path, features)  # the file against the members as trained
    assert result.max_abs_diff < PARITY_ATOL and result.argmax_equal
    np.testing.assert_allclose(onnx_probabilities(folded_path, features), onnx_probabilities(full_path, features),
                               atol=PARITY_ATOL)
    singles = [torch_probabilities(ExportWrapper(m, mean, scale, temperature=0.8), features) for m in members]
    assert not np.allclose(singles[0], singles[1], atol=1e-3)  # still two different members

    def ops(path):
        return [node.op_type for node in onnx.load(str(path)).graph.node]

    # One softmax per attention layer and member is gone; the final one stays.
    assert ops(full_path).count("Softmax") == 1 + 2 * len(members[0].transformer.layers)
    assert ops(folded_path).count("Softmax") == 1
    # The branches' weights (float32) are out of the file.
    branch_bytes = sum(4 * p.numel() for m in members for p in m.transformer.parameters())
    assert full_path.stat().st_size - folded_path.stat().st_size > 0.9 * branch_bytes


def test_a_folded_squeeze_excite_member_exports_with_parity(tmp_path):
    """The gates (global means, two linear layers, a sigmoid, a product) survive the folding
    and the ONNX export: the file computes what the unfolded member computes."""
    rng = np.random.default_rng(5)
    member = _model(5, dead=True, utterance_norm=True, conv_se_reduction=2)
    mean, scale = _scaler(rng)
    (folded,), (verdict,) = fold_members([member], _standardised(_windows(rng, 16), mean, scale))
    assert verdict.folded
    path = _export(ExportWrapper([folded], mean, scale, temperature=1.2), tmp_path / "se.onnx")
    assert "Sigmoid" in [node.op_type for node in onnx.load(str(path)).graph.node]
    result = check_parity(ExportWrapper([member], mean, scale, temperature=1.2), path, _windows(rng, 8))
    assert result.max_abs_diff < PARITY_ATOL and result.argmax_equal


def test_a_fold_that_changes_the_outputs_fails_the_parity_check(tmp_path):
    """Folding a live branch (forced with a huge tolerance) is caught: parity is always taken
    against the unfolded members."""
    rng = np.random.default_rng(3)
    model = _model(4, dead=False)
    mean, scale = _scaler(rng)
    (forced,), (verdict,) = fold_members([model], _standardised(_windows(rng, 16), mean, scale), max_logit_deviation=1e9)
    assert verdict.folded
    path = _export(ExportWrapper(forced, mean, scale), tmp_path / "forced.onnx")
    with pytest.raises(ExportError, match="parity failed"):
        check_parity(ExportWrapper(model, mean, scale), path, _windows(rng, 8))


def test_probe_rows_are_evenly_spaced_and_bounded():
    rows = np.arange(100, 1100)
    picked = probe_rows(rows, max_windows=10)
    assert len(picked) == 10 and picked[0] == 100 and picked[-1] == 1099 and np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(probe_rows(rows[:5], max_windows=10), rows[:5])
    with pytest.raises(ValueError, match="probe window"):
        fold_members([_model(0, dead=True)], np.zeros((0, N_MELS, SMALL_FEATURES.n_frames), np.float32))


def test_a_folded_file_rebuilds_to_members_that_compute_it_and_reexports_folded(tmp_path):
    """Fine-tuning and re-export read members back from a file: a folded member comes back
    as a ParallelModel whose new branch feeds nothing, so it computes what the file does."""
    import dataclasses
    import json
    import runpy
    from pathlib import Path

    from ser_edge.export.onnx_weights import read_onnx_members

    rng = np.random.default_rng(5)
    config = small_model_config(utterance_norm=True)
    members = [_model(seed, dead=True, utterance_norm=True) for seed in (5, 6)]
    mean, scale = _scaler(rng)
    folded, verdicts = fold_members(members, _standardised(_windows(rng, 16), mean, scale))
    provenance = {"recipe": {"model": dataclasses.asdict(config)}, "weights": "float32",
                  "branch_fold": [v.to_dict() for v in verdicts]}
    path = tmp_path / "folded.onnx"
    export_onnx(ExportWrapper(folded, mean, scale, temperature=1.3), path, SMALL_FEATURES,
                metadata_props(LABELS, SMALL_FEATURES, model_name="f", model_version="0",
                               extra={"provenance": json.loads(json.dumps(provenance))}))

    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    rebuilt, _, _ = read_onnx_members(path)
    assert torch.equal(torch.rand(3), before)  # reading a file leaves the caller's RNG alone
    features = _windows(rng, 6)
    np.testing.assert_allclose(torch_probabilities(rebuilt, features), onnx_probabilities(path, features), atol=1e-6)
    for member in rebuilt.models:
        assert float(member.classifier.weight.detach()[:, -config.d_model :].abs().max()) == 0.0
    again, _, _ = read_onnx_members(path)  # the new branch is the same every time
    for a, b in zip(rebuilt.models, again.models, strict=True):
        torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)

    tool = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "reexport_onnx.py"))
    out = tmp_path / "again.onnx"
    assert tool["main"]([str(path), str(out)]) == 0
    np.testing.assert_allclose(onnx_probabilities(out, features), onnx_probabilities(path, features), atol=1e-6)
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("Softmax") == 1  # still folded
