"""Knowledge distillation from trained runs of the same split (training only).

The teachers are finished run folders (their ``best_parallel_ser.pt``) trained on exactly
the student's actor split, so no validation or test actor reaches the student through
them. Each training batch, after augmentation, goes through the teachers too (eval mode,
no gradient): the student matches the mean of their softened probabilities on the very
view it sees ("consistent" distillation), next to the usual label loss. The teachers are
not part of the student's weights; export never sees them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ser_edge.edge_runtime.errors import SerEdgeError
from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.train.data import Split, front_end_fingerprint
from ser_edge.train.scaler import Scaler

DIGEST_HEX_CHARS = 16
# The distillation weight when teachers are given without one: half label loss, half teachers.
DEFAULT_DISTILL_WEIGHT = 0.5


class TeacherError(SerEdgeError):
    """A teacher run folder cannot teach this student (missing, or another split or front-end)."""


@dataclasses.dataclass
class Teachers:
    """Trained models whose mean softened probabilities the student learns to match."""

    models: list[torch.nn.Module]

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """Mean over the teachers of softmax(logits / temperature), in eval mode."""
        return torch.stack([torch.softmax(m.eval()(x) / temperature, dim=1) for m in self.models]).mean(0)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """temperature^2 * KL(teacher || student) at the temperature, mean over the batch.

    The temperature^2 factor keeps the gradient's scale comparable with the label loss
    (Hinton et al., 2015)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return temperature**2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


def _trained_weights(run_dir: Path) -> Path:
    """``run_dir``'s best weights; TeacherError unless it is a trained run folder."""
    from ser_edge.train.trainer import BEST_WEIGHTS

    weights = run_dir / BEST_WEIGHTS
    if not (run_dir / "config.json").is_file() or not weights.is_file():
        raise TeacherError(f"not a trained run folder (needs config.json and {BEST_WEIGHTS})", path=str(run_dir))
    return weights


def teacher_provenance(run_dirs: Sequence[str | os.PathLike]) -> dict[str, list[str]]:
    """What a student's config records of its teachers: their folders and a digest of each
    one's weights (TeacherError when a folder is not a trained run)."""
    digests = [hashlib.sha256(_trained_weights(Path(d)).read_bytes()).hexdigest()[:DIGEST_HEX_CHARS] for d in run_dirs]
    return {"runs": [str(d) for d in run_dirs], "weights_sha256": digests}


def load_teachers(
    run_dirs: Sequence[str | os.PathLike],
    split: Split,
    feature_config: FeatureConfig,
    scaler: Scaler,
    device: str = "cpu",
) -> Teachers:
    """The teachers in ``run_dirs``; TeacherError names the first folder that cannot teach.

    A teacher must be a finished run of the same actor split, front-end and feature scaler
    as the student: it then reads the student's normalised batch as it read its own."""
    from ser_edge.train.trainer import load_model

    models = []
    for run_dir in map(Path, run_dirs):
        _trained_weights(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        if config.get("split") != split.to_dict():
            raise TeacherError(
                f"was trained on another actor split ({config.get('split')}) than the student ({split.to_dict()})",
                path=str(run_dir))
        if config.get("front_end") != front_end_fingerprint(feature_config):
            raise TeacherError("was trained on features of another front-end", path=str(run_dir))
        own = Scaler.load(run_dir / "scaler.npz")
        if not (np.array_equal(own.mean, scaler.mean) and np.array_equal(own.scale, scaler.scale)):
            raise TeacherError("has another feature scaler than the student", path=str(run_dir))
        models.append(load_model(run_dir, feature_config, device))
    return Teachers(models)
