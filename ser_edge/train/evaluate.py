"""Classification reports on chosen actors, for a run (PyTorch) or an ONNX model.

The ONNX path goes through the edge runtime exactly as a user would: file -> load_audio ->
resample -> windows -> log_mel -> onnxruntime -> mean of window probabilities.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ser_edge.edge_runtime.audio import DEFAULT_HOP_S
from ser_edge.edge_runtime.errors import SerEdgeError
from ser_edge.train import metrics
from ser_edge.train.data import LABELS, Clip, DatasetError, ManifestRow, parse_name, read_manifest_rows, scan_dataset
from ser_edge.train.robustness import Transform


@dataclasses.dataclass
class Evaluation:
    actors: list[int]
    labels: tuple[str, ...]
    y_true: np.ndarray
    probabilities: np.ndarray
    skipped: list[str]
    clip_actors: np.ndarray | None = None  # the actor of each evaluated clip, row for row
    # Evaluated actors the model has seen: {"train": [...], "val": [...]}; empty when every
    # evaluated actor is held out (or the model does not record its split).
    not_held_out: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # Set when the clips come from a manifest (:func:`evaluate_manifest`): the CSV's path and
    # the speakers it names (``actors`` is then empty).
    manifest: str | None = None
    speakers: list[str] = dataclasses.field(default_factory=list)
    clip_speakers: list[str] | None = None  # a manifest's speaker of each evaluated clip ("" if none)

    def only(self, actors: Iterable[int]) -> "Evaluation":
        """The same evaluation restricted to the clips of ``actors``."""
        if self.clip_actors is None:
            raise ValueError("this evaluation does not record each clip's actor")
        wanted = sorted(set(actors))
        missing = sorted(set(wanted) - set(self.actors))
        if missing:
            raise ValueError(f"actors {missing} were not evaluated (evaluated: {self.actors})")
        keep = np.isin(self.clip_actors, wanted)
        return dataclasses.replace(self, actors=wanted, y_true=self.y_true[keep],
                                   probabilities=self.probabilities[keep], clip_actors=self.clip_actors[keep],
                                   not_held_out=not_held_out(self.not_held_out, wanted))

    @property
    def summary(self) -> dict[str, Any]:
        out = metrics.summary(self.y_true, self.probabilities.argmax(1), self.labels)
        out["ece"] = metrics.expected_calibration_error(self.probabilities, self.y_true)
        out["actors"] = self.actors
        if self.manifest is not None:
            out["manifest"], out["speakers"] = self.manifest, self.speakers
            if self.speakers:
                out["per_speaker"] = self.per_speaker()
        if self.not_held_out:
            out["not_held_out"] = self.not_held_out
        return out

    def per_speaker(self) -> dict[str, dict[str, float]]:
        """Clips and accuracy of each named speaker of a manifest: how much the score depends on who speaks."""
        if self.clip_speakers is None:
            return {}
        speakers = np.array(self.clip_speakers)
        correct = self.probabilities.argmax(1) == self.y_true
        return {name: {"clips": int((speakers == name).sum()), "accuracy": float(correct[speakers == name].mean())}
                for name in self.speakers}

    def report(self) -> str:
        if self.manifest is not None:
            scope = f"{self.manifest}: speakers {self.speakers}"
        else:
            scope = f"actors {self.actors}" + (f" (speakers {self.speakers})" if self.speakers else "")
        head = f"{scope} ({len(self.y_true)} clips)\n"
        seen = ", ".join(SPLIT_ROLES[part].format(actors) for part, actors in self.not_held_out.items())
        if seen:
            head += f"NOT HELD OUT: the model was {seen}; not a speaker-independent score\n"
        text = head + "\n" + metrics.classification_report(self.y_true, self.probabilities.argmax(1), self.labels)
        per_speaker = self.per_speaker() if self.manifest is not None else {}
        if per_speaker:
            text += "\n" + "\n".join(f"{'speaker' if i == 0 else '':<8} {name:<16} {row['accuracy']:.3f}  ({row['clips']} clips)"
                                      for i, (name, row) in enumerate(per_speaker.items())) + "\n"
        return text


SPLIT_ROLES = {"train": "trained on actors {}", "val": "validated (checkpoint chosen) on actors {}"}


def not_held_out(split: Mapping[str, Iterable[int]] | None, actors: Iterable[int]) -> dict[str, list[int]]:
    """Which of ``actors`` a model with this actor ``split`` has seen, by role (train, val)."""
    evaluated = set(actors)
    seen = {part: sorted(evaluated & set((split or {}).get(part, ()))) for part in SPLIT_ROLES}
    return {part: members for part, members in seen.items() if members}


def select_clips(data_dir: str | os.PathLike, actors: Iterable[int] | None) -> list[Clip]:
    clips = scan_dataset(data_dir).clips
    if actors is None:
        return clips
    wanted = set(actors)
    chosen = [c for c in clips if c.actor in wanted]
    missing = sorted(wanted - {c.actor for c in chosen})
    if missing:
        raise DatasetError(f"no clips of actors {missing}", path=str(data_dir))
    return chosen


def evaluate_onnx(
    model_path: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    actors: Iterable[int] | None,
    *,
    threads: int = 1,
    transform: Transform | None = None,
) -> Evaluation:
    """Evaluate an ONNX model through :class:`EmotionClassifier` on real files.

    ``transform(samples, sample_rate)`` optionally corrupts each decoded clip (noise,
    band-limiting) before it is classified.
    """
    return evaluate_conditions(model_path, data_dir, actors, {"": transform}, threads=threads)[""]


def evaluate_conditions(
    model_path: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    actors: Iterable[int] | None,
    conditions: Mapping[str, Transform | None],
    *,
    threads: int = 1,
) -> dict[str, Evaluation]:
    """One :class:`Evaluation` per named condition; each clip is decoded once for all."""
    from ser_edge.edge_runtime import EmotionClassifier, load_audio

    classifier = EmotionClassifier(model_path, threads=threads)
    clips = select_clips(data_dir, actors)
    label_index = {label: i for i, label in enumerate(classifier.labels)}
    y: dict[str, list[int]] = {name: [] for name in conditions}
    owners: dict[str, list[int]] = {name: [] for name in conditions}
    probs: dict[str, list[list[float]]] = {name: [] for name in conditions}
    skipped: dict[str, list[str]] = {name: [] for name in conditions}
    for clip in clips:
        try:
            audio = load_audio(clip.path)
        except SerEdgeError as exc:
            for name in conditions:
                skipped[name].append(str(exc))
            continue
        for name, transform in conditions.items():
            samples, rate = audio.samples, audio.sample_rate
            try:
                if transform is not None:
                    samples, rate = transform(samples, rate)
                prediction = classifier.predict(samples, rate, name=clip.path)
            except SerEdgeError as exc:
                skipped[name].append(str(exc))
                continue
            y[name].append(label_index[clip.label])
            owners[name].append(clip.actor)
            probs[name].append([prediction.probabilities[label] for label in classifier.labels])
    evaluated = sorted({c.actor for c in clips})
    seen = not_held_out(_exported_split(classifier.metadata), evaluated)
    return {
        name: Evaluation(evaluated, classifier.labels, np.array(y[name]), np.array(probs[name]), skipped[name],
                         np.array(owners[name], dtype=np.int64), seen)
        for name in conditions
    }


def read_manifest(manifest: str | os.PathLike, labels: Iterable[str]) -> list[ManifestRow]:
    """The rows of a CSV manifest (header with ``path``, ``label`` and optionally ``speaker``),
    checked whole before anything is classified: every label must be one of ``labels``."""
    known = tuple(labels)
    rows = read_manifest_rows(manifest)
    for row in rows:
        if row.label not in known:
            raise DatasetError(f"label {row.label!r} is not one of the model's labels {list(known)}",
                               path=f"{manifest} line {row.line}")
    return rows


def evaluate_manifest(model_path: str | os.PathLike | None, manifest: str | os.PathLike, *, threads: int = 1) -> Evaluation:
    """Evaluate an ONNX model through :class:`EmotionClassifier` on the clips a CSV manifest
    labels (your own data). A clip that cannot be classified is skipped, with its reason."""
    from ser_edge.edge_runtime import EmotionClassifier

    classifier = EmotionClassifier(model_path, threads=threads)
    rows = read_manifest(manifest, classifier.labels)
    label_index = {label: i for i, label in enumerate(classifier.labels)}
    y, probs, skipped, clip_speakers = [], [], [], []
    for row in rows:
        try:
            prediction = classifier.predict_file(row.path)
        except SerEdgeError as exc:
            skipped.append(str(exc))
            continue
        y.append(label_index[row.label])
        probs.append([prediction.probabilities[label] for label in classifier.labels])
        clip_speakers.append(row.speaker)
    if not y:
        raise DatasetError(f"no clip of the {len(rows)} listed could be classified (first: {skipped[0]})",
                           path=str(manifest))
    return Evaluation([], classifier.labels, np.array(y), np.array(probs), skipped,
                      not_held_out=not_held_out(_exported_split(classifier.metadata), _ravdess_actors(rows)),
                      manifest=str(manifest), speakers=sorted(set(clip_speakers) - {""}), clip_speakers=clip_speakers)


def _ravdess_actors(rows: Iterable[ManifestRow]) -> list[int]:
    """The RAVDESS actors of the manifest's clips that carry RAVDESS names: a manifest of
    RAVDESS clips is checked against the model's split like a RAVDESS folder."""
    actors = set()
    for row in rows:
        try:
            actors.add(parse_name(row.path).actor)
        except DatasetError:
            continue
    return sorted(actors)


def _exported_split(metadata: Mapping[str, str]) -> dict[str, list[int]] | None:
    """The actor split an exported model records in its provenance (None when it has none)."""
    try:
        split = json.loads(metadata.get("provenance", "{}")).get("split_actors")
    except (ValueError, AttributeError):
        return None
    return split if isinstance(split, dict) else None


def evaluate_run(
    run_dir: str | os.PathLike, data_dir: str | os.PathLike, actors: Iterable[int] | None, *,
    cache_dir=None, hop_s: float = DEFAULT_HOP_S, speed: float = 1.0,
) -> Evaluation:
    """Evaluate a run's best PyTorch weights (scaler applied) on the given actors, with
    windows every ``hop_s`` seconds on clips longer than one window; each window played
    ``speed`` times faster (the training's speed perturbation, at test time) unless 1."""
    from ser_edge.edge_runtime.features import FeatureConfig
    from ser_edge.train.data import data_hash, load_feature_set
    from ser_edge.train.scaler import Scaler
    from ser_edge.train.trainer import clip_level, load_model, predict_windows

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    feature_config = FeatureConfig.from_dict(config["features"])
    clips = select_clips(data_dir, actors)
    fs = load_feature_set(clips, feature_config, cache_dir=cache_dir, content_hash=data_hash(clips, data_dir), hop_s=hop_s)
    rows = np.arange(len(fs.window_clip))
    features = fs.features
    if speed != 1.0:
        from ser_edge.edge_runtime.features import log_mel
        from ser_edge.train.augment import speed_perturb

        # Window by window: a stacked copy of every perturbed waveform would be twice the features' size.
        features = np.stack([log_mel(speed_perturb(wave, speed), feature_config) for wave in fs.waveforms])
    model = load_model(run_dir, feature_config)
    window_probs = predict_windows(model, features, rows, Scaler.load(run_dir / "scaler.npz"), "cpu")
    probs, y = clip_level(fs, rows, window_probs)
    clip_actors = np.array([fs.clips[c].actor for c in np.unique(fs.window_clip[rows])], dtype=np.int64)
    evaluated = sorted({c.actor for c in fs.clips})
    names = config.get("speakers") or {}  # a manifest-trained run's speaker of each actor number
    return Evaluation(evaluated, tuple(config.get("labels", LABELS)), y, probs, [], clip_actors,
                      not_held_out(config.get("split"), evaluated), speakers=[names[str(a)] for a in evaluated if str(a) in names])
