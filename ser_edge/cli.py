"""The ``ser-edge`` command line: a thin click layer over the library.

Library code raises typed errors (``SerEdgeError``); this module alone turns them into
one-line messages and exit codes: 0 all good, 1 some input failed, 2 usage error.
``classify`` and ``info`` import only the edge runtime (never torch or onnx); the recipe
table that ``train --recipe`` offers is torch-free too (``train/recipes.py``). ``train``,
``evaluate`` and ``export`` import the rest of the training code on demand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import click

from ser_edge.edge_runtime.audio import AUDIO_EXTENSIONS, DEFAULT_HOP_S, MAX_DURATION_S, MIN_DURATION_S
from ser_edge.edge_runtime.errors import EmptyAudioError, ModelError, NotAudioError, SerEdgeError
from ser_edge.outputs import why_unwritable
from ser_edge.train.recipes import RECIPES, SHIPPED_RECIPE

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
STDIN = "-"


def _fail(message: str, code: int = EXIT_INPUT_FAILED) -> "click.exceptions.Exit":
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(code)


def _check_output(path: str | None, option: str, *, folder: bool = False) -> None:
    """Fail now (exit 2), not after minutes of work, where ``path`` could not be written later."""
    problem = why_unwritable(path, folder=folder) if path is not None else None
    if problem:
        raise _fail(f"{option} {path}: {problem}", EXIT_USAGE)


def _write_json(path: str, data: dict) -> None:
    """``data`` as indented JSON at ``path`` (missing folders made); an OS error is one line."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
    except OSError as exc:
        raise _fail(f"{path}: cannot write ({exc.strerror or exc})") from None


def _audio_files_below(folder: Path) -> list[Path]:
    """The audio files below ``folder``, sorted; hidden folders are not entered (``.git`` is
    not walked), hidden files are left out, links to folders are not followed. Only regular
    files and links count (a named pipe would block the read), as before the walk."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            path = Path(root, name)
            if (not name.startswith(".") and path.suffix.lower() in AUDIO_EXTENSIONS
                    and (path.is_file() or path.is_symlink())):
                found.append(path)
    return sorted(found)


def expand_inputs(paths: tuple[str, ...]) -> Iterator[tuple[str, SerEdgeError | None]]:
    """Files as given; directories expanded recursively to their audio files (``AUDIO_EXTENSIONS``).

    Below a directory, hidden files and folders (``.git``, macOS's ``._clip.wav`` resource
    forks) are skipped; links to audio files are followed, and a broken one is reported."""
    for raw in paths:
        path = Path(raw)
        if raw != STDIN and path.is_dir():
            found = _audio_files_below(path)
            if not found:
                yield raw, NotAudioError(f"directory holds no audio files ({', '.join(AUDIO_EXTENSIONS)})", path=raw)
            for file in found:
                yield str(file), None
        else:
            yield raw, None


def _load_classifier(model: str | None, threads: int, hop_s: float = DEFAULT_HOP_S, max_duration_s: float = MAX_DURATION_S,
                     min_duration_s: float = MIN_DURATION_S):
    from ser_edge.edge_runtime.session import EmotionClassifier

    try:
        return EmotionClassifier(model, threads=threads, hop_s=hop_s, max_duration_s=max_duration_s,
                                 min_duration_s=min_duration_s or None)
    except SerEdgeError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


TABLE_FILE_HEADER = "file"


def _table_row(path: str, label: str, confidence: float, width: int) -> str:
    return f"{path:<{width}}  {label:<10} {confidence:6.3f}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ser-edge")
def main() -> None:
    """Speech emotion recognition on CPU: log-mel + ONNX, no torch needed."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="ONNX model (default: the shipped one).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines, one object per input file.")
@click.option("--timeline", is_flag=True, help="Include per-window predictions (3 s windows).")
@click.option("--hop", "hop_s", type=click.FloatRange(min=0.01), default=DEFAULT_HOP_S, show_default=True, help="Seconds between windows on long clips.")
@click.option("--raw-rate", type=click.IntRange(min=1), help="Read stdin ('-') as raw 16-bit little-endian mono PCM at this rate.")
@click.option("--max-duration", "max_duration_s", type=click.FloatRange(min=0.1), default=MAX_DURATION_S, show_default=True, help="Reject clips longer than this many seconds.")
@click.option("--min-duration", "min_duration_s", type=click.FloatRange(min=0.0), default=MIN_DURATION_S, show_default=True, help="Reject clips shorter than this many seconds (0: no minimum).")
def classify(paths, model_path, threads, as_json, timeline, hop_s, raw_rate, max_duration_s, min_duration_s) -> None:
    """Classify audio files (WAV, FLAC, Ogg, MP3) or directories (recursive); '-' reads stdin."""
    classifier = _load_classifier(model_path, threads, hop_s, max_duration_s, min_duration_s)
    failed = 0
    inputs = list(expand_inputs(paths))  # directories listed first, so the table's column fits every file
    width = max(len(TABLE_FILE_HEADER), *(len(path) for path, _ in inputs))
    header = f"{TABLE_FILE_HEADER:<{width}}  {'emotion':<10} {'conf':>6}"  # printed above the first row, if any
    for done, (path, error) in enumerate(inputs):
        try:
            result = error or _classify_one(classifier, path, raw_rate)
        except KeyboardInterrupt:
            raise _fail(f"interrupted after {done} of {len(inputs)} inputs", EXIT_INTERRUPTED) from None
        if isinstance(result, SerEdgeError):
            failed += 1
            if as_json:
                click.echo(json.dumps({"path": path, "error": result.problem, "error_code": result.code}))
            click.echo(f"error: {result}", err=True)
        elif as_json:
            click.echo(json.dumps(result.to_dict(timeline=timeline)))
        else:
            if header:
                click.echo(header)
                header = ""
            click.echo(_table_row(path, result.label, result.confidence, width))
            if timeline:
                for window in result.windows:
                    click.echo(f"  {window.start_s:7.2f}-{window.end_s:7.2f} s  {window.label:<10} {window.probabilities[window.label]:6.3f}")
    if failed:
        raise click.exceptions.Exit(EXIT_INPUT_FAILED)


def _classify_one(classifier, path: str, raw_rate: int | None):
    """The prediction for one input, or the typed error that stopped it (returned, not raised)."""
    try:
        if path == STDIN:
            return _classify_stdin(classifier, raw_rate)
        return classifier.predict_file(path)
    except SerEdgeError as exc:
        return exc


PCM16_SCALE = 32768.0  # int16 full scale


def _classify_stdin(classifier, raw_rate: int | None):
    """An audio file (WAV, FLAC, Ogg, MP3) or, with --raw-rate, raw s16le mono PCM."""
    import io

    import numpy as np

    data = sys.stdin.buffer.read()
    if not data:
        raise EmptyAudioError("nothing on stdin", path=STDIN)
    if raw_rate is not None:
        if len(data) % 2:
            raise NotAudioError("raw PCM on stdin has an odd number of bytes (expected 16-bit samples)", path=STDIN)
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_SCALE
        return classifier.predict(samples, raw_rate, name=STDIN)
    stream = io.BytesIO(data)
    stream.name = STDIN
    return dataclasses.replace(classifier.predict_file(stream), path=STDIN)


@main.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="ONNX model (default: the shipped one).")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as one JSON object.")
def info(model_path, as_json) -> None:
    """Show a model's labels, feature config, version and training provenance."""
    classifier = _load_classifier(model_path, threads=1)
    meta = {}
    for key, value in sorted(classifier.metadata.items()):
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    if as_json:
        click.echo(json.dumps({"path": classifier.path, **meta}, indent=2))
        return
    click.echo(f"model: {classifier.path}")
    for line in _describe_model(meta):
        click.echo(line)
    click.echo("everything the file carries: ser-edge info --json")


def _describe_model(meta: dict) -> list[str]:
    """A screen of what a person wants from a model's metadata (labels and feature config
    are there: the classifier refuses a model without them); the rest stays in --json."""
    features = meta["feature_config"]
    made = ", ".join(f"{label} {meta[key]}" for key, label in (("export_date", "exported"), ("opset", "opset"))
                     if key in meta)
    lines = [
        f"name: {meta.get('model_name', '?')} {meta.get('model_version', '')}".rstrip() + (f" ({made})" if made else ""),
        f"labels: {', '.join(map(str, meta['labels']))}",
        f"features: {features['sample_rate']} Hz, {features['clip_s']:g} s windows, {features['n_mels']} mel bands "
        f"(n_fft {features['n_fft']}, hop {features['hop_length']})",
    ]
    lines += [f"{key}: {meta[key]}" for key in ("input", "output", "license") if key in meta]
    if isinstance(meta.get("provenance"), dict):
        lines += _describe_provenance(meta["provenance"])
    return lines


def _describe_provenance(provenance: dict) -> list[str]:
    speakers = provenance.get("speakers") or {}  # a manifest's names of the actor numbers
    kind = "speakers" if speakers else "actors"

    def who(part: str) -> str:
        return ", ".join(str(speakers.get(str(a), a)) for a in provenance["split_actors"][part])

    lines = []
    if "split_actors" in provenance:
        lines.append(f"split: train {kind} {who('train')}; validation {kind} {who('val')}; test {kind} {who('test')}")
    test = provenance.get("test_metrics")
    if test and "split_actors" in provenance:
        lines.append(f"test accuracy: {test['accuracy']:.3f} (macro-F1 {test['macro_f1']:.3f}, UAR {test['uar']:.3f}) "
                     f"on {test['n']} clips of {kind} {who('test')}")
    if provenance.get("members"):
        seeds = ", ".join(str(m.get("seed", "?")) for m in provenance["members"])
        lines.append(f"members: {len(provenance['members'])} (seeds {seeds})")
    folds = provenance.get("branch_fold")
    if folds:
        folded = sum(bool(v.get("folded")) for v in folds)
        lines.append(f"transformer branch: folded into the classifier bias in {folded} of {len(folds)} member(s) "
                     "(its output was constant; ser_edge/export/fold.py)")
    lines += [f"{label}: {provenance[key]}" for key, label in
              (("code_version", "trained by"), ("data_hash", "data sha256"), ("weights", "weights")) if provenance.get(key)]
    return lines


# -- training side (imports torch on demand) ---------------------------------------------


def _train_modules():
    try:
        from ser_edge.train import pipeline
    except ImportError as exc:
        raise _fail(f"training needs the train extra: pip install 'ser-edge[train]' ({exc})", EXIT_USAGE) from None
    return pipeline


@main.command()
@click.argument("data_dir", type=click.Path())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/default", show_default=True, help="Run folder.")
@click.option("--folds", type=click.IntRange(min=0), default=0, help="Actor-wise K-fold cross-validation instead of one split.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epoch cap  [default: the recipe's, 150]")
@click.option("--patience", type=click.IntRange(min=1), help="Early-stopping patience in epochs  [default: the recipe's, 12]")
@click.option("--batch-size", type=click.IntRange(min=1), help="[default: the recipe's, 32]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, batches and augmentation (and of the split, unless --split-seed).")
@click.option("--split-seed", type=int, help="Seed of the actor split / folds  [default: --seed]")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--actors", help="Restrict to these actors, e.g. 1,2,3,4 (for quick runs).")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=SHIPPED_RECIPE, show_default=True, help="Model/augmentation recipe (see train/recipes.py).")
@click.option("--only-fold", type=click.IntRange(min=0), help="With --folds: train just this fold (run folds in parallel).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="torch threads (0 = all cores).")
@click.option("--augment/--no-augment", default=True, show_default=True, help="All train-time augmentation.")
@click.option("--mixup", type=click.FloatRange(min=0), help="Mixup alpha (0 = off)  [default: the recipe's]")
@click.option("--speaker-adversarial", type=click.FloatRange(min=0), help="Gradient-reversal weight of a training-actor classifier (0 = off)  [default: the recipe's]")
@click.option("--intensity-aux", type=click.FloatRange(min=0), help="Loss weight of a training-only intensity (normal/strong) head (0 = off)  [default: the recipe's]")
@click.option("--mixstyle", type=click.FloatRange(0, 1), help="Probability per batch of MixStyle (per-channel statistics mixed between examples after the first CNN block; training only; 0 = off)  [default: the recipe's]")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), help="Per-step decay of a moving average of the weights, which validation judges and which is saved (0 = off)  [default: the recipe's]")
@click.option("--warmup-epochs", type=click.IntRange(min=0), help="Epochs over which the learning rate rises linearly to its value; the plateau schedule starts after them (0 = off)  [default: the recipe's]")
@click.option("--reverb", type=click.FloatRange(0, 1), help="Probability of synthetic-room reverberation per training window  [default: the recipe's]")
@click.option("--bandlimit", type=click.FloatRange(0, 1), help="Probability of 8/16 kHz band-limiting per training window  [default: the recipe's]")
@click.option("--speed", type=click.FloatRange(0, 1), help="Probability of speed perturbation (the recipe's range, 0.9-1.1x unless it says otherwise) per training window  [default: the recipe's]")
@click.option("--pitch", type=click.FloatRange(0, 1), help="Probability of a pitch shift that keeps the formants (the recipe's range, 0.85-1.18x unless it says otherwise) per training window  [default: the recipe's]")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(file_okay=False, exists=True), help="Distil from this run folder (with --folds: this cross-validation's fold_k for fold k), trained on the same split; repeatable.")
@click.option("--distill", type=click.FloatRange(0, 1), help="Weight of the loss that matches the teachers' mean probabilities (needs --teacher)  [default: the recipe's, 0]")
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True), help="Softmax temperature of distillation  [default: the recipe's, 2]")
@click.option("--init-from", "init_from", help="Fine-tune: start from this exported model's weights ('default': the shipped model); the classifier too when its labels are the data's.")
@click.option("--init-member", type=click.IntRange(min=0), default=0, show_default=True, help="With --init-from: which member of an ensemble file.")
@click.option("--refit-from", type=click.Path(file_okay=False, exists=True), help="Refit: train again on the training and validation actors of this finished run (with --folds: cross-validation) of the same recipe and seed, for its best epoch count, replaying its learning rate per epoch.")
@click.option("--refit-hold-out", is_flag=True, help="With --refit-from: keep the last validation actor out of the refit and score on it (no choice reads it).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=".cache/ser-edge", show_default=True, help="Feature cache folder.")
@click.option("--strict", is_flag=True, help="Fail on any file that is not a readable RAVDESS speech clip.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data_dir, out_dir, folds, epochs, patience, batch_size, seed, split_seed, device, actors, recipe, only_fold, threads, augment,
          mixup, speaker_adversarial, intensity_aux, mixstyle, ema_decay, warmup_epochs, reverb, bandlimit, speed, pitch, teachers, distill,
          distill_temperature, init_from, init_member, refit_from, refit_hold_out, cache_dir, strict, quiet) -> None:
    """Train a ParallelModel with a speaker-wise split, on a RAVDESS folder (DATA_DIR) or on your
    own clips (DATA_DIR: a CSV manifest with the columns path,label,speaker)."""
    pipeline = _train_modules()
    from ser_edge.train.augment import AugmentConfig
    from ser_edge.train.data import kfold_splits, split_actors

    _check_output(out_dir, "--out", folder=True)
    _check_output(cache_dir, "--cache", folder=True)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Every check that needs no data comes first: preparing the features can take minutes.
    _check_split_options(folds, only_fold, init_from, init_member, device)
    _check_refit_options(refit_from, refit_hold_out, teachers, init_from)
    wanted = _parse_actors(actors)
    chosen = RECIPES[recipe]
    split_seed = seed if split_seed is None else split_seed
    train_config = _distill_settings(
        chosen.train_config(epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                            early_stop_patience=patience, threads=threads,
                            speaker_adversarial=speaker_adversarial, intensity_aux=intensity_aux,
                            ema_decay=ema_decay, warmup_epochs=warmup_epochs, distill_weight=distill, distill_temperature=distill_temperature),
        teachers, distill)
    feature_config = chosen.feature_config()
    try:
        prepared = pipeline.prepare(data_dir, feature_config, cache_dir=cache_dir, strict=strict)
    except SerEdgeError as exc:
        raise _fail(str(exc)) from None
    if prepared.skipped:
        click.echo(f"skipped {len(prepared.skipped)} files (see warnings above)", err=True)
    present = sorted({c.actor for c in prepared.feature_set.clips})
    if prepared.speakers:
        click.echo("speakers as actors: " + ", ".join(f"{n} = {name}" for n, name in sorted(prepared.speakers.items())))
        if wanted:
            raise _fail("--actors is for RAVDESS folders; leave speakers out of the manifest instead", EXIT_USAGE)
        if train_config.intensity_aux > 0:
            raise _fail("the intensity head needs RAVDESS intensities, which a manifest does not give", EXIT_USAGE)
    if wanted:
        missing = sorted(set(wanted) - set(present))
        if missing:
            raise _fail(f"{data_dir}: no clips of actors {missing}", EXIT_USAGE)
        present = wanted
    kwargs = dict(
        feature_config=feature_config,
        train_config=train_config,
        teachers=teachers,
        init_from=init_from,
        init_member=init_member,
        model_config=chosen.model_config(mixstyle_prob=mixstyle),
        augment=chosen.augment_config(mixup_alpha=mixup, reverb_prob=reverb, bandlimit_prob=bandlimit, speed_prob=speed,
                                     pitch_prob=pitch)
        if augment else AugmentConfig.off(),
        progress=not quiet,
    )
    if folds:
        try:
            kfold_splits(present, folds, seed=split_seed)
        except SerEdgeError as exc:
            raise _fail(f"{data_dir}: {exc}") from None
        with _training_errors(out_dir):
            out = pipeline.cross_validate(prepared, folds, out_dir, seed=split_seed, actors=present, only_fold=only_fold,
                                          refit_from=refit_from, hold_out=refit_hold_out, **kwargs)
        if out is None:
            click.echo(f"fold {only_fold} done; the summary is written when every fold is done")
            return
        for name, stat in out["summary"].items():
            click.echo(f"{name}: {stat['mean']:.3f} ± {stat['std']:.3f} over {folds} actor-wise folds")
        return
    try:
        split = split_actors(present, seed=split_seed)
    except SerEdgeError as exc:
        raise _fail(f"{data_dir}: {exc}") from None
    click.echo(f"actors: train {list(split.train)}, val {list(split.val)}, test {list(split.test)}")
    if prepared.speakers:
        named = {part: [prepared.speakers[a] for a in getattr(split, part)] for part in ("train", "val", "test")}
        click.echo(f"speakers: train {named['train']}, val {named['val']}, test {named['test']}")
    with _training_errors(out_dir):
        if refit_from:
            kwargs.pop("teachers")
            trainer = pipeline.refit_trainer(prepared, refit_from, split, out_dir, hold_out=refit_hold_out, **kwargs)
            click.echo(f"refit: train {list(trainer.split.train)}, held out {list(trainer.split.val)}, "
                       f"{trainer.tc.epochs} epochs of {refit_from}")
            metrics = trainer.run()
        else:
            metrics = pipeline.train_split(prepared, split, out_dir, **kwargs)
    click.echo((Path(out_dir) / "report.txt").read_text())
    click.echo(f"run folder: {out_dir} (best epoch {metrics['best_epoch']} of {metrics['epochs_run']})")


def _check_split_options(folds: int, only_fold: int | None, init_from: str | None, init_member: int,
                         device: str) -> None:
    """``train``'s option combinations that are wrong whatever the data holds."""
    if only_fold is not None and not folds:
        raise _fail("--only-fold needs --folds", EXIT_USAGE)
    if folds == 1:
        raise _fail("--folds must be 0 (one split) or at least 2", EXIT_USAGE)
    if folds and only_fold is not None and only_fold >= folds:
        raise _fail(f"--only-fold {only_fold} is not below --folds {folds}", EXIT_USAGE)
    if init_member and not init_from:
        raise _fail("--init-member needs --init-from", EXIT_USAGE)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise _fail("--device cuda given but no CUDA device is available", EXIT_USAGE)


def _check_refit_options(refit_from: str | None, hold_out: bool, teachers: Sequence[str], init_from: str | None) -> None:
    if hold_out and not refit_from:
        raise _fail("--refit-hold-out needs --refit-from", EXIT_USAGE)
    if refit_from and (teachers or init_from):
        raise _fail("--refit-from replays a plain run; it does not combine with --teacher or --init-from", EXIT_USAGE)


def _distill_settings(train_config, teachers: Sequence[str], distill: float | None):
    """``train_config`` with the distillation weight that ``--teacher`` / ``--distill`` ask for."""
    from ser_edge.train.distill import DEFAULT_DISTILL_WEIGHT

    if teachers and train_config.distill_weight == 0:
        if distill is not None:
            raise _fail("--teacher needs a --distill weight above 0", EXIT_USAGE)
        train_config = dataclasses.replace(train_config, distill_weight=DEFAULT_DISTILL_WEIGHT)
    if train_config.distill_weight > 0 and not teachers:
        raise _fail("--distill needs the teachers' run folders (--teacher)", EXIT_USAGE)
    return train_config


@contextlib.contextmanager
def _training_errors(out_dir: str) -> Iterator[None]:
    """Typed errors as one line; Ctrl-C as a one-line note on resuming, not click's "Aborted!"."""
    try:
        yield
    except SerEdgeError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail(f"{out_dir}: interrupted; the checkpoint keeps every finished epoch, and the same command "
                    "resumes from it", EXIT_INTERRUPTED) from None


def _parse_actors(text: str | None) -> list[int] | None:
    """``--actors 1,2,3`` as sorted actor numbers (None: all)."""
    if not text:
        return None
    try:
        return sorted({int(a) for a in text.split(",")})
    except ValueError:
        raise _fail(f"--actors must be comma-separated actor numbers, got {text!r}", EXIT_USAGE) from None


def _run_config(run_dir: str) -> dict:
    """A run folder's ``config.json``; a folder without one is a usage error naming it."""
    config = Path(run_dir) / "config.json"
    if not config.is_file():
        raise _fail(f"{run_dir}: not a run folder (no config.json)", EXIT_USAGE)
    return json.loads(config.read_text())


def _run_data_dir(run_dir: str | None, data_dir: str | None) -> str:
    if data_dir:
        return data_dir
    if run_dir:
        root = _run_config(run_dir).get("data_root")
        if root:
            return root
    raise _fail("give the data folder (or CSV manifest) with --data", EXIT_USAGE)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Evaluate this ONNX model (through the edge runtime) instead of a run.")
@click.option("--data", "data_dir", type=click.Path(), help="Data folder or CSV manifest (default: the run's).")
@click.option("--actors", help="Comma-separated actors (default: the run's test actors; all for --model).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the metrics as JSON here.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=".cache/ser-edge", show_default=True)
@click.option("--snr", help="With --model: also accuracy under white and babble noise at these SNRs (dB), e.g. 20,10,5,0.")
@click.option("--bandwidth", default="16000,8000", show_default=True, help="With --snr: band-limited input rates to test.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="With --snr: write the robustness plot (PNG) here.")
@click.option("--codecs", default="", help="With --snr: also through these lossy codecs, e.g. opus-32k,opus-16k,mp3-96k,mp3-32k.")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False),
              help="Your own labelled clips instead of RAVDESS: a CSV with columns path,label[,speaker] "
                   "(paths relative to the CSV). Scores --model, or the shipped model; needs no train extra.")
def evaluate(run_dir, model_path, data_dir, actors, threads, json_out, cache_dir, snr, bandwidth, plot_path, codecs,
             manifest_path) -> None:
    """Classification report on held-out actors, for a run or an ONNX model (or on your own clips: --manifest)."""
    _check_output(json_out, "--json")
    _check_output(plot_path, "--plot")
    if manifest_path:
        _evaluate_manifest(run_dir, model_path, manifest_path, threads, json_out,
                           {"--data": data_dir, "--actors": actors, "--snr": snr, "--codecs": codecs})
        return
    _train_modules()
    from ser_edge.train.evaluate import evaluate_onnx, evaluate_run

    if bool(run_dir) == bool(model_path):
        raise _fail("give either RUN_DIR or --model", EXIT_USAGE)
    if snr and not model_path:
        raise _fail("--snr needs --model (robustness is measured through the edge runtime)", EXIT_USAGE)
    if codecs and not snr:
        raise _fail("--codecs is part of the robustness suite: give --snr too", EXIT_USAGE)
    suite = _robustness_suite(snr, bandwidth, codecs) if snr else None
    chosen = _parse_actors(actors)
    if chosen is None and run_dir:
        chosen = _run_config(run_dir)["split"]["test"]
    data = _run_data_dir(run_dir, data_dir)
    try:
        if model_path:
            result = evaluate_onnx(model_path, data, chosen, threads=threads)
        else:
            result = evaluate_run(run_dir, data, chosen, cache_dir=cache_dir)
    except SerEdgeError as exc:
        raise _fail(str(exc), EXIT_USAGE if isinstance(exc, ModelError) else EXIT_INPUT_FAILED) from None
    _print_evaluation(result)
    summary = result.summary
    if suite:
        summary["robustness"], codec_kbps = _robustness(model_path, data, chosen, threads, *suite, plot_path)
        if codec_kbps:
            summary["codec_kbps"] = codec_kbps
    if json_out:
        _write_json(json_out, summary)


def _print_evaluation(result) -> None:
    """An evaluation's skipped clips (stderr), then its report."""
    for message in result.skipped:
        click.echo(f"skipped: {message}", err=True)
    click.echo(result.report(), nl=False)


def _evaluate_manifest(run_dir, model_path, manifest_path, threads, json_out, ravdess_only: dict[str, str | None]) -> None:
    """``evaluate --manifest``: an ONNX model (default: the shipped one) on the clips a CSV labels."""
    from ser_edge.train.evaluate import evaluate_manifest  # NumPy only: works on the edge-only install

    given = [option for option, value in ravdess_only.items() if value]
    if run_dir or given:
        raise _fail(f"--manifest scores an ONNX model (--model) on the CSV's clips; it takes no "
                    f"{'RUN_DIR' if run_dir else ', '.join(given)}", EXIT_USAGE)
    try:
        result = evaluate_manifest(model_path, manifest_path, threads=threads)
    except SerEdgeError as exc:
        raise _fail(str(exc), EXIT_USAGE if isinstance(exc, ModelError) else EXIT_INPUT_FAILED) from None
    _print_evaluation(result)
    if json_out:
        _write_json(json_out, result.summary)
    if result.skipped:
        raise click.exceptions.Exit(EXIT_INPUT_FAILED)


def _robustness_suite(snr: str, bandwidth: str, codecs: str) -> tuple[list[float], list[int], list[str]]:
    """``--snr``, ``--bandwidth`` and ``--codecs`` parsed and checked before anything is evaluated."""
    from ser_edge.train import robustness

    try:
        snrs = [float(x) for x in snr.split(",")]
        rates = [int(x) for x in bandwidth.split(",") if x]
    except ValueError:
        raise _fail(f"--snr and --bandwidth take comma-separated numbers, got {snr!r} and {bandwidth!r}", EXIT_USAGE) from None
    codec_names = [c for c in codecs.split(",") if c]
    try:
        robustness.check_codecs(codec_names)
    except ValueError as exc:
        raise _fail(f"--codecs: {exc}", EXIT_USAGE) from None
    return snrs, rates, codec_names


def _robustness(model_path, data, actors, threads, snrs, rates, codecs, plot_path):
    """Accuracy per condition, and the bitrate measured for each codec condition."""
    from ser_edge.train import robustness
    from ser_edge.train.data import scan_dataset
    from ser_edge.train.evaluate import evaluate_conditions

    # Babble comes from clips of actors outside the evaluated set (other speakers).
    evaluated = set(actors or [])
    pool = [c.path for c in scan_dataset(data).clips if c.actor not in evaluated] if evaluated else []
    chosen = robustness.conditions(snrs, rates, pool, codecs=codecs)
    conditions = {c.name: c.transform for c in chosen}
    evaluations = evaluate_conditions(model_path, data, actors, conditions, threads=threads)
    results = {name: evaluation.summary["accuracy"] for name, evaluation in evaluations.items()}
    kbps = {c.name: round(c.transform.kbps, 1) for c in chosen if isinstance(c.transform, robustness.CodecTransform)}
    click.echo(f"\n{'condition':<24} accuracy")
    for name, accuracy in results.items():
        measured = f"  ({kbps[name]:.1f} kbps measured)" if name in kbps else ""
        click.echo(f"{name:<24} {accuracy:.3f}{measured}")
    if plot_path:
        Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        robustness.plot(results, snrs, plot_path)
    return results, kbps


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="Output .onnx path.")
@click.option("--data", "data_dir", type=click.Path(), help="Data folder or CSV manifest for parity/calibration (default: the run's).")
@click.option("--quantize", type=click.Choice(["int8"]), help="Also write an int8 variant next to the fp32 model.")
@click.option("--no-calibrate", is_flag=True, help="Skip temperature scaling on the validation actors.")
@click.option("--weights", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="float16: round the weights to float16 and store them so (half the file; computed in float32).")
@click.option("--no-fold", is_flag=True,
              help="Keep every transformer branch in the graph, even one whose output is constant (see export/fold.py).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=".cache/ser-edge", show_default=True)
def export(run_dirs, out_path, data_dir, quantize, no_calibrate, weights, no_fold, cache_dir) -> None:
    """Export a run to one ONNX file (scaler and temperature folded in) and prove parity.

    Several RUN_DIRS (one recipe and actor split, different seeds) export as one ensemble
    graph that averages the members' probabilities.
    """
    _train_modules()
    from ser_edge.export.exporter import export_run
    from ser_edge.export.fold import FOLD_MAX_LOGIT_DEVIATION

    for run_dir in run_dirs:  # as evaluate says it, before anything is loaded
        _run_config(run_dir)
    _check_output(out_path, "--out")
    _check_output(cache_dir, "--cache", folder=True)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ser_edge").setLevel(logging.INFO)
    try:
        report = export_run(run_dirs, out_path, data_dir=_run_data_dir(run_dirs[0], data_dir), cache_dir=cache_dir,
                            calibrate=not no_calibrate, quantize=quantize, weights=weights, fold=not no_fold)
    except SerEdgeError as exc:
        raise _fail(str(exc)) from None
    summary = report.to_dict()
    _write_json(str(Path(out_path).with_suffix(".export.json")), summary)
    parity = report.parity
    click.echo(f"wrote {out_path}: parity max |diff| {parity.max_abs_diff:.1e} over {parity.n} test-actor windows "
               f"(batches {list(parity.batches)}; onnx.reference {parity.reference_max_abs_diff:.1e}), argmax equal")
    if report.branch_fold is not None:
        folded = [v for v in report.branch_fold if v["folded"]]
        worst = max(v["max_logit_deviation"] for v in report.branch_fold)
        click.echo(f"transformer branch folded into the classifier bias in {len(folded)} of {len(report.branch_fold)} "
                   f"member(s) (largest logit change {worst:.1e} over {report.branch_fold[0]['probe_windows']} "
                   f"training windows; a member above {FOLD_MAX_LOGIT_DEVIATION:.0e} keeps its branch)")
    click.echo(f"temperature {report.temperature:.3f}; ECE " + ", ".join(f"{k} {v:.3f}" for k, v in report.ece.items()))
    tm = report.test_metrics
    click.echo(f"test actors: accuracy {tm['accuracy']:.3f}, macro-F1 {tm['macro_f1']:.3f}, UAR {tm['uar']:.3f} ({tm['n']} clips)")
    if report.int8:
        chosen = report.int8["candidates"][report.int8["chosen"]]
        verdict = ("passes the 1-point bar" if report.int8["passes_bar"] else "does NOT pass the 1-point bar") + (
            f"; {chosen['latency_ms']:.2f} ms vs fp32 {report.int8['fp32_latency_ms']:.2f} ms per window")
        click.echo(f"int8 ({report.int8['chosen']}, chosen on validation actors and speed): {report.int8['path']}, "
                   f"test accuracy change {chosen['test_delta_points']:+.1f} points, {verdict}")


@main.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False, exists=True), help="fp32 ONNX model (default: the shipped one).")
@click.option("--int8-model", type=click.Path(dir_okay=False, exists=True), help="Also benchmark this int8 model.")
@click.option("--repeats", type=click.IntRange(min=1), default=200, show_default=True, help="Timed repetitions per measurement.")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch eager reference.")
@click.option("--targets", type=click.Path(dir_okay=False, exists=True), help="targets.json to report against.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the full results as JSON here.")
def bench(model_path, int8_model, repeats, no_torch, targets, json_out) -> None:
    """Latency per stage, batch/thread scaling, cold start, memory and install size."""
    from ser_edge.bench import BenchConfig, markdown, run

    _check_output(json_out, "--json")
    try:
        target_limits = json.loads(Path(targets).read_text()) if targets else None
    except (OSError, ValueError) as exc:  # read before the minutes of measuring, not after
        raise _fail(f"--targets {targets}: not a readable JSON file ({exc})", EXIT_USAGE) from None
    config = BenchConfig(model=model_path, int8_model=int8_model, repeats=repeats, warmup=max(1, repeats // 10),
                         torch_reference=not no_torch)
    try:
        results = run(config)
    except SerEdgeError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    if json_out:
        _write_json(json_out, results)
    click.echo(markdown(results, target_limits), nl=False)


if __name__ == "__main__":
    main()
