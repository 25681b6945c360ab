"""A second pass on more speakers: train again on the training *and* validation actors,
for the first pass's epochs, with its learning rate replayed epoch by epoch.

The first pass (an ordinary run) lets two validation actors choose the epoch count and,
through the plateau schedule, when the learning rate falls. Those actors then sit out of
the model. A refit trains a fresh model (same recipe and seed) on them too, for exactly the
first pass's best epoch, with the learning rate the first pass used in each of those
epochs; nothing in it reads a held-out actor, so it keeps no validation actors, or, with
``hold_out``, keeps the last of them out to score the refit against the first pass on an
actor neither trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ser_edge.edge_runtime.errors import SerEdgeError
from ser_edge.train.data import Split

# Config entries a refit may change from its first pass: what it trains on and for how
# long, and where and with which code it runs. Everything else (model, augmentation,
# optimiser, seed, features) must be the first pass's.
REFIT_CHANGES = frozenset({"split", "n_windows", "train.epochs", "train.early_stop_patience", "replay"})


class RefitError(SerEdgeError):
    """The first pass cannot be replayed (unfinished, or another recipe)."""

    code = "refit"


@dataclasses.dataclass(frozen=True)
class Replay:
    """What a refit replays: the first pass's run folder and its learning rate per epoch."""

    source: str
    metrics_sha256: str
    lrs: tuple[float, ...]  # lrs[e - 1]: the learning rate of epoch e

    @property
    def epochs(self) -> int:
        return len(self.lrs)

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.source, "metrics_sha256": self.metrics_sha256, "epochs": self.epochs,
                "lrs": list(self.lrs)}


def learning_rates(history: Sequence[dict[str, Any]], epochs: int, first_lr: float) -> tuple[float, ...]:
    """The learning rate of each of a run's first ``epochs`` epochs. A history record's
    ``lr`` is read after the plateau schedule's step at the end of its epoch, so it is the
    next epoch's learning rate; the first epoch's is the configured one."""
    if not 1 <= epochs <= len(history):
        raise ValueError(f"{epochs} epochs asked of a history of {len(history)}")
    return (float(first_lr), *(float(record["lr"]) for record in history[: epochs - 1]))


def load_replay(run_dir: str | os.PathLike) -> tuple[Replay, dict[str, Any]]:
    """The replay of a finished first pass, and its config (to check the refit's recipe)."""
    run_dir = Path(run_dir)
    metrics_path, config_path = run_dir / "metrics.json", run_dir / "config.json"
    if not metrics_path.is_file() or not config_path.is_file():
        raise RefitError("no finished run to refit from (metrics.json and config.json are written when a run ends)",
                         path=str(run_dir))
    raw = metrics_path.read_bytes()
    metrics, config = json.loads(raw), json.loads(config_path.read_text())
    best = metrics.get("best_epoch", -1)
    if best < 1:
        raise RefitError("the run never improved on its validation actors: no epoch count to replay", path=str(run_dir))
    lrs = learning_rates(metrics["history"], best, config["train"]["lr"])
    return Replay(str(run_dir.resolve()), hashlib.sha256(raw).hexdigest(), lrs), config


def refit_split(split: Split, *, hold_out: bool = False) -> Split:
    """The first pass's split with its validation actors moved into training; with
    ``hold_out``, all but the last of them (kept out, to be scored on)."""
    if hold_out and len(split.val) < 2:
        raise RefitError(f"holding one validation actor out needs two or more, the split has {list(split.val)}")
    joined = split.val[:-1] if hold_out else split.val
    kept = split.val[-1:] if hold_out else ()
    return Split(tuple(sorted(split.train + joined)), kept, split.test)


def recipe_changes(refit_config: dict[str, Any], first_config: dict[str, Any]) -> list[str]:
    """Entries of the refit's config that differ from its first pass's, beyond a refit's.
    An option the first pass's (older) config lacks had its default then: it is compared
    as that default, so a refit cannot turn on what its first pass never had."""
    from ser_edge.models.config import ModelConfig
    from ser_edge.train.augment_config import AugmentConfig
    from ser_edge.train.trainer import TrainConfig, _flatten, config_changes

    defaults = {"train": dataclasses.asdict(TrainConfig()), "model": dataclasses.asdict(ModelConfig()),
                "augment": dataclasses.asdict(AugmentConfig())}
    completed = {**_flatten(defaults), **_flatten(first_config)}  # config_changes makes tuples lists
    return [key for key in config_changes(_flatten(refit_config), completed)
            if key.split(".")[0] not in REFIT_CHANGES and key not in REFIT_CHANGES]


def check_same_recipe(refit_config: dict[str, Any], first_config: dict[str, Any], source: str) -> None:
    changed = recipe_changes(refit_config, first_config)
    if changed:
        raise RefitError(f"was trained with another recipe (different {', '.join(changed)}); "
                         "refit with the first pass's --recipe, --seed and options", path=source)
