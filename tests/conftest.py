"""Shared fixtures: tiny ONNX graphs built with onnx.helper, synthetic audio files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_edge.edge_runtime.features import FeatureConfig

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SER_EDGE_DATA", REPO.parent / "shared" / "data" / "ravdess-speech"))
LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
# A small front-end and ParallelModel for fast export / training tests.
SMALL_FEATURES = FeatureConfig(sample_rate=16_000, n_fft=256, hop_length=128, n_mels=32, clip_s=1.0, f_max_hz=8_000.0)

# The front-end fingerprint and the BLAS kernels that computed it, printed by a fresh
# interpreter for the feature config given as JSON.
FRONT_END_PROBE = """
import json, sys
from ser_edge.edge_runtime import FeatureConfig
from ser_edge.train.data import blas_kernels, front_end_fingerprint
print(front_end_fingerprint(FeatureConfig.from_dict(json.loads(sys.argv[1]))))
print(blas_kernels())
"""


def fresh_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """stdout of ``python -c code args`` in a fresh interpreter with environment ``env``
    (default: this one's): what numpy's OpenBLAS reads only at start-up, its kernel set
    (OPENBLAS_CORETYPE) and its thread count, can differ there."""
    return subprocess.run([sys.executable, "-c", code, *args], env=os.environ if env is None else env,
                          capture_output=True, text=True, check=True).stdout


def front_end_with_blas(features: dict, coretype: str | None) -> tuple[str, str]:
    """(front-end fingerprint, BLAS kernels) of the feature config ``features`` (a dict, as
    a run's config.json holds it) with OpenBLAS's kernel set pinned to ``coretype``
    (None: the one it picks for this CPU)."""
    env = {**os.environ, **({"OPENBLAS_CORETYPE": coretype} if coretype else {})}
    fingerprint, kernels = fresh_python(FRONT_END_PROBE, json.dumps(features), env=env).splitlines()
    return fingerprint, kernels


def small_model_config(**changes):
    """A ParallelModel config sized for SMALL_FEATURES (imports torch)."""
    from ser_edge.models.parallel import ModelConfig

    return ModelConfig(n_mels=32, conv_channels=(4, 8, 8), conv_pools=((2, 2), (2, 2), (2, 2)), d_model=16,
                       n_heads=2, ff_dim=32, n_layers=2, transformer_pool=(2, 4), **changes)


def band_model(
    path: Path,
    config: FeatureConfig = FeatureConfig(),
    labels: list[str] = LABELS,
    *,
    n_outputs: int | None = None,
    metadata: dict[str, str] | None = None,
    input_frames: int | None = None,
) -> Path:
    """A tiny ONNX 'classifier': mean log-mel per band group -> softmax.

    Label i scores the mean energy of mel-band group i (groups split the mel axis evenly),
    so a low tone wins label 0 and a high tone a later label: real, predictable outputs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_out = n_outputs if n_outputs is not None else len(labels)
    frames = input_frames if input_frames is not None else config.n_frames
    weights = np.zeros((config.n_mels, n_out), np.float32)
    for i, group in enumerate(np.array_split(np.arange(config.n_mels), n_out)):
        weights[group, i] = 1.0 / len(group)
    nodes = [
        helper.make_node("ReduceMax", ["log_mel", "axes_t"], ["per_band"], keepdims=0),  # (B,1,M)
        helper.make_node("Flatten", ["per_band"], ["flat"], axis=1),  # (B, M)
        helper.make_node("MatMul", ["flat", "w"], ["scores"]),
        helper.make_node("Mul", ["scores", "sharp"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "band_model",
        [helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, ["batch", 1, config.n_mels, frames])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array([3], np.int64), "axes_t"),
            numpy_helper.from_array(np.array(0.5, np.float32), "sharp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {"labels": json.dumps(labels), "feature_config": config.to_json(), "model_name": "band-test"}
    meta.update(metadata or {})
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return band_model(tmp_path_factory.mktemp("models") / "band.onnx")


def tone(freq_hz: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.fixture()
def wav(tmp_path):
    """Write a tone to a WAV file: wav(freq_hz, seconds, sample_rate=48000, name=...)."""

    def make(freq_hz: float = 440.0, seconds: float = 2.0, sample_rate: int = 48_000, name: str = "tone.wav",
             subtype: str = "PCM_16") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone(freq_hz, seconds, sample_rate), sample_rate, subtype=subtype)
        return path

    return make


needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"RAVDESS data folder {DATA_DIR} is absent (set SER_EDGE_DATA)"
)
