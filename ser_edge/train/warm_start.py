"""Fine-tuning: start a run from the weights of an exported model instead of random ones.

``ser-edge train DATA --init-from MODEL.onnx`` (``default``: the shipped model) copies one
member of the file (``--init-member``, default 0) into the new model before the first
epoch: every weight, and the classifier too when the file's labels are the run's own (else
the classifier starts fresh). The file must have the run's features and the recipe's
architecture; its members are rebuilt from its own weights (``export/onnx_weights.py``). The
run keeps the file's scaler too (:func:`source_scaler`) instead of fitting one on its own
training speakers: the weights expect inputs normalised as they were in their training, and
a few clips give a noisy fit. On 4 unseen actors with one training speaker per fold this
lifted fine-tuned CV accuracy from 29.5% to 39.3% (MODEL_CARD.md, "Intended use and limits"). The run's ``config.json`` records
the file's digest, member, labels and license: weights fine-tuned from a RAVDESS-trained
model are derived from it and carry its license.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.export.exporter import ExportError
from ser_edge.train.scaler import Scaler

DIGEST_HEX_CHARS = 16
DEFAULT_MODEL = "default"  # --init-from default: the model shipped in the package


class WarmStartError(ExportError):
    """The model to start from cannot seed this run (features, architecture, member)."""


def resolve(model: str | os.PathLike) -> Path:
    """``model`` as a path; ``"default"`` is the shipped model."""
    if os.fspath(model) == DEFAULT_MODEL:
        from ser_edge.edge_runtime.session import default_model_path

        return Path(default_model_path())
    return Path(model)


def describe(model: str | os.PathLike, member: int) -> dict[str, Any]:
    """What a run started from ``model`` records in its config (read from the file's metadata)."""
    path = resolve(model)
    digest, proto = _load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    if "labels" not in props:
        raise WarmStartError("not a ser-edge model (no labels in its metadata)", path=str(path))
    return {
        "model": str(path.resolve()),
        "sha256": digest,
        "member": member,
        "labels": json.loads(props["labels"]),
        "model_version": props.get("model_version", ""),
        "license": props.get("license", ""),
        "scaler": "the model's",  # source_scaler: kept, not fitted on the run's training speakers
    }


def _load(path: Path) -> tuple[str, Any]:
    """``(sha256 prefix, ModelProto)`` of the file at ``path``, from one read of it, reused
    while the file's size and modification time stay the same."""
    if not path.is_file():
        raise WarmStartError("no such model file", path=str(path))
    stat = path.stat()
    return _load_version(str(path.resolve()), (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=1)
def _load_version(path: str, version: tuple[int, int]) -> tuple[str, Any]:
    from ser_edge.export.onnx_weights import load_model_bytes, read_model_bytes

    data = read_model_bytes(path, WarmStartError)
    return hashlib.sha256(data).hexdigest()[:DIGEST_HEX_CHARS], load_model_bytes(data, path, WarmStartError)


def _read_members(path: str, sha256: str):
    """The members of the file :func:`describe` read, rebuilt once per file and digest: the
    scaler and the weights of a run (and of every fold of a cross-validation) come from one
    read and one rebuild. A file changed since :func:`describe` is refused (the run's config
    records the digest it saw). Callers copy, never modify."""
    digest, _ = _load(Path(path))
    if digest != sha256:
        raise WarmStartError(f"changed since the run read it (sha256 {digest}, not {sha256}); "
                             "start the run again", path=path)
    return _rebuild(path, digest)


@functools.lru_cache(maxsize=1)
def _rebuild(path: str, sha256: str):
    from ser_edge.export.onnx_weights import members_of

    return members_of(_load(Path(path))[1], path)


def _source_wrapper(source: dict[str, Any], feature_config: FeatureConfig):
    """The ``ExportWrapper`` rebuilt from ``source``'s file, checked against the run's features."""
    path = source["model"]
    wrapper, file_features, _ = _read_members(path, source["sha256"])
    if file_features != feature_config:
        raise WarmStartError("its feature settings differ from this run's; fine-tuning needs the same features", path=path)
    return wrapper


def source_scaler(source: dict[str, Any], feature_config: FeatureConfig) -> Scaler:
    """The scaler folded into ``source``'s file (:func:`describe`): its mean, and its scale as
    the inverse of the stored inverse."""
    wrapper = _source_wrapper(source, feature_config)
    mean = wrapper.mean[0, 0].numpy().astype(np.float32)
    scale = (1.0 / wrapper.inv_scale[0, 0].double()).numpy().astype(np.float32)
    return Scaler(mean, scale)


def initialise(model: torch.nn.Module, source: dict[str, Any], labels: Sequence[str], feature_config: FeatureConfig) -> bool:
    """Copy ``source``'s member (:func:`describe`) into ``model``; whether the classifier came too."""
    path = source["model"]
    members = list(_source_wrapper(source, feature_config).models)
    if not 0 <= source["member"] < len(members):
        raise WarmStartError(f"has {len(members)} member(s); --init-member {source['member']} is not one", path=path)
    weights = members[source["member"]].state_dict()
    target = model.state_dict()
    copy_classifier = list(source["labels"]) == list(labels)
    wanted = [k for k in target if copy_classifier or not k.startswith("classifier.")]
    misfit = [k for k in wanted if k not in weights or weights[k].shape != target[k].shape]
    if misfit:
        raise WarmStartError(f"its model is not this recipe's architecture ({misfit[0]} "
                             f"{tuple(weights[misfit[0]].shape) if misfit[0] in weights else 'missing'} "
                             f"against {tuple(target[misfit[0]].shape)})", path=path)
    with torch.no_grad():
        for key in wanted:
            target[key].copy_(weights[key])
    return copy_classifier
