"""The torch-free edge runtime: audio in, log-mel, onnxruntime, probabilities out.

Imports only numpy, soundfile and (when a session is created) onnxruntime: no torch,
no onnx, no scipy (tests/test_no_torch.py checks all three).
"""

from ser_edge.edge_runtime.audio import Audio, load_audio, split_windows, to_model_rate
from ser_edge.edge_runtime.errors import ModelError, SerEdgeError
from ser_edge.edge_runtime.features import FeatureConfig, log_mel, mel_filterbank
from ser_edge.edge_runtime.session import (
    EmotionClassifier,
    Prediction,
    WindowPrediction,
    default_model_path,
)
from ser_edge.edge_runtime.streaming import StreamingClassifier

__all__ = [
    "Audio",
    "EmotionClassifier",
    "FeatureConfig",
    "ModelError",
    "Prediction",
    "SerEdgeError",
    "StreamingClassifier",
    "WindowPrediction",
    "default_model_path",
    "load_audio",
    "log_mel",
    "mel_filterbank",
    "split_windows",
    "to_model_rate",
]
