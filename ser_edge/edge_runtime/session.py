"""The ONNX session wrapper: log-mel windows in, emotion probabilities out.

The model contract (written by ``ser_edge.export``, checked here at load):

* input ``log_mel``: float32 ``(batch, 1, n_mels, n_frames)``, unnormalised log-mel from
  :func:`ser_edge.edge_runtime.features.log_mel` (the scaler is folded into the graph);
* output ``probabilities``: float32 ``(batch, n_labels)``, softmax over the labels;
* metadata: ``labels`` (JSON list, output order), ``feature_config`` (JSON of
  :class:`FeatureConfig`), plus descriptive keys (model name/version, provenance, ...).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from typing import Any, Sequence

import numpy as np

from ser_edge.edge_runtime.audio import (
    DEFAULT_HOP_S,
    MAX_DURATION_S,
    MIN_DURATION_S,
    AudioSource,
    check_signal,
    load_audio,
    split_windows,
    to_model_rate,
)
from ser_edge.edge_runtime.errors import ModelError
from ser_edge.edge_runtime.features import FeatureConfig, log_mel

DEFAULT_MODEL_NAME = "ser_edge_default.onnx"
INPUT_NAME = "log_mel"
OUTPUT_NAME = "probabilities"
# Windows per onnxruntime call on long clips. Per-window cost of the shipped model on the
# project's 2-core Xeon (idle, ms at batch 1/2/4/8/16): 1 thread 3.8/3.8/3.7/6.8/7.1,
# 2 threads 3.9/3.3/3.0/4.6/4.4. Beyond 4 windows the first conv block's activations
# leave the cache; 4 also bounds memory.
WINDOW_BATCH = 4


def default_model_path() -> str:
    """Path of the model shipped inside the package (``ser_edge/models/``)."""
    return str(importlib.resources.files("ser_edge.models").joinpath(DEFAULT_MODEL_NAME))


def session_options(threads: int) -> Any:
    """The one place onnxruntime's SessionOptions are built: CPU, no arena, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclasses.dataclass(frozen=True)
class WindowPrediction:
    """Prediction for one 3 s window of a longer clip."""

    start_s: float
    end_s: float
    label: str
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Clip-level prediction: the mean of the window probabilities."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    windows: tuple[WindowPrediction, ...]
    duration_s: float
    path: str | None = None

    def to_dict(self, *, timeline: bool = False) -> dict[str, Any]:
        """Stable JSON shape: path, label, confidence, probabilities (+ windows)."""
        out: dict[str, Any] = {
            "path": self.path,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
        }
        if timeline:
            out["windows"] = [window.to_dict() for window in self.windows]
        return out


def _shape_of(node: Any) -> list[Any]:
    return [dim if isinstance(dim, int) else None for dim in node.shape]


class EmotionClassifier:
    """An ONNX emotion model on CPU with its own front-end settings.

    >>> clf = EmotionClassifier()                     # the model shipped in the package
    >>> clf.predict_file("clip.wav").label
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        threads: int = 1,
        hop_s: float = DEFAULT_HOP_S,
        max_duration_s: float | None = MAX_DURATION_S,
        min_duration_s: float | None = MIN_DURATION_S,
    ) -> None:
        import onnxruntime as ort

        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
        if hop_s <= 0:
            raise ValueError(f"hop_s must be positive, got {hop_s}")
        if min_duration_s is not None and (min_duration_s < 0 or (max_duration_s is not None and min_duration_s > max_duration_s)):
            raise ValueError(f"need 0 <= min_duration_s <= max_duration_s, got {min_duration_s} and {max_duration_s}")
        self.path = os.fspath(path) if path is not None else default_model_path()
        self.threads = threads
        self.hop_s = hop_s
        self.max_duration_s = max_duration_s
        self.min_duration_s = min_duration_s
        if not os.path.isfile(self.path):
            if os.path.exists(self.path):
                raise ModelError("not a regular file, so not a model file", path=self.path)
            hint = "" if path is not None else " (no default model is shipped in this install; pass a model path)"
            raise ModelError(f"model file not found{hint}", path=self.path)
        try:
            self._session = ort.InferenceSession(
                self.path, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise ModelError(f"cannot load ONNX model ({type(exc).__name__}: {exc})".splitlines()[0], path=self.path) from exc
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.labels, self.feature_config = self._read_contract()

    def _read_contract(self) -> tuple[tuple[str, ...], FeatureConfig]:
        meta = self.metadata
        for key in ("labels", "feature_config"):
            if key not in meta:
                raise ModelError(f"model metadata has no '{key}' entry", path=self.path)
        try:
            labels = json.loads(meta["labels"])
        except json.JSONDecodeError as exc:
            raise ModelError(f"metadata 'labels' is not JSON: {exc}", path=self.path) from exc
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ModelError("metadata 'labels' must be a non-empty JSON list of strings", path=self.path)
        try:
            config = FeatureConfig.from_json(meta["feature_config"])
        except ModelError as exc:
            raise ModelError(exc.problem, path=self.path) from exc

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise ModelError(
                f"graph has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}, "
                f"expected ['{INPUT_NAME}'] and ['{OUTPUT_NAME}']",
                path=self.path,
            )
        in_shape, out_shape = _shape_of(inputs[0]), _shape_of(outputs[0])
        expected_in = [None, 1, config.n_mels, config.n_frames]
        if len(in_shape) != 4 or in_shape[1:] != expected_in[1:]:
            raise ModelError(
                f"graph input shape {in_shape} does not match the feature config "
                f"(batch, 1, n_mels={config.n_mels}, n_frames={config.n_frames})",
                path=self.path,
            )
        if len(out_shape) != 2 or out_shape[1] != len(labels):
            raise ModelError(
                f"graph output has {out_shape[-1] if out_shape else '?'} classes "
                f"but the metadata lists {len(labels)} labels",
                path=self.path,
            )
        return tuple(labels), config

    # -- inference ---------------------------------------------------------------------

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities ``(batch, n_labels)`` for log-mel ``(batch, n_mels, n_frames)``."""
        features = np.asarray(features, dtype=np.float32)
        expected = (self.feature_config.n_mels, self.feature_config.n_frames)
        if features.ndim != 3 or features.shape[1:] != expected:
            raise ValueError(f"features must be (batch, {expected[0]}, {expected[1]}), got {features.shape}")
        chunks = [
            self._session.run([OUTPUT_NAME], {INPUT_NAME: features[i : i + WINDOW_BATCH, None]})[0]
            for i in range(0, len(features), WINDOW_BATCH)
        ]
        return np.concatenate(chunks, axis=0)

    def predict(self, signal: np.ndarray, sample_rate: int, *, name: str | None = None) -> Prediction:
        """Classify mono ``(n,)`` or multi-channel ``(n, channels)`` audio at any rate."""
        if isinstance(signal, (str, bytes, os.PathLike)):
            raise TypeError(f"predict takes samples, not a path ({signal!r}); use predict_file for files")
        samples = check_signal(signal, sample_rate, name=name, max_duration_s=self.max_duration_s,
                               min_duration_s=self.min_duration_s)
        return self._predict_mono(samples, int(sample_rate), name)

    def predict_file(self, source: AudioSource) -> Prediction:
        """Classify an audio file (WAV, FLAC, Ogg, MP3; path or binary file object)."""
        audio = load_audio(source, max_duration_s=self.max_duration_s, min_duration_s=self.min_duration_s)
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        return self._predict_mono(audio.samples, audio.sample_rate, name)

    def _predict_mono(self, samples: np.ndarray, sample_rate: int, name: str | None) -> Prediction:
        config = self.feature_config
        resampled = to_model_rate(samples, sample_rate, config)
        windows, starts_s = split_windows(resampled, config, self.hop_s)
        probabilities = self.predict_features(log_mel(windows, config))
        return aggregate_windows(self.labels, config, probabilities, starts_s, len(resampled) / config.sample_rate, name)


def aggregate_windows(
    labels: Sequence[str],
    config: FeatureConfig,
    probabilities: np.ndarray,
    starts_s: Sequence[float],
    duration_s: float,
    name: str | None = None,
) -> Prediction:
    """Clip prediction = mean of the window probabilities; windows kept as the timeline."""
    mean = probabilities.mean(axis=0)
    best = int(np.argmax(mean))
    windows = tuple(
        WindowPrediction(
            start_s=round(float(start), 6),
            end_s=round(float(min(start + config.clip_s, duration_s)), 6),
            label=labels[int(np.argmax(row))],
            probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
        )
        for start, row in zip(starts_s, probabilities, strict=True)
    )
    return Prediction(
        label=labels[best],
        confidence=float(mean[best]),
        probabilities={label: float(p) for label, p in zip(labels, mean, strict=True)},
        windows=windows,
        duration_s=duration_s,
        path=name,
    )
