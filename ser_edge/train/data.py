"""Training data: RAVDESS speech (labels and actors from the file names) or your own clips
from a CSV manifest; actor-wise (speaker-wise) splits and the on-disk feature cache.

Features come from the edge runtime's own front-end (``load_audio`` -> ``to_model_rate``
-> ``split_windows`` -> ``log_mel``): there is no second implementation.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ser_edge.edge_runtime.audio import (
    AUDIO_EXTENSIONS,
    DEFAULT_HOP_S,
    load_audio,
    split_windows,
    to_model_rate,
)
from ser_edge.edge_runtime.errors import SerEdgeError
from ser_edge.edge_runtime.features import FeatureConfig, log_mel

log = logging.getLogger(__name__)

# RAVDESS emotion codes, in the seed's label order (code 01 .. 08).
LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
AUDIO_ONLY = 3  # modality code
SPEECH = 1  # vocal channel code (2 = song)
CACHE_VERSION = 1

# The front-end fingerprint's test signal: a tone plus seeded noise, recorded at a rate other
# than the model's so that the resampler is part of what is hashed.
FINGERPRINT_RATE = 44_100  # Hz
FINGERPRINT_TONE_HZ = 220.0
FINGERPRINT_TONE_AMPLITUDE = 0.3
FINGERPRINT_NOISE_STD = 0.05
FINGERPRINT_SEED = 0
FINGERPRINT_HEX_CHARS = 16


class DatasetError(SerEdgeError):
    """A data folder or file name that cannot be used for training."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One RAVDESS clip and the fields of its file name."""

    path: str
    modality: int
    vocal_channel: int
    emotion: int  # 1..8
    intensity: int
    statement: int
    repetition: int
    actor: int

    @property
    def label(self) -> str:
        return LABELS[self.emotion - 1]

    @property
    def label_index(self) -> int:
        return self.emotion - 1

    @property
    def is_female(self) -> bool:
        return self.actor % 2 == 0


@dataclasses.dataclass(frozen=True)
class ManifestClip:
    """One clip of a CSV manifest: its label and speaker as the manifest names them.

    ``actor`` numbers the manifest's speakers 1, 2, ... in sorted order, so that splits,
    reports and run configs treat them as RAVDESS actors; ``label_index`` indexes the
    manifest's sorted labels. No intensity is known (the intensity head needs RAVDESS).
    """

    path: str
    label: str
    label_index: int
    speaker: str
    actor: int
    intensity: int = 1


MANIFEST_COLUMNS = ("path", "label")  # always required


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    path: str  # as resolved: relative paths are taken from the manifest's folder
    label: str
    speaker: str
    line: int


def read_manifest_rows(manifest: str | os.PathLike, *, need_speaker: bool = False) -> list[ManifestRow]:
    """The rows of a CSV manifest: a header naming ``path`` and ``label`` (and ``speaker``,
    which ``need_speaker`` requires on every row), then one clip per line."""
    manifest = Path(manifest)
    required = (*MANIFEST_COLUMNS, "speaker") if need_speaker else MANIFEST_COLUMNS
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or ())]
            if missing:
                raise DatasetError(f"manifest needs a header with columns {list(required)}"
                                   f"{'' if need_speaker else ' (and optionally speaker)'}; missing {missing}",
                                   path=str(manifest))
            rows = []
            for row in reader:
                where = f"{manifest} line {reader.line_num}"
                path, label, speaker = ((row.get(c) or "").strip() for c in ("path", "label", "speaker"))
                for column, value in (("path", path), ("label", label), ("speaker", speaker)):
                    if not value and column in required:
                        raise DatasetError(f"empty {column}", path=where)
                resolved = Path(path) if Path(path).is_absolute() else manifest.parent / path
                rows.append(ManifestRow(str(resolved), label, speaker, reader.line_num))
    except FileNotFoundError:
        raise DatasetError("no such manifest", path=str(manifest)) from None
    except OSError as exc:
        raise DatasetError(f"cannot read the manifest ({exc.strerror or exc})", path=str(manifest)) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"not a readable CSV manifest ({exc})", path=str(manifest)) from None
    if not rows:
        raise DatasetError("manifest lists no clips", path=str(manifest))
    return rows


def parse_name(path: str | os.PathLike) -> Clip:
    """Parse ``MM-VV-EE-II-SS-RR-AA.ext``; raise :class:`DatasetError` on anything else."""
    path = os.fspath(path)
    stem = Path(path).stem
    parts = stem.split("-")
    if len(parts) != 7 or not all(len(p) == 2 and p.isdigit() for p in parts):
        raise DatasetError("file name is not a RAVDESS name (MM-VV-EE-II-SS-RR-AA)", path=path)
    modality, channel, emotion, intensity, statement, repetition, actor = map(int, parts)
    ranges = {
        "modality": (modality, 1, 3),
        "vocal channel": (channel, 1, 2),
        "emotion": (emotion, 1, 8),
        "intensity": (intensity, 1, 2),
        "statement": (statement, 1, 2),
        "repetition": (repetition, 1, 2),
        "actor": (actor, 1, 24),
    }
    for field, (value, low, high) in ranges.items():
        if not low <= value <= high:
            raise DatasetError(f"{field} code {value:02d} is outside {low:02d}-{high:02d}", path=path)
    if modality != AUDIO_ONLY or channel != SPEECH:
        raise DatasetError(
            f"not an audio-only speech clip (modality {modality:02d}, vocal channel {channel:02d})",
            path=path,
        )
    if emotion == 1 and intensity == 2:
        raise DatasetError("neutral has no strong intensity in RAVDESS", path=path)
    return Clip(path, modality, channel, emotion, intensity, statement, repetition, actor)


@dataclasses.dataclass
class ScanResult:
    clips: list[Clip] | list[ManifestClip]
    skipped: list[str]  # one-line messages
    labels: tuple[str, ...] = LABELS
    speakers: dict[int, str] | None = None  # a manifest's speaker of each actor number


def is_manifest(root: str | os.PathLike) -> bool:
    """Whether a data source is a CSV manifest (a file) rather than a RAVDESS folder."""
    return Path(root).suffix.lower() == ".csv" and not Path(root).is_dir()


def scan_manifest(manifest: str | os.PathLike) -> ScanResult:
    """Your own clips: a CSV manifest with the columns ``path,label,speaker`` (paths relative
    to the CSV). Labels are the manifest's, sorted; speakers are numbered 1, 2, ... sorted."""
    rows = read_manifest_rows(manifest, need_speaker=True)
    first_line: dict[str, int] = {}
    for row in rows:  # a clip listed twice could sit in two splits, or carry two labels
        key = _resolved(row.path)
        if key in first_line:
            raise DatasetError(f"lists {row.path} again (first on line {first_line[key]})", path=f"{manifest} line {row.line}")
        first_line[key] = row.line
    labels = tuple(sorted({r.label for r in rows}))
    if len(labels) < 2:
        raise DatasetError(f"a classifier needs at least 2 labels; the manifest has {list(labels)}", path=str(manifest))
    speakers = sorted({r.speaker for r in rows})
    actor = {name: i + 1 for i, name in enumerate(speakers)}
    label_index = {label: i for i, label in enumerate(labels)}
    clips = [ManifestClip(r.path, r.label, label_index[r.label], r.speaker, actor[r.speaker]) for r in rows]
    return ScanResult(clips, [], labels, {number: name for name, number in actor.items()})


def scan_dataset(root: str | os.PathLike, *, strict: bool = False) -> ScanResult:
    """Find RAVDESS speech clips under ``root`` (``Actor_NN/*.wav|.flac`` or any nesting), or
    read the clips of a CSV manifest (:func:`scan_manifest`) when ``root`` is one."""
    if is_manifest(root):
        return scan_manifest(root)
    root = Path(root)
    if root.is_file():
        raise DatasetError("is a file: give a RAVDESS data folder, or a CSV manifest named *.csv", path=str(root))
    if not root.is_dir():
        raise DatasetError("data folder does not exist or is not a directory", path=str(root))
    clips, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        try:
            clips.append(parse_name(path))
        except DatasetError as exc:
            if strict:
                raise
            skipped.append(str(exc))
    for message in skipped:
        log.warning("skipped %s", message)
    if not clips:
        raise DatasetError(f"no RAVDESS speech clips ({'/'.join(AUDIO_EXTENSIONS)}) found", path=str(root))
    return ScanResult(clips, skipped)


# -- splits -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]

    def __post_init__(self) -> None:
        sets = [set(self.train), set(self.val), set(self.test)]
        if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
            raise ValueError(f"an actor is in two splits: {self}")

    def to_dict(self) -> dict[str, list[int]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def _gender_interleaved(actors: Iterable[int], rng: random.Random) -> list[int]:
    """Actors shuffled within gender, then alternated female/male (balanced prefixes)."""
    actors = sorted(set(actors))
    female = [a for a in actors if a % 2 == 0]
    male = [a for a in actors if a % 2 == 1]
    rng.shuffle(female)
    rng.shuffle(male)
    order = []
    for i in range(max(len(female), len(male))):
        order.extend(group[i] for group in (female, male) if i < len(group))
    return order


def split_actors(
    actors: Iterable[int], *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> Split:
    """Seeded actor-wise split, gender-balanced where the counts allow."""
    order = _gender_interleaved(actors, random.Random(seed))
    n_test = max(1, round(test_fraction * len(order)))
    n_val = max(1, round(val_fraction * len(order)))
    if n_test + n_val >= len(order):
        raise DatasetError(f"{len(order)} actors (speakers) are too few for a train/val/test split; it needs {n_test + n_val + 1}")
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def kfold_splits(actors: Iterable[int], folds: int, *, n_val: int = 2, seed: int = 0) -> list[Split]:
    """Actor-wise K-fold: each actor is in exactly one test fold; validation actors
    (gender-balanced, seeded) are held out of the remaining training actors."""
    rng = random.Random(seed)
    order = _gender_interleaved(actors, rng)
    if folds < 2:
        raise DatasetError(f"cross-validation needs at least 2 folds, got {folds}")
    largest_test = -(-len(order) // folds)  # ceil: the first folds take the remainder
    if folds > len(order) or len(order) - largest_test - n_val < 1:
        raise DatasetError(
            f"{len(order)} actors (speakers) are too few for {folds} folds: each fold needs its test actors, "
            f"{n_val} validation actors and at least one training actor"
        )
    splits = []
    for k in range(folds):
        test = order[k::folds]
        rest = _gender_interleaved([a for a in order if a not in test], random.Random(seed * 1000 + k))
        val, train = rest[:n_val], rest[n_val:]
        splits.append(Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test))))
    return splits


# -- hashing and the feature cache -------------------------------------------------------


def data_hash(clips: Sequence[Clip] | Sequence[ManifestClip], root: str | os.PathLike) -> str:
    """sha256 over the sorted (relative path, content sha256) of every clip (and, for a
    manifest, its label and speaker: relabelling a clip is a different data set)."""
    base = Path(root).parent if is_manifest(root) else root
    digest = hashlib.sha256()
    for clip in sorted(clips, key=lambda c: c.path):
        try:
            with open(clip.path, "rb") as handle:
                content = hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            content = "unreadable"  # the feature pass skips it, with its reason
        names = f" {clip.label} {clip.speaker}" if isinstance(clip, ManifestClip) else ""
        digest.update(f"{os.path.relpath(clip.path, base)} {content}{names}\n".encode())
    return digest.hexdigest()


@dataclasses.dataclass
class FeatureSet:
    """Log-mel windows of a list of clips, plus the waveforms for noise augmentation."""

    clips: list[Clip]
    features: np.ndarray  # (windows, n_mels, n_frames) float32
    waveforms: np.ndarray  # (windows, n_samples) float32 at the model rate
    window_clip: np.ndarray  # (windows,) index into clips
    window_start_s: np.ndarray  # (windows,)

    def rows_for_actors(self, actors: Iterable[int]) -> np.ndarray:
        wanted = set(actors)
        clip_mask = np.array([clip.actor in wanted for clip in self.clips])
        return np.flatnonzero(clip_mask[self.window_clip])

    @property
    def labels(self) -> np.ndarray:
        return np.array([clip.label_index for clip in self.clips])[self.window_clip]

    @property
    def actors(self) -> np.ndarray:
        return np.array([clip.actor for clip in self.clips])[self.window_clip]

    @property
    def intensities(self) -> np.ndarray:
        """Each window's intensity index: 0 = normal, 1 = strong (file-name field 4)."""
        return np.array([clip.intensity - 1 for clip in self.clips])[self.window_clip]


@functools.lru_cache(maxsize=8)
def front_end_fingerprint(config: FeatureConfig) -> str:
    """Hash of the exact bytes the front-end (resample -> windows -> log-mel) computes for a
    fixed test signal. A change of the features' floating-point rounding, which no settings
    record, changes it; feature caches and run folders are keyed by it, so that neither is
    reused across such a change (a model trained on the old bytes could not be rebuilt)."""
    n_samples = int(round(config.clip_s * FINGERPRINT_RATE))
    time_s = np.arange(n_samples) / FINGERPRINT_RATE
    noise = np.random.default_rng(FINGERPRINT_SEED).standard_normal(n_samples)
    signal = FINGERPRINT_TONE_AMPLITUDE * np.sin(2 * np.pi * FINGERPRINT_TONE_HZ * time_s) + FINGERPRINT_NOISE_STD * noise
    windows, _ = split_windows(to_model_rate(signal.astype(np.float32), FINGERPRINT_RATE, config), config)
    return hashlib.sha256(log_mel(windows, config).tobytes()).hexdigest()[:FINGERPRINT_HEX_CHARS]


def blas_kernels() -> str | None:
    """numpy's BLAS and the kernel set it picked for this CPU, e.g. ``openblas 0.3.31
    Haswell``: the one thing besides the code that changes the front-end's bytes (its mel
    products round differently per kernel set; OPENBLAS_CORETYPE picks one). None when
    threadpoolctl cannot tell."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    for pool in threadpoolctl.threadpool_info():
        if pool.get("user_api") == "blas":
            return " ".join(str(part) for part in (pool.get("internal_api"), pool.get("version"),
                                                   pool.get("architecture")) if part)
    return None


def blas_kernels_note(config: dict, other: dict) -> str:
    """``; BLAS kernels X against Y`` where two runs' configs recorded different front-end
    fingerprints and different kernel sets (what to add to a message about their
    differences), else ``""``: kernels that did not change the features are no difference."""
    if config.get("front_end") == other.get("front_end"):
        return ""
    mine, theirs = config.get("front_end_blas"), other.get("front_end_blas")
    return f"; BLAS kernels {mine} against {theirs}" if mine and theirs and mine != theirs else ""


def _cache_key(config: FeatureConfig, content_hash: str, hop_s: float) -> str:
    text = json.dumps(
        {"v": CACHE_VERSION, "config": config.to_json(), "data": content_hash, "hop_s": hop_s,
         "front_end": front_end_fingerprint(config)}
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compute_features(
    clips: Sequence[Clip], config: FeatureConfig, hop_s: float = DEFAULT_HOP_S
) -> tuple[list[Clip], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run every clip through the edge front-end; unreadable clips are skipped with a warning."""
    kept, features, waves, owner, starts = [], [], [], [], []
    for clip in clips:
        try:
            audio = load_audio(clip.path)
        except SerEdgeError as exc:
            log.warning("skipped %s", exc)
            continue
        windows, start_s = split_windows(to_model_rate(audio.samples, audio.sample_rate, config), config, hop_s)
        features.append(log_mel(windows, config))
        waves.append(windows)
        owner.extend([len(kept)] * len(windows))
        starts.extend(start_s)
        kept.append(clip)
    if not kept:
        raise DatasetError("no clip could be decoded")
    return (
        kept,
        np.concatenate(features),
        np.concatenate(waves),
        np.asarray(owner, dtype=np.int64),
        np.asarray(starts, dtype=np.float64),
    )


def _resolved(path: str | os.PathLike) -> str:
    return str(Path(path).resolve())


def _replace_atomically(target: Path, write) -> None:
    """``write(file)`` into a temporary sibling, then rename it over ``target``."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            write(handle)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def load_feature_set(
    clips: Sequence[Clip],
    config: FeatureConfig,
    *,
    cache_dir: str | os.PathLike | None,
    content_hash: str,
    hop_s: float = DEFAULT_HOP_S,
) -> FeatureSet:
    """Features for ``clips``, cached on disk under a key of (feature config, data hash, hop).

    A cache hit needs the same clips, however their paths are spelled (relative or
    absolute). Files are replaced atomically, so a process that has the cache memory-mapped
    keeps reading the old, complete files while another one rewrites it.
    """
    clip_paths = [_resolved(c.path) for c in clips]
    if cache_dir is not None:
        folder = Path(cache_dir) / f"features-{_cache_key(config, content_hash, hop_s)}"
        index = folder / "clips.json"
        if index.is_file():
            stored = json.loads(index.read_text())
            if [_resolved(p) for p in stored["requested"]] == clip_paths:
                by_path = dict(zip(clip_paths, clips, strict=True))
                log.info("feature cache hit: %s", folder)
                return FeatureSet(
                    [by_path[_resolved(p)] for p in stored["kept"]],
                    np.load(folder / "features.npy", mmap_mode="r"),
                    np.load(folder / "waveforms.npy", mmap_mode="r"),
                    np.load(folder / "window_clip.npy"),
                    np.load(folder / "window_start_s.npy"),
                )
    kept, features, waves, owner, starts = compute_features(clips, config, hop_s)
    if cache_dir is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (
            ("features", features),
            ("waveforms", waves),
            ("window_clip", owner),
            ("window_start_s", starts),
        ):
            _replace_atomically(folder / f"{name}.npy", lambda f, a=array: np.save(f, a))
        # Written last: a cache folder without its index is ignored and rebuilt.
        index_text = json.dumps({"requested": clip_paths, "kept": [_resolved(c.path) for c in kept]})
        _replace_atomically(index, lambda f: f.write(index_text.encode()))
    return FeatureSet(kept, features, waves, owner, starts)
