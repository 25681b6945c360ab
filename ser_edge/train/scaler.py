"""StandardScaler semantics of the seed, stored as plain arrays (``.npz``), never pickle.

One mean and one scale per flattened feature position (n_mels x n_frames), fit on the
training actors only. A position with zero variance gets scale 1 (as scikit-learn does).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

CHUNK_ROWS = 256  # rows per pass when fitting on a memory-mapped feature array


@dataclasses.dataclass(frozen=True)
class Scaler:
    mean: np.ndarray  # (n_mels, n_frames) float32
    scale: np.ndarray  # (n_mels, n_frames) float32, > 0

    @classmethod
    def fit(cls, features: np.ndarray, rows: np.ndarray) -> "Scaler":
        """Fit on ``features[rows]`` (float64 accumulation, chunked)."""
        if len(rows) == 0:
            raise ValueError("cannot fit a scaler on zero rows")
        total = np.zeros(features.shape[1:], dtype=np.float64)
        total_sq = np.zeros_like(total)
        for i in range(0, len(rows), CHUNK_ROWS):
            chunk = np.asarray(features[np.sort(rows[i : i + CHUNK_ROWS])], dtype=np.float64)
            total += chunk.sum(axis=0)
            total_sq += np.square(chunk).sum(axis=0)
        mean = total / len(rows)
        var = np.maximum(total_sq / len(rows) - np.square(mean), 0.0)
        scale = np.sqrt(var)
        scale[scale < 1e-8] = 1.0
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    def transform(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, mean=self.mean, scale=self.scale)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scaler":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["mean"], data["scale"])
