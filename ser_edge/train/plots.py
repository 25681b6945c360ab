"""Confusion-matrix and training-curve PNGs (matplotlib, headless)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: str | os.PathLike, *, title: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: Sequence[dict], path: str | os.PathLike) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train (smoothed CE + training-only heads)")
    scored = all("val_loss" in h for h in history)  # a refit without a held-out actor has none
    if scored:
        loss_ax.plot(epochs, [h["val_loss"] for h in history], label="val (clip NLL)")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    acc_ax.plot(epochs, [h["train_acc"] for h in history], label="train (augmented windows)")
    if scored:
        acc_ax.plot(epochs, [h["val_acc"] for h in history], label="val (clips)")
    acc_ax.set_xlabel("epoch")
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
