"""ser-edge: speech emotion recognition trained in PyTorch, run with NumPy + onnxruntime.

Importing this package is cheap and never imports torch or onnx: the training and export
code lives in ``ser_edge.train`` and ``ser_edge.export`` and is only imported on demand.
"""

from ser_edge.edge_runtime import (
    EmotionClassifier,
    FeatureConfig,
    Prediction,
    SerEdgeError,
    StreamingClassifier,
    WindowPrediction,
    load_audio,
    log_mel,
)

__version__ = "0.11.0"

__all__ = [
    "EmotionClassifier",
    "FeatureConfig",
    "Prediction",
    "SerEdgeError",
    "StreamingClassifier",
    "WindowPrediction",
    "load_audio",
    "log_mel",
    "__version__",
]
