"""A transformer branch whose output does not depend on the input, folded away at export.

Every ParallelModel member trained with the project's recipes so far ends with a dead
transformer branch (docs/ablation.md, "The transformer branch goes unused"): within a few
epochs its 64 features stop varying with the input, so its part of each logit is a
constant. The classifier is linear over ``[cnn features, transformer features]``, so that
constant can be moved into the classifier's bias and the branch left out of the graph:

    W @ [c; t(x)] + b  =  W_cnn @ c + (b + W_t @ t̄)   whenever t(x) = t̄ for every x

The branch holds 85% of a member's parameters and about half of its inference time.

Whether a member's branch is dead is measured, never assumed: the branch runs on probe
windows (the training actors' own log-mels, through the graph's scaler), ``t̄`` is their
mean, and the member is folded only if no probe window moves any logit by more than
``FOLD_MAX_LOGIT_DEVIATION`` when ``t(x)`` is replaced by ``t̄``. A live branch (a freshly
initialised model, a pre-norm recipe) is kept as it is. The export's parity check then
compares the written graph with the unfolded PyTorch members, so a fold that changed any
probability by ``PARITY_ATOL`` or more would fail the export.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ser_edge.models.parallel import ParallelModel, normalise, pool_time

# A member is folded only if replacing its branch by the constant moves no logit of any
# probe window by more than this (the shipped members: below 5e-5; a live branch: ~0.1+).
FOLD_MAX_LOGIT_DEVIATION = 1e-4
PROBE_MAX_WINDOWS = 512  # training windows the branch is probed on, evenly spaced
PROBE_BATCH = 64


@dataclasses.dataclass(frozen=True)
class BranchFold:
    """One member's verdict: ``folded`` and the largest logit change the fold makes."""

    folded: bool
    max_logit_deviation: float
    probe_windows: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FoldedMember(nn.Module):
    """A ParallelModel without its transformer branch: the CNN branch and a linear head whose
    bias carries the branch's constant contribution. Inference only."""

    def __init__(self, model: ParallelModel, branch_constant: torch.Tensor) -> None:
        super().__init__()
        self.config = model.config
        self.conv = model.conv  # MixStyle between its blocks is the identity at inference
        weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
        n_cnn = weight.shape[1] - branch_constant.numel()
        self.classifier = nn.Linear(n_cnn, weight.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(weight[:, :n_cnn])
            folded = bias.double() + weight[:, n_cnn:].double() @ branch_constant.double()
            self.classifier.bias.copy_(folded.float())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` from standardised log-mel ``(batch, 1, n_mels, n_frames)``."""
        return self.classifier(pool_time(self.conv(normalise(x, self.config)), self.config))


def folded_indices(provenance: Mapping[str, Any]) -> list[int]:
    """The members an exported file's provenance says were written folded (``branch_fold``)."""
    return [i for i, verdict in enumerate(provenance.get("branch_fold") or []) if verdict.get("folded")]


def probe_rows(rows: np.ndarray, max_windows: int = PROBE_MAX_WINDOWS) -> np.ndarray:
    """At most ``max_windows`` of ``rows``, evenly spaced (deterministic)."""
    rows = np.asarray(rows)
    if len(rows) <= max_windows:
        return rows
    return rows[np.linspace(0, len(rows) - 1, max_windows).round().astype(int)]


def _branch_features(model: ParallelModel, standardised: torch.Tensor) -> torch.Tensor:
    """The transformer branch's features ``(n, d_model)`` of standardised windows."""
    with torch.no_grad():
        return torch.cat([model.transformer_features(model.normalise(standardised[i : i + PROBE_BATCH]))
                          for i in range(0, len(standardised), PROBE_BATCH)])


def fold_members(
    models: Sequence[ParallelModel],
    standardised_probe: np.ndarray,
    *,
    max_logit_deviation: float = FOLD_MAX_LOGIT_DEVIATION,
) -> tuple[list[nn.Module], list[BranchFold]]:
    """Each member folded if its branch is constant on the probe, else returned unchanged.

    ``standardised_probe``: ``(n, n_mels, n_frames)`` log-mel windows already through the
    scaler (what the members see in the graph).
    """
    if len(standardised_probe) == 0:
        raise ValueError("folding needs at least one probe window")
    x = torch.from_numpy(np.asarray(standardised_probe, np.float32)[:, None])
    out, verdicts = [], []
    for model in models:
        model.eval()
        features = _branch_features(model, x).double()
        constant = features.mean(dim=0)
        w_t = model.classifier.weight.detach().double()[:, -model.config.d_model :]
        deviation = float(((features - constant) @ w_t.T).abs().max())  # each logit's change if folded
        folded = deviation <= max_logit_deviation
        verdicts.append(BranchFold(folded, deviation, len(x)))
        out.append(FoldedMember(model, constant.float()) if folded else model)
    return out, verdicts
