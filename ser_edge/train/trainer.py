"""The training loop of the seed recipe: one run = one actor-wise split -> one run folder.

Run folder contents: ``best_parallel_ser.pt`` (weights + model config), ``scaler.npz``,
``checkpoint.pt`` (resumable state), ``config.json`` (every hyper-parameter, the feature
config, split actors, data hash, code version), ``metrics.json``, ``report.txt`` (the
test actors' classification report), ``confusion.png`` and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ser_edge.edge_runtime.errors import SerEdgeError
from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.models.parallel import ModelConfig, ParallelModel
from ser_edge.train import metrics, warm_start
from ser_edge.train.augment import AugmentConfig, freq_warp, spec_augment, tempo_perturb, waveform_log_mel
from ser_edge.train.data import LABELS, DatasetError, FeatureSet, Split, blas_kernels, blas_kernels_note, front_end_fingerprint
from ser_edge.train.distill import Teachers, distillation_loss, load_teachers, teacher_provenance
from ser_edge.train.heads import IntensityHead, SpeakerAdversary
from ser_edge.train.refit import Replay
from ser_edge.train.scaler import Scaler

log = logging.getLogger(__name__)

BEST_WEIGHTS = "best_parallel_ser.pt"
CHECKPOINT = "checkpoint.pt"
EVAL_BATCH = 64


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 150
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    early_stop_patience: int = 12
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # 0 = all cores
    random_window: bool = True  # draw one window per clip per epoch (False: always the first)
    speaker_adversarial: float = 0.0  # gradient-reversal weight of a training-actor classifier (0 = off)
    intensity_aux: float = 0.0  # loss weight of an auxiliary intensity (normal/strong) head (0 = off)
    # Per-step decay of an exponential moving average of the weights (and BatchNorm
    # statistics); 0 = off. When on, validation, early stopping, the LR schedule and the
    # saved best weights all use the averaged model. 0.99 averages over about 100 steps,
    # i.e. about 4 epochs of 14 training actors (27 batches of 32 clips each).
    ema_decay: float = 0.0
    # Knowledge distillation (train/distill.py): the weight of the loss that matches the
    # teachers' mean probabilities at this temperature; the label loss keeps 1 - weight.
    # 0 = off. The teachers (run folders of the same split) are given to the Trainer.
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    # Linear learning-rate warmup over the first epochs (0 = off): step s of the warmup (1-based)
    # trains at lr * s / (warmup_epochs * batches per epoch). The plateau schedule starts
    # counting after it; an epoch's recorded ``lr`` is the scheduled one it warms up to.
    warmup_epochs: int = 0

    def stops(self, epoch: int, stale_epochs: int) -> bool:
        """Whether a run at ``epoch``, ``stale_epochs`` after its best, trains no further:
        the cap is reached or the early-stopping patience has run out."""
        return epoch >= self.epochs or stale_epochs >= self.early_stop_patience


# Config entries a resumed run may change: where things run and how long, not what is learned.
RESUMABLE_CHANGES = frozenset({
    "code_version", "resumed_with_code_versions", "torch_version", "data_root",
    "front_end_blas",  # another kernel set is fine if the features' bytes (front_end) are the same
    "train.epochs", "train.early_stop_patience", "train.threads", "train.device",
    "teachers.runs",  # where the teachers lie; their weights' digests must match
    "init_from.model",  # where the model a fine-tuning run started from lies; its digest must match
})


class ResumeMismatchError(SerEdgeError):
    """The run folder holds a checkpoint of a run with another recipe, split or data."""


def warmup_scale(epoch: int, batch: int, n_batches: int, warmup_epochs: int) -> float:
    """The learning-rate multiplier of batch ``batch`` (0-based) of ``epoch`` (1-based): it
    rises linearly to 1 at the last step of epoch ``warmup_epochs`` and is 1 after (and
    always, with ``warmup_epochs`` 0)."""
    if epoch > warmup_epochs:
        return 1.0
    return ((epoch - 1) * n_batches + batch + 1) / (warmup_epochs * n_batches)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(config: dict[str, Any], previous: dict[str, Any]) -> list[str]:
    """Entries (dotted names) whose value differs between a new run's config and the one it
    would resume, other than ``RESUMABLE_CHANGES``. Entries only one side has are not
    compared: an older run's config lacks options added since, which default to off."""
    new, old = (_flatten(json.loads(json.dumps(c))) for c in (config, previous))  # tuples -> lists, as saved
    return sorted(k for k in new.keys() & old.keys() if k not in RESUMABLE_CHANGES and new[k] != old[k])


def resumed_config(config: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """A resumed run's config keeps the code version that started it; any later code
    version that continued (or re-finished) it is listed in ``resumed_with_code_versions``."""
    started = previous.get("code_version") or config["code_version"]
    resumed = list(previous.get("resumed_with_code_versions", []))
    if config["code_version"] not in (started, *resumed):
        resumed.append(config["code_version"])
    out = {**config, "code_version": started}
    if resumed:
        out["resumed_with_code_versions"] = resumed
    return out


def code_version() -> str:
    """git describe of the source tree, or the package version outside a checkout."""
    from ser_edge import __version__

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return f"{__version__}+g{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def class_weights(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Inverse-frequency weights of the training split, normalised to mean 1."""
    n_classes = len(names)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        missing = [names[i] for i in np.flatnonzero(counts == 0)]
        raise DatasetError(f"the training speakers have no clips labelled {missing}")
    weights = counts.sum() / (n_classes * counts)
    return (weights / weights.mean()).astype(np.float32)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename over ``path``: a run killed while
    saving keeps its previous checkpoint instead of a truncated one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_model(model_config: ModelConfig, feature_config: FeatureConfig, device: str) -> ParallelModel:
    model = ParallelModel(model_config)
    with torch.no_grad():  # materialise LazyLinear for a 3 s clip
        model.eval()(torch.zeros(1, 1, feature_config.n_mels, feature_config.n_frames))
    return model.to(device=device, memory_format=torch.channels_last)


@torch.no_grad()
def predict_windows(
    model: ParallelModel, features: np.ndarray, rows: np.ndarray, scaler: Scaler, device: str
) -> np.ndarray:
    """Softmax probabilities of ``features[rows]`` in eval mode, batched."""
    model.eval()
    out = []
    for i in range(0, len(rows), EVAL_BATCH):
        batch = scaler.transform(features[rows[i : i + EVAL_BATCH]])[:, None]
        x = torch.from_numpy(batch).to(device=device, memory_format=torch.channels_last)
        out.append(torch.softmax(model(x), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, model.config.n_classes), np.float32)


def clip_level(feature_set: FeatureSet, rows: np.ndarray, window_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(clip probabilities, clip labels) for the clips owning ``rows`` (mean over windows)."""
    owners = feature_set.window_clip[rows]
    clips, local = np.unique(owners, return_inverse=True)
    probs = metrics.clip_probabilities(window_probs, local, len(clips))
    labels = np.array([feature_set.clips[c].label_index for c in clips])
    return probs, labels


# The weight average's horizon (1 / (1 - decay) steps) is set per step, so on a small data
# set it spans many epochs: the shipped recipe's 0.997 is about 11 epochs of RAVDESS's 16 training
# actors (30 batches) but 333 epochs of 32 clips. Past this many times the early-stopping
# patience the averaged model, which is what validation judges and what is saved, still
# carries much of the starting weights when early stopping looks at it: train() warns.
EMA_LAG_PATIENCES = 2.0
EMA_SUGGESTED_HORIZON_EPOCHS = 4.0  # the 0.7.0 recipe's 0.99 on RAVDESS: about 4 epochs


def ema_lag_warning(decay: float, batches_per_epoch: int, patience_epochs: int) -> str | None:
    """A one-line warning when a weight average of ``decay`` per step spans more than
    ``EMA_LAG_PATIENCES`` early-stopping patiences at ``batches_per_epoch``; else None."""
    if decay <= 0 or batches_per_epoch < 1:
        return None
    horizon_epochs = 1.0 / ((1.0 - decay) * batches_per_epoch)
    if horizon_epochs <= EMA_LAG_PATIENCES * patience_epochs:
        return None
    suggested = 1.0 - 1.0 / (EMA_SUGGESTED_HORIZON_EPOCHS * batches_per_epoch)
    batches = f"{batches_per_epoch} batch{'es' if batches_per_epoch != 1 else ''}"
    return (f"the weight average (EMA decay {decay:g} per step) spans about {horizon_epochs:.0f} epochs of this "
            f"data ({batches} each), against early stopping after {patience_epochs}: the saved model will lag "
            f"training; --ema-decay {suggested:.3g} averages about {EMA_SUGGESTED_HORIZON_EPOCHS:g} epochs here, "
            f"0 turns it off")


def averaged_model(model: ParallelModel, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s parameters and buffers."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _mixed(criterion, logits: torch.Tensor, y: torch.Tensor, lam: float, perm) -> torch.Tensor:
    """``criterion`` of mixup-mixed targets (plain when ``perm`` is None)."""
    if perm is None:
        return criterion(logits, y)
    return lam * criterion(logits, y) + (1 - lam) * criterion(logits, y[perm])


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


@dataclasses.dataclass(frozen=True)
class _Head:
    """A training-only head on the embedding: the module, each window's target class (-1
    outside the training rows), and the weight of its cross-entropy in the total loss."""

    module: torch.nn.Module
    targets: np.ndarray
    weight: float


@dataclasses.dataclass
class _Learner:
    """Everything a training step changes: saved whole in the checkpoint, restored on resume."""

    model: ParallelModel
    heads: dict[str, _Head]  # training-only heads, by checkpoint key
    optimizer: torch.optim.Optimizer
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau
    rng: np.random.Generator
    gen: torch.Generator
    ema: torch.optim.swa_utils.AveragedModel | None
    state: dict[str, Any]  # epoch, best_loss, best_epoch, stale, history

    @property
    def scored(self) -> torch.nn.Module:
        """The model that validation judges and that is saved as the best weights."""
        return self.model if self.ema is None else self.ema.module

    def checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            **{name: head.module.state_dict() for name, head in self.heads.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "plateau": self.plateau.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "state": self.state,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        for name, head in self.heads.items():
            head.module.load_state_dict(saved[name])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.plateau.load_state_dict(saved["plateau"])
        self.rng.bit_generator.state = saved["numpy_rng"]
        self.gen.set_state(saved["torch_gen"])
        torch.set_rng_state(saved["torch_rng"])
        self.state = saved["state"]


def _report_epoch(record: dict[str, Any], bar) -> None:
    """One epoch's line: on the progress bar when there is one, else in the log. A refit
    without a held-out actor has no validation figures."""
    scored = "val_loss" in record
    if bar is not None:
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_acc']:.3f}",
                        **({"val_loss": f"{record['val_loss']:.3f}", "val_acc": f"{record['val_acc']:.3f}"} if scored else {}))
        bar.close()
    else:
        val = f" | val loss {record['val_loss']:.3f} acc {record['val_acc']:.3f}" if scored else ""
        log.info("epoch %d: train loss %.3f acc %.3f%s | lr %.1e | %.1f s",
                 record["epoch"], record["train_loss"], record["train_acc"], val, record["lr"], record["seconds"])


class Trainer:
    def __init__(
        self,
        run_dir: str | os.PathLike,
        feature_set: FeatureSet,
        split: Split,
        *,
        feature_config: FeatureConfig,
        train_config: TrainConfig = TrainConfig(),
        model_config: ModelConfig = ModelConfig(),
        augment: AugmentConfig = AugmentConfig(),
        data_hash: str = "",
        data_root: str = "",
        labels: Sequence[str] = LABELS,
        speakers: Mapping[int, str] | None = None,
        teachers: Sequence[str | os.PathLike] = (),
        init_from: str | os.PathLike | None = None,
        init_member: int = 0,
        replay: Replay | None = None,
        progress: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.fs = feature_set
        self.split = split
        self.fc = feature_config
        # A refit (train/refit.py) trains for its first pass's epochs, whatever the cap.
        self.replay = replay
        self.tc = train_config if replay is None else dataclasses.replace(train_config, epochs=replay.epochs)
        self.mc = model_config
        self.aug = augment
        self.data_hash = data_hash
        self.data_root = data_root
        self.labels = tuple(labels)
        self.speakers = dict(speakers) if speakers else None
        if model_config.n_classes != len(self.labels):
            raise ValueError(f"the model has {model_config.n_classes} outputs for {len(self.labels)} labels")
        self.progress = progress
        # Fine-tuning (train/warm_start.py): the exported model whose member seeds the weights.
        self.init_source = warm_start.describe(init_from, init_member) if init_from is not None else None
        self.teacher_dirs = [Path(t) for t in teachers]
        if bool(self.teacher_dirs) != (train_config.distill_weight > 0):
            raise ValueError("distillation needs both teacher runs and a distill weight above 0 "
                             f"(got {len(self.teacher_dirs)} teachers, weight {train_config.distill_weight})")
        self.teachers: Teachers | None = None  # loaded by run(), once the scaler is fitted (or kept)
        self.rows = {name: feature_set.rows_for_actors(getattr(split, name)) for name in ("train", "val", "test")}
        for name, rows in self.rows.items():
            if len(rows) == 0 and (name == "train" or name == "val" and replay is None):
                raise ValueError(f"no clips for the {name} actors {getattr(split, name)}")
        # Index of each window's actor among the training actors (-1 elsewhere): the
        # speaker-adversarial head's target.
        lookup = {actor: i for i, actor in enumerate(sorted(split.train))}
        self.actor_index = np.array([lookup.get(a, -1) for a in feature_set.actors], dtype=np.int64)
        # Each window's intensity, 0 = normal, 1 = strong: the auxiliary intensity head's target.
        self.intensity_index = feature_set.intensities.astype(np.int64)

    # -- setup ------------------------------------------------------------------------

    def check_resumable(self, config: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The config of the run already in ``run_dir`` (None when there is none), once it is
        checked that this trainer (whose ``config_dict()`` is ``config`` when given) would
        continue that run: same recipe, split and data."""
        config_path = self.run_dir / "config.json"
        if not config_path.is_file():
            return None
        previous = json.loads(config_path.read_text())
        config = config if config is not None else self.config_dict()
        changed = config_changes(config, previous)
        if changed:
            raise ResumeMismatchError(
                f"holds another run (different {', '.join(changed)}{blas_kernels_note(config, previous)}); "
                "train into a new --out folder, or delete this one to start over", path=str(self.run_dir))
        return previous

    def who(self, actors: Sequence[int]) -> str:
        """``actors [..]``, with a manifest's speaker names: what a report says it measured."""
        names = f" (speakers {[self.speakers[a] for a in actors]})" if self.speakers else ""
        return f"actors {list(actors)}{names}"

    def config_dict(self) -> dict[str, Any]:
        return {
            "train": dataclasses.asdict(self.tc),
            "model": dataclasses.asdict(self.mc),
            "augment": dataclasses.asdict(self.aug),
            "features": dataclasses.asdict(self.fc),
            "front_end": front_end_fingerprint(self.fc),  # the features' exact bytes (data.py)
            "front_end_blas": blas_kernels(),  # the BLAS kernels that computed them
            "labels": list(self.labels),
            **({"speakers": {str(k): v for k, v in sorted(self.speakers.items())}} if self.speakers else {}),
            "split": self.split.to_dict(),
            "n_windows": {k: int(len(v)) for k, v in self.rows.items()},
            "data_hash": self.data_hash,
            "data_root": self.data_root,
            "code_version": code_version(),
            "torch_version": torch.__version__,
            **({"teachers": teacher_provenance(self.teacher_dirs)} if self.teacher_dirs else {}),
            **({"init_from": self.init_source} if self.init_source else {}),
            **({"replay": self.replay.to_dict()} if self.replay else {}),
        }

    def _train_clip_windows(self) -> list[np.ndarray]:
        """Window rows of each training clip (one is drawn per clip per epoch)."""
        rows = self.rows["train"]
        owners = self.fs.window_clip[rows]
        order = np.argsort(owners, kind="stable")
        _, starts = np.unique(owners[order], return_index=True)
        return np.split(rows[order], starts[1:])

    # -- one epoch --------------------------------------------------------------------

    def _batch(self, rows: np.ndarray, scaler: Scaler, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        feats = np.array(self.fs.features[rows], dtype=np.float32)
        if self.aug.touches_waveform:
            chosen, augmented = waveform_log_mel(self.fs.waveforms[rows], self.fc, self.aug, rng)
            feats[chosen] = augmented
        if self.aug.tempo_prob > 0:
            feats = tempo_perturb(feats, self.aug, rng, -self.fc.top_db)
        if self.aug.warp_prob > 0:
            feats = freq_warp(feats, self.aug, rng)
        x = torch.from_numpy(scaler.transform(feats)[:, None])
        if self.aug.freq_masks or self.aug.time_masks:
            x = spec_augment(x, self.aug, gen)
        return x.to(device=self.tc.device, memory_format=torch.channels_last)

    def _train_epoch(self, learner: "_Learner", criterion, scaler: Scaler, clip_windows: list[np.ndarray],
                     bar, epoch: int) -> tuple[float, float, dict[str, float]]:
        """One pass over the training clips: mean total loss, accuracy on the augmented
        windows, and each training-only head's own (unweighted) mean loss, by head name.
        Within the warmup each step trains at its share of the scheduled rate, which the
        optimizer holds again when the epoch ends."""
        model, optimizer, heads, rng, gen = learner.model, learner.optimizer, learner.heads, learner.rng, learner.gen
        model.train()
        if self.tc.random_window:
            picks = np.array([w[rng.integers(len(w))] for w in clip_windows])
        else:
            picks = np.array([w[0] for w in clip_windows])
        picks = picks[rng.permutation(len(picks))]
        labels_all = self.fs.labels
        total_loss, correct, seen = 0.0, 0, 0
        head_totals = dict.fromkeys(heads, 0.0)
        scheduled = [group["lr"] for group in optimizer.param_groups]
        n_batches = -(-len(picks) // self.tc.batch_size)
        for i in range(0, len(picks), self.tc.batch_size):
            scale = warmup_scale(epoch, i // self.tc.batch_size, n_batches, self.tc.warmup_epochs)
            for group, lr in zip(optimizer.param_groups, scheduled):
                group["lr"] = lr * scale
            rows = picks[i : i + self.tc.batch_size]
            x = self._batch(rows, scaler, rng, gen)
            y = torch.from_numpy(labels_all[rows]).to(self.tc.device)
            lam, perm = 1.0, None
            if self.aug.mixup_alpha > 0:
                lam = float(rng.beta(self.aug.mixup_alpha, self.aug.mixup_alpha))
                perm = torch.from_numpy(rng.permutation(len(rows)))
                x = lam * x + (1 - lam) * x[perm]
            embedding = model.embed(x)
            logits = model.classifier(embedding)
            loss = _mixed(criterion, logits, y, lam, perm)
            if self.teachers is not None:
                temperature = self.tc.distill_temperature
                soft = distillation_loss(logits, self.teachers.probabilities(x, temperature), temperature)
                loss = (1 - self.tc.distill_weight) * loss + self.tc.distill_weight * soft
            for name, head in heads.items():
                target = torch.from_numpy(head.targets[rows]).to(self.tc.device)
                head_loss = _mixed(F.cross_entropy, head.module(embedding), target, lam, perm)
                head_totals[name] += float(head_loss.detach()) * len(rows)
                loss = loss + head.weight * head_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if learner.ema is not None:
                learner.ema.update_parameters(model)
            total_loss += float(loss.detach()) * len(rows)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(rows)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr
        return total_loss / seen, correct / seen, {name: total / seen for name, total in head_totals.items()}

    def _clip_predictions(self, model, scaler: Scaler, name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows[name]
        return clip_level(self.fs, rows, predict_windows(model, self.fs.features, rows, scaler, self.tc.device))

    def evaluate(self, model, scaler: Scaler, name: str, predictions=None) -> dict[str, Any]:
        probs, labels = predictions if predictions is not None else self._clip_predictions(model, scaler, name)
        result = metrics.summary(labels, probs.argmax(1), self.labels)
        result["loss"] = _nll(probs, labels)
        result["actors"] = list(getattr(self.split, name))
        return result

    # -- the run ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(self.tc.threads or os.cpu_count() or 1)
        seed_everything(self.tc.seed)
        config, config_path = self.config_dict(), self.run_dir / "config.json"
        checkpoint = self.run_dir / CHECKPOINT
        if checkpoint.is_file():
            previous = self.check_resumable(config)  # before anything in the folder is overwritten
            if previous is not None:
                config = resumed_config(config, previous)
        if self.init_source is not None:  # fine-tuning: the normalisation the starting weights learned with
            scaler = warm_start.source_scaler(self.init_source, self.fc)
        else:
            scaler = Scaler.fit(self.fs.features, self.rows["train"])
        if self.teacher_dirs:
            self.teachers = load_teachers(self.teacher_dirs, self.split, self.fc, scaler, self.tc.device)
        scaler.save(self.run_dir / "scaler.npz")
        config_path.write_text(json.dumps(config, indent=2))

        criterion = self._criterion()
        learner = self._learner()
        if checkpoint.is_file():
            learner.restore(torch.load(checkpoint, map_location=self.tc.device, weights_only=True))
            log.info("resumed %s at epoch %d", self.run_dir, learner.state["epoch"])
        state = learner.state
        clip_windows = self._train_clip_windows()
        n_batches = -(-len(clip_windows) // self.tc.batch_size)
        lag = ema_lag_warning(self.tc.ema_decay, n_batches, self.tc.early_stop_patience)
        if lag is not None:
            log.warning("%s: %s", self.run_dir, lag)
        while not self.tc.stops(state["epoch"], state["stale"]):
            epoch = state["epoch"] + 1
            bar = _progress(n_batches, f"epoch {epoch}/{self.tc.epochs}") if self.progress else None
            started = time.perf_counter()
            if self.replay is not None:
                for group in learner.optimizer.param_groups:
                    group["lr"] = self.replay.lrs[epoch - 1]
            train_loss, train_acc, head_losses = self._train_epoch(learner, criterion, scaler, clip_windows, bar, epoch)
            val = self.evaluate(learner.scored, scaler, "val") if len(self.rows["val"]) else None
            if self.replay is None and epoch > self.tc.warmup_epochs:
                learner.plateau.step(val["loss"])
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                **({"val_loss": val["loss"], "val_acc": val["accuracy"], "val_uar": val["uar"]} if val else {}),
                "lr": learner.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
            if head_losses:  # training-only heads: their own loss, e.g. the adversary's near ln(n speakers) = chance
                record["train_head_losses"] = head_losses
            state["history"].append(record)
            _report_epoch(record, bar)
            # A refit's model is its last epoch's: its held-out actor (if any) is only scored.
            if self.replay is not None or val["loss"] < state["best_loss"]:
                state.update(best_loss=val["loss"] if val else float("nan"), best_epoch=epoch, stale=0)
                save_atomic({"model": learner.scored.state_dict(), "model_config": dataclasses.asdict(self.mc)},
                            self.run_dir / BEST_WEIGHTS)
            else:
                state["stale"] += 1
            state["epoch"] = epoch
            save_atomic(learner.checkpoint(), checkpoint)
        return self.finish(state)

    def _criterion(self) -> torch.nn.Module:
        """Class-weighted (by the training clips), label-smoothed cross-entropy."""
        train_labels = np.array([self.fs.clips[c].label_index for c in np.unique(self.fs.window_clip[self.rows["train"]])])
        weights = torch.from_numpy(class_weights(train_labels, self.labels)).to(self.tc.device)
        return torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=self.tc.label_smoothing)

    def _learner(self) -> "_Learner":
        """A fresh model, its training-only heads, optimiser, schedule, weight average and RNGs."""
        model = build_model(self.mc, self.fc, self.tc.device)
        if self.init_source is not None:
            kept = warm_start.initialise(model, self.init_source, self.labels, self.fc)
            log.info("started from %s member %d (classifier %s)", self.init_source["model"], self.init_source["member"],
                     "copied" if kept else "new: other labels")
        heads = self._training_heads(model.classifier.in_features)
        params = list(model.parameters()) + [p for head in heads.values() for p in head.module.parameters()]
        optimizer = torch.optim.AdamW(params, lr=self.tc.lr, weight_decay=self.tc.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.tc.plateau_factor, patience=self.tc.plateau_patience
        )
        return _Learner(
            model=model,
            heads=heads,
            optimizer=optimizer,
            plateau=plateau,
            rng=np.random.default_rng(self.tc.seed),
            gen=torch.Generator().manual_seed(self.tc.seed),
            ema=averaged_model(model, self.tc.ema_decay) if self.tc.ema_decay > 0 else None,
            state={"epoch": 0, "best_loss": float("inf"), "best_epoch": -1, "stale": 0, "history": []},
        )

    def _training_heads(self, embed_dim: int) -> dict[str, _Head]:
        """The training-only heads this config turns on, by checkpoint key."""
        heads: dict[str, _Head] = {}
        if self.tc.speaker_adversarial > 0:
            # Its loss counts once: the adversary's strength is the gradient reversal's weight.
            adversary = SpeakerAdversary(embed_dim, len(self.split.train), self.tc.speaker_adversarial)
            heads["adversary"] = _Head(adversary.to(self.tc.device), self.actor_index, 1.0)
        if self.tc.intensity_aux > 0:
            heads["intensity"] = _Head(IntensityHead(embed_dim).to(self.tc.device), self.intensity_index,
                                       self.tc.intensity_aux)
        return heads

    def finish(self, state: dict[str, Any]) -> dict[str, Any]:
        model = load_model(self.run_dir, self.fc, self.tc.device)
        scaler = Scaler.load(self.run_dir / "scaler.npz")
        predictions = {name: self._clip_predictions(model, scaler, name) for name in ("val", "test") if len(self.rows[name])}
        results = {name: self.evaluate(model, scaler, name, pred) for name, pred in predictions.items()}
        out = {
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "history": state["history"],
            **results,
        }
        (self.run_dir / "metrics.json").write_text(json.dumps(out, indent=2))
        from ser_edge.train.plots import plot_confusion, plot_curves

        if "test" in results:
            probs, labels = predictions["test"]
            report = metrics.classification_report(labels, probs.argmax(1), self.labels)
            (self.run_dir / "report.txt").write_text(f"test {self.who(self.split.test)} ({len(labels)} clips)\n\n{report}")
            plot_confusion(np.array(results["test"]["confusion"]), self.labels, self.run_dir / "confusion.png",
                           title=f"test {self.who(self.split.test)}")
        plot_curves(state["history"], self.run_dir / "curves.png")
        return out


def load_model(run_dir: str | os.PathLike, feature_config: FeatureConfig, device: str = "cpu") -> ParallelModel:
    saved = torch.load(Path(run_dir) / BEST_WEIGHTS, map_location=device, weights_only=True)
    model = build_model(ModelConfig.from_dict(saved["model_config"]), feature_config, device)
    model.load_state_dict(saved["model"])
    return model.eval()


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True, mininterval=1.0)
