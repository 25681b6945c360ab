"""Training-only heads on the ParallelModel's embedding.

- :class:`SpeakerAdversary`: a speaker classifier behind a gradient-reversal layer. It
  learns to name the training actor; the reversed gradient pushes the embedding to carry
  less speaker identity.
- :class:`IntensityHead`: names the clip's emotional intensity (RAVDESS file-name field 4,
  normal or strong), an auxiliary target that shares the embedding with the emotion head.

Neither is part of the model's weights, so export never sees them.
"""

from __future__ import annotations

import torch
from torch import nn

ADVERSARY_HIDDEN = 128
N_INTENSITIES = 2  # RAVDESS intensity codes 01 (normal) and 02 (strong)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-weight`` on the way back."""
    return _GradReverse.apply(x, weight)


class SpeakerAdversary(nn.Module):
    def __init__(self, embed_dim: int, n_speakers: int, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.net = nn.Sequential(nn.Linear(embed_dim, ADVERSARY_HIDDEN), nn.ReLU(), nn.Linear(ADVERSARY_HIDDEN, n_speakers))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Speaker logits; the gradient into ``embedding`` is reversed and scaled."""
        return self.net(grad_reverse(embedding, self.weight))


class IntensityHead(nn.Module):
    """Intensity logits (normal, strong) from the embedding: one linear layer, like the
    emotion head, so that what it needs must be in the shared embedding."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, N_INTENSITIES)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear(embedding)
