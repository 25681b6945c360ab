"""How much does each branch of a trained ParallelModel feed its predictions?

usage:
    python tools/branch_share.py RUN_DIR_OR_WEIGHTS [...] [--batch 64] [--seed 0]

Each argument is a run folder (its ``best_parallel_ser.pt``, the weights it is evaluated
with) or a ``.pt`` file holding ``model`` and ``model_config`` (a run's ``checkpoint.pt``
holds the training weights under ``model``; its config is read from ``config.json``
beside it). The classifier is linear over ``[CNN features, transformer features]``, so its
logits are the sum of one part per branch; per model this prints

- the norm of the classifier's weights on each branch's features,
- the standard deviation over a batch of each branch's part of the logits, and
- the gradient norm of the cross-entropy at the CNN's last convolution and at the first
  transformer layer's attention input projection (training mode, dropout on),

for a batch of standard-normal log-mels (the scaler makes real inputs about zero-mean,
unit-variance) with random labels: what it measures is how the weights route a signal,
not accuracy. A branch whose logit part does not vary with the input adds nothing.

With ``--onnx MODEL.onnx --clips FILE ...`` it measures an exported model on real audio
instead: every member's classifier loses its weights on the last ``--columns`` features
(default 64, the transformer's), and the edge runtime's predictions with and without them
are compared clip by clip (labels kept, largest change of a class probability). The
change bounds what that branch does from above, as its constant part goes too. A graph
whose transformer branches were folded at export (its provenance's ``branch_fold``) has no
such columns left: the tool says so and stops, rather than ablate CNN features.

Needs the train extra (torch; onnx for ``--onnx``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.export.fold import folded_indices
from ser_edge.models.parallel import ModelConfig
from ser_edge.train.trainer import build_model, load_model


def load(path: Path) -> torch.nn.Module:
    if path.is_dir():
        return load_model(path, FeatureConfig())
    saved = torch.load(path, map_location="cpu", weights_only=False)  # a checkpoint also holds RNG states
    config = saved.get("model_config") or json.loads((path.parent / "config.json").read_text())["model"]
    model = build_model(ModelConfig.from_dict(config), FeatureConfig(), "cpu")
    model.load_state_dict(saved["model"])
    return model


def branch_share(model: torch.nn.Module, batch: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)  # dropout draws from the global generator
    gen = torch.Generator().manual_seed(seed)
    fc = FeatureConfig()
    x = torch.randn(batch, 1, fc.n_mels, fc.n_frames, generator=gen)
    model.eval()
    with torch.no_grad():
        embedding = model.embed(x)
    n_trans = model.config.d_model
    weight = model.classifier.weight.detach()
    conv_part = embedding[:, :-n_trans] @ weight[:, :-n_trans].T
    trans_part = embedding[:, -n_trans:] @ weight[:, -n_trans:].T
    model.train()
    labels = torch.randint(0, weight.shape[0], (batch,), generator=gen)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    conv_last = [m for m in model.conv.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    return {
        "head_weight_norm_cnn": float(weight[:, :-n_trans].norm()),
        "head_weight_norm_transformer": float(weight[:, -n_trans:].norm()),
        "logit_std_cnn": float(conv_part.std(dim=0).mean()),
        "logit_std_transformer": float(trans_part.std(dim=0).mean()),
        "grad_norm_cnn_last_conv": float(conv_last.weight.grad.norm()),
        "grad_norm_transformer_layer0": float(model.transformer.layers[0].self_attn.in_proj_weight.grad.norm()),
    }


def without_columns(model_path: Path, out_path: Path, columns: int) -> None:
    """A copy of an exported model whose members' classifiers ignore their last ``columns`` features."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    provenance = json.loads({p.key: p.value for p in model.metadata_props}.get("provenance", "{}"))
    folded = folded_indices(provenance)
    if folded:
        raise SystemExit(f"{model_path}: the transformer branch of member(s) {folded} was folded into the classifier "
                         "bias at export; its columns are not in the graph (export with --no-fold to measure them)")
    heads = [t for t in model.graph.initializer if t.name.startswith("models.") and ".classifier.weight" in t.name]
    if not heads:
        raise SystemExit(f"{model_path}: no members' classifier weights found")
    for tensor in heads:
        weight = numpy_helper.to_array(tensor).copy()
        if columns > weight.shape[1]:
            raise SystemExit(f"{model_path}: --columns {columns} is more than the {weight.shape[1]} features of {tensor.name}")
        weight[:, weight.shape[1] - columns :] = 0
        tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    onnx.save(model, str(out_path))


def compare_without_columns(model_path: Path, clips: list[Path], columns: int) -> dict[str, float]:
    import tempfile

    import numpy as np

    from ser_edge.edge_runtime.session import EmotionClassifier

    with tempfile.TemporaryDirectory() as tmp:
        ablated_path = Path(tmp) / "ablated.onnx"
        without_columns(model_path, ablated_path, columns)
        full, ablated = EmotionClassifier(model_path), EmotionClassifier(ablated_path)
        same, changes = 0, []
        for clip in clips:
            a, b = full.predict_file(clip), ablated.predict_file(clip)
            same += a.label == b.label
            changes.append(max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities))
    return {"clips": len(clips), "same_label": same, "median_change": float(np.median(changes)),
            "max_change": float(np.max(changes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", type=Path, help="an exported model, measured on --clips")
    parser.add_argument("--clips", nargs="+", type=Path, default=[])
    parser.add_argument("--columns", type=int, default=ModelConfig().d_model)
    args = parser.parse_args()
    if args.onnx is not None:
        if not args.clips:
            parser.error("--onnx needs --clips")
        row = compare_without_columns(args.onnx, args.clips, args.columns)
        print(args.onnx, " ".join(f"{k} {v:.3g}" for k, v in row.items()))
    for path in args.models:
        row = branch_share(load(path), args.batch, args.seed)
        print(path, " ".join(f"{k} {v:.3g}" for k, v in row.items()))


if __name__ == "__main__":
    main()
