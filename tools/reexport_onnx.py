"""Re-export a ser-edge ONNX file with today's exporter, from the weights inside it.

usage:
    python tools/reexport_onnx.py IN.onnx OUT.onnx [--atol 1e-6]

For a model whose training runs are gone (the shipped 0.7.0 file: its members were trained
on an earlier machine) when the exporter has changed how it writes the graph, not what it
computes (``export/lean.py``). The members' ``ModelConfig`` comes from the file's provenance
(``recipe.model``), their weights from its initializers: the ones the exporter kept under
their parameter names (a lean graph's renamed back, ``LEAN_NAMES``), and the projection
weights of each transformer layer that it stores transposed and unnamed (``PROJECTIONS``,
in that order, member by member and layer by layer). Files of either form, from before
``export/lean.py`` or after, re-export. Scaler and temperature are copied as stored. Nothing is trusted: the
rebuilt modules must reproduce IN's probabilities, OUT is parity-checked against them
(``exporter.check_parity``), and OUT must give IN's probabilities to ``--atol`` on random
and silent inputs; otherwise the tool stops with an error and writes nothing. OUT keeps IN's
metadata; its provenance gains ``reexport`` (IN's export date, today's code version, the
largest difference measured). Needs the dev extra (torch, onnx).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

FLOAT16_SUFFIX = "__float16"  # exporter.store_float16's initializer names
MEMBERS_PREFIX = "models."
# Per transformer layer, in the order the exporter writes them: those of these that the file
# does not hold under their own names are stored transposed and unnamed (in_proj, linear1 and
# linear2 in graphs from before export/lean.py; out_proj as well in lean ones).
PROJECTIONS = ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight")
# Parameter names in a lean graph (export/lean.py's modules) -> nn.TransformerEncoderLayer's.
LEAN_NAMES = {
    "in_proj.weight": "self_attn.in_proj_weight",
    "in_proj.bias": "self_attn.in_proj_bias",
    "out_proj.weight": "self_attn.out_proj.weight",
    "out_proj.bias": "self_attn.out_proj.bias",
}
DEFAULT_ATOL = 1e-6
CHECK_WINDOWS = 6
CHECK_SEED = 0


class ReexportError(Exception):
    pass


def _torch_name(name: str) -> str:
    """An initializer's parameter name as in ``ParallelModel`` (lean layers renamed back)."""
    layer, sep, rest = name.rpartition(".transformer.layers.")
    if sep:
        index, _, param = rest.partition(".")
        return f"{layer}{sep}{index}.{LEAN_NAMES.get(param, param)}"
    return name


def _initializers(model) -> tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray]]]:
    """Named member/scaler tensors (float16 ones as float32), and the unnamed 2-D float ones in file order."""
    from onnx import numpy_helper

    named, unnamed = {}, []
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        name = _torch_name(init.name.removesuffix(FLOAT16_SUFFIX))
        if values.dtype == np.float16:
            values = values.astype(np.float32)
        if name.startswith(MEMBERS_PREFIX) or name in ("mean", "inv_scale", "inv_temperature"):
            named[name] = values
        elif values.dtype == np.float32 and values.ndim == 2:
            unnamed.append((init.name, values))
    return named, unnamed


def rebuild_wrapper(model):
    """The ``ExportWrapper`` whose export ``model`` is (see the module docstring)."""
    import torch

    from ser_edge.edge_runtime.features import FeatureConfig
    from ser_edge.export.exporter import ExportWrapper
    from ser_edge.models.parallel import ModelConfig
    from ser_edge.train.trainer import build_model

    props = {p.key: p.value for p in model.metadata_props}
    provenance = json.loads(props.get("provenance", "{}"))
    if "model" not in provenance.get("recipe", {}):
        raise ReexportError("the file's provenance has no recipe.model: not written by ser-edge's exporter")
    feature_config = FeatureConfig.from_json(props["feature_config"])
    config = ModelConfig.from_dict(provenance["recipe"]["model"])
    named, unnamed = _initializers(model)
    n_members = 1 + max(int(k.split(".")[1]) for k in named if k.startswith(MEMBERS_PREFIX))
    members = [build_model(config, feature_config, "cpu").eval() for _ in range(n_members)]
    wrapper = ExportWrapper(members, np.zeros(named["mean"].shape[2:], np.float32), np.ones(named["mean"].shape[2:], np.float32))
    state = wrapper.state_dict()
    missing = [key for m in range(n_members) for layer in range(config.n_layers) for name in PROJECTIONS
               if (key := f"models.{m}.transformer.layers.{layer}.{name}") not in named]
    if len(unnamed) != len(missing):
        raise ReexportError(f"expected {len(missing)} unnamed projection weights, found {len(unnamed)}")
    filled = dict(named)
    for key, (init_name, values) in zip(missing, unnamed):
        if values.T.shape != tuple(state[key].shape):
            raise ReexportError(f"{init_name} {values.shape} does not fit {key} {tuple(state[key].shape)} transposed")
        filled[key] = values.T
    absent = sorted(k for k in state if k not in filled and not k.endswith("num_batches_tracked"))
    if absent:
        raise ReexportError(f"no weights in the file for {absent[:3]} ({len(absent)} in all)")
    with torch.no_grad():
        for key, values in filled.items():
            if key not in state:
                raise ReexportError(f"the file holds {key}, which the recipe's model does not have")
            state[key].copy_(torch.from_numpy(np.array(values, dtype=np.float32)).reshape(state[key].shape))
    return wrapper, feature_config, props


def reexport(src: Path, dst: Path, atol: float = DEFAULT_ATOL) -> float:
    """Write ``dst``; the largest |probability difference| between ``src`` and ``dst``."""
    import onnx

    from ser_edge.export.exporter import check_parity, export_onnx, onnx_probabilities, store_float16, torch_probabilities
    from ser_edge.train.trainer import code_version

    model = onnx.load(str(src))
    wrapper, feature_config, props = rebuild_wrapper(model)
    rng = np.random.default_rng(CHECK_SEED)
    shape = (feature_config.n_mels, feature_config.n_frames)
    features = np.concatenate([rng.uniform(-feature_config.top_db, 0, (CHECK_WINDOWS - 1, *shape)),
                               np.full((1, *shape), -feature_config.top_db)]).astype(np.float32)
    want = onnx_probabilities(src, features)
    rebuilt = float(np.abs(torch_probabilities(wrapper, features) - want).max())
    if rebuilt > atol:
        raise ReexportError(f"the weights read from {src} do not reproduce it: max |diff| {rebuilt:.2e} > {atol:.0e}")
    provenance = json.loads(props["provenance"])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / dst.name
        export_onnx(wrapper, out, feature_config, props)
        if provenance.get("weights") == "float16":
            store_float16(out)
        check_parity(wrapper, out, features)
        diff = float(np.abs(onnx_probabilities(out, features) - want).max())
        if diff > atol:
            raise ReexportError(f"re-exported graph differs from {src}: max |diff| {diff:.2e} > {atol:.0e}")
        provenance["reexport"] = {"from_export_date": props.get("export_date"), "code_version": code_version(),
                                  "max_abs_diff": diff}
        result = onnx.load(str(out))
        for entry in result.metadata_props:
            if entry.key == "provenance":
                entry.value = json.dumps(provenance)
            elif entry.key == "export_date":
                entry.value = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(result, str(dst), save_as_external_data=False)
    return diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    args = parser.parse_args(argv)
    if not args.src.is_file():
        print(f"error: {args.src}: no such file", file=sys.stderr)
        return 1
    try:
        diff = reexport(args.src, args.dst, args.atol)
    except ReexportError as error:
        print(f"error: {args.src}: {error}", file=sys.stderr)
        return 1
    print(f"{args.dst}: {args.dst.stat().st_size / 1e6:.2f} MB, probabilities equal to {args.src}'s within {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
