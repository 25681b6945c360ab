"""Classification report (the seed's format), confusion matrix, calibration error."""

from __future__ import annotations

from typing import Sequence

import numpy as np

ECE_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def summary(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, unweighted average recall (UAR) and the per-class table."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    stats = per_class(y_true, y_pred, len(labels))
    present = stats["support"] > 0
    weights = stats["support"] / max(stats["support"].sum(), 1)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(stats["f1"][present].mean()) if present.any() else 0.0,
        "uar": float(stats["recall"][present].mean()) if present.any() else 0.0,
        "weighted_f1": float((stats["f1"] * weights).sum()),
        "per_class": {
            label: {key: (int(v[i]) if key == "support" else float(v[i])) for key, v in stats.items()}
            for i, label in enumerate(labels)
        },
        "confusion": confusion_matrix(y_true, y_pred, len(labels)).tolist(),
    }


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> str:
    """Text report in the seed's layout (precision, recall, f1-score, support)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    stats = per_class(y_true, y_pred, len(labels))
    width = max(12, max(len(label) for label in labels))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for i, label in enumerate(labels):
        lines.append(
            f"{label:>{width}} {stats['precision'][i]:9.3f} {stats['recall'][i]:9.3f} "
            f"{stats['f1'][i]:9.3f} {stats['support'][i]:9d}"
        )
    total = int(stats["support"].sum())
    accuracy = float((y_true == y_pred).mean()) if total else 0.0
    weights = stats["support"] / max(total, 1)
    lines += ["", f"{'accuracy':>{width}} {'':>9} {'':>9} {accuracy:9.3f} {total:9d}"]
    for name, avg in (
        ("macro avg", {k: stats[k].mean() for k in ("precision", "recall", "f1")}),
        ("weighted avg", {k: (stats[k] * weights).sum() for k in ("precision", "recall", "f1")}),
    ):
        lines.append(
            f"{name:>{width}} {avg['precision']:9.3f} {avg['recall']:9.3f} {avg['f1']:9.3f} {total:9d}"
        )
    return "\n".join(lines) + "\n"


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def clip_probabilities(window_probs: np.ndarray, window_clip: np.ndarray, n_clips: int) -> np.ndarray:
    """Mean of window probabilities per clip (the runtime's aggregation)."""
    sums = np.zeros((n_clips, window_probs.shape[1]), dtype=np.float64)
    np.add.at(sums, window_clip, window_probs)
    counts = np.bincount(window_clip, minlength=n_clips)[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)
