"""The members of a ser-edge ONNX file as PyTorch modules, rebuilt from the weights inside it.

For a model whose training runs are gone: re-exporting it with a newer exporter
(``tools/reexport_onnx.py``) or fine-tuning from it (``ser-edge train --init-from``). The
members' ``ModelConfig`` comes from the file's provenance (``recipe.model``), their weights
from its initializers: the ones the exporter kept under their parameter names (a lean
graph's renamed back, ``LEAN_NAMES``), and the projection weights of each transformer layer
that it stores transposed and unnamed (``PROJECTIONS``, in that order, member by member and
layer by layer). Files of either form, from before ``export/lean.py`` or after, are read.
A member whose transformer branch the exporter folded into its classifier bias
(``export/fold.py``; the provenance's ``branch_fold``) has no transformer weights in the file:
it is rebuilt with a freshly initialised branch (``FOLDED_BRANCH_SEED``) whose classifier
columns are zero, so it computes what the file computes; fine-tuning from it trains that
branch from scratch. Callers check what they rebuilt against the file's own probabilities
where it matters.
Training side: needs torch and onnx.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ser_edge.export.exporter import ExportError
from ser_edge.export.fold import folded_indices

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


FOLDED_BRANCH_SEED = 0  # torch seed of a folded member's new transformer branch (its RNG is restored after)


class OnnxWeightsError(ExportError):
    """The file's weights cannot be mapped back onto the recipe's modules."""


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
        raise OnnxWeightsError("the file's provenance has no recipe.model: not written by ser-edge's exporter")
    feature_config = FeatureConfig.from_json(props["feature_config"])
    config = ModelConfig.from_dict(provenance["recipe"]["model"])
    named, unnamed = _initializers(model)
    n_members = 1 + max(int(k.split(".")[1]) for k in named if k.startswith(MEMBERS_PREFIX))
    folded = set(folded_indices(provenance))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FOLDED_BRANCH_SEED)
        members = [build_model(config, feature_config, "cpu").eval() for _ in range(n_members)]
    wrapper = ExportWrapper(members, np.zeros(named["mean"].shape[2:], np.float32), np.ones(named["mean"].shape[2:], np.float32))
    state = wrapper.state_dict()
    for m in sorted(folded):
        _unfold(named, state, m, config.d_model)
    missing = [key for m in range(n_members) if m not in folded for layer in range(config.n_layers)
               for name in PROJECTIONS if (key := f"models.{m}.transformer.layers.{layer}.{name}") not in named]
    if len(unnamed) != len(missing):
        raise OnnxWeightsError(f"expected {len(missing)} unnamed projection weights, found {len(unnamed)}")
    filled = dict(named)
    for key, (init_name, values) in zip(missing, unnamed, strict=True):
        if values.T.shape != tuple(state[key].shape):
            raise OnnxWeightsError(f"{init_name} {values.shape} does not fit {key} {tuple(state[key].shape)} transposed")
        filled[key] = values.T
    absent = sorted(k for k in state if k not in filled and not k.endswith("num_batches_tracked"))
    if absent:
        raise OnnxWeightsError(f"no weights in the file for {absent[:3]} ({len(absent)} in all)")
    with torch.no_grad():
        for key, values in filled.items():
            if key not in state:
                raise OnnxWeightsError(f"the file holds {key}, which the recipe's model does not have")
            state[key].copy_(torch.from_numpy(np.array(values, dtype=np.float32)).reshape(state[key].shape))
    return wrapper, feature_config, props


def _unfold(named: dict[str, np.ndarray], state: dict, member: int, d_model: int) -> None:
    """Fill ``named`` for a folded member: its new branch's initial weights, and a classifier
    with zero columns for that branch (the folded bias already holds its constant)."""
    prefix = f"{MEMBERS_PREFIX}{member}."
    weight_key = f"{prefix}classifier.weight"
    if weight_key not in named:
        raise OnnxWeightsError(f"member {member} is marked folded but the file has no {weight_key}")
    weight = named[weight_key]
    n_cnn = state[weight_key].shape[1] - d_model
    if weight.shape != (state[weight_key].shape[0], n_cnn):
        raise OnnxWeightsError(f"{weight_key} {weight.shape} does not fit a folded member "
                               f"({state[weight_key].shape[0]}, {n_cnn})")
    named[weight_key] = np.concatenate([weight, np.zeros((weight.shape[0], d_model), np.float32)], axis=1)
    for key, tensor in state.items():
        if key.startswith(f"{prefix}transformer.") and key not in named:
            named[key] = tensor.numpy().copy()


def load_model_file(path: str | os.PathLike, error: type[ExportError] | None = None):
    """The ``onnx.ModelProto`` at ``path``; a missing file or one that is not a model raises
    ``error`` (default :class:`OnnxWeightsError`) naming the file."""
    return load_model_bytes(read_model_bytes(path, error), path, error)


def read_model_bytes(path: str | os.PathLike, error: type[ExportError] | None = None) -> bytes:
    """The bytes of the model file at ``path``; a missing or unreadable file raises ``error``."""
    error = error or OnnxWeightsError
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error("no such model file", path=path)
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise error(f"cannot read it ({exc.strerror or type(exc).__name__})", path=path) from exc


def load_model_bytes(data: bytes, path: str | os.PathLike, error: type[ExportError] | None = None):
    """The ``onnx.ModelProto`` in ``data``, read from ``path``; not a model raises ``error``."""
    import onnx

    error = error or OnnxWeightsError
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # onnx raises DecodeError and others for bytes that are not a model
        raise error(f"not an ONNX model ({type(exc).__name__})", path=os.fspath(path)) from exc


def members_of(model, path: str | os.PathLike):
    """``(wrapper, feature_config, metadata)`` of the ser-edge ``ModelProto`` read from ``path``
    (:func:`rebuild_wrapper`); errors name the file."""
    try:
        return rebuild_wrapper(model)
    except OnnxWeightsError as exc:
        raise OnnxWeightsError(exc.problem, path=os.fspath(path)) from None


def read_onnx_members(path: str | os.PathLike):
    """``(wrapper, feature_config, metadata)`` of the ser-edge ONNX file at ``path``."""
    return members_of(load_model_file(path), path)
