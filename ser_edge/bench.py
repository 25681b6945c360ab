"""Latency, footprint and scaling of the edge runtime, side by side with PyTorch eager.

Used by ``ser-edge bench`` and ``benchmarks/run.py``. Nothing here is a pass/fail test:
targets live in ``benchmarks/targets.json`` and the report marks each as met or missed.
The PyTorch path is measured only when torch is installed (the train extra).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf

from ser_edge.edge_runtime import EmotionClassifier, load_audio, log_mel, split_windows, to_model_rate
from ser_edge.edge_runtime.session import default_model_path

PERCENTILES = (50, 95, 99)
INPUT_RATES = (48_000, 44_100, 16_000)
CLIP_LENGTHS_S = (3.0, 10.0, 60.0)
WARMUP_S = 2.0  # seconds of classification before the first timed stage


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    model: str | None = None
    int8_model: str | None = None
    repeats: int = 200
    warmup: int = 20
    threads: tuple[int, ...] = (1, 2)
    batches: tuple[int, ...] = (1, 8)
    directory_clips: int = 32
    torch_reference: bool = True
    subprocess_runs: int = 5


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    values = np.asarray(samples_s) * 1000.0
    out = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    out["mean"] = float(values.mean())
    return out


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return percentiles_ms(samples)


def speech_like(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Deterministic voiced-speech-like test signal (harmonics, vibrato, syllable envelope)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    f0 = 160 + 40 * np.sin(2 * np.pi * 2.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 25) if k * 260 < sample_rate / 2)
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    return (0.2 * envelope * harmonics + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def write_clip(folder: Path, seconds: float, sample_rate: int, name: str | None = None) -> Path:
    path = folder / (name or f"clip_{seconds:g}s_{sample_rate}.wav")
    sf.write(path, speech_like(seconds, sample_rate), sample_rate, subtype="PCM_16")
    return path


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "platform": platform.platform(),
    }


# -- per-stage latency -------------------------------------------------------------------


def stage_latency(clf: EmotionClassifier, folder: Path, cfg: BenchConfig) -> dict[str, Any]:
    """decode, resample (per input rate), log-mel, inference and total for one 3 s clip."""
    fc = clf.feature_config
    out: dict[str, Any] = {}
    warm = write_clip(folder, fc.clip_s, fc.sample_rate, name="warmup.wav")
    deadline = time.perf_counter() + WARMUP_S  # caches, allocator and CPU clocks settle first
    while time.perf_counter() < deadline:
        clf.predict_file(warm)
    for rate in INPUT_RATES:
        path = write_clip(folder, fc.clip_s, rate)
        audio = load_audio(path)
        resampled = to_model_rate(audio.samples, audio.sample_rate, fc)
        windows, _ = split_windows(resampled, fc)
        features = log_mel(windows, fc)
        out[str(rate)] = {
            "decode": timed(lambda: load_audio(path), cfg.repeats, cfg.warmup),
            "resample": timed(lambda: to_model_rate(audio.samples, audio.sample_rate, fc), cfg.repeats, cfg.warmup),
            "log_mel": timed(lambda: log_mel(split_windows(resampled, fc)[0], fc), cfg.repeats, cfg.warmup),
            "inference": timed(lambda: clf.predict_features(features), cfg.repeats, cfg.warmup),
            "total": timed(lambda: clf.predict_file(path), cfg.repeats, cfg.warmup),
        }
    return out


def batch_latency(clf: EmotionClassifier, batch: int, cfg: BenchConfig) -> dict[str, float]:
    fc = clf.feature_config
    features = np.stack([log_mel(speech_like(fc.clip_s, fc.sample_rate, seed=i), fc) for i in range(batch)])
    result = timed(lambda: clf.predict_features(features), max(20, cfg.repeats // batch), cfg.warmup // 2 + 1)
    result["per_clip_p50"] = result["p50"] / batch
    return result


def length_scaling(clf: EmotionClassifier, folder: Path, cfg: BenchConfig) -> dict[str, Any]:
    out = {}
    for seconds in CLIP_LENGTHS_S:
        path = write_clip(folder, seconds, 48_000)
        repeats = max(5, int(cfg.repeats * 3 / seconds / 2))
        stats = timed(lambda: clf.predict_file(path), repeats, 2)
        stats["windows"] = len(clf.predict_file(path).windows)
        stats["real_time_factor"] = stats["p50"] / 1000.0 / seconds
        out[f"{seconds:g}s"] = stats
    return out


def directory_throughput(clf: EmotionClassifier, folder: Path, cfg: BenchConfig) -> dict[str, float]:
    clips = folder / "dir"
    clips.mkdir(exist_ok=True)
    paths = [write_clip(clips, 3.0 + (i % 3) * 0.5, 48_000, name=f"c{i:03d}.wav") for i in range(cfg.directory_clips)]
    audio_s = sum(sf.info(p).duration for p in paths)
    clf.predict_file(paths[0])
    start = time.perf_counter()
    for path in paths:
        clf.predict_file(path)
    elapsed = time.perf_counter() - start
    return {"clips": len(paths), "clips_per_s": len(paths) / elapsed, "real_time_factor": elapsed / audio_s}


# -- PyTorch reference --------------------------------------------------------------------


def torch_reference(clf: EmotionClassifier, folder: Path, threads: int, cfg: BenchConfig) -> dict[str, Any] | None:
    """The training-side ParallelModel in eager mode (same architecture, same features).

    For an ensemble model (``members`` in its provenance) the reference runs as many
    ParallelModels and averages their probabilities, as the exported graph does. A member
    whose transformer branch the file has folded away (``branch_fold``) is folded here too
    (``export/fold.py``): both sides compute the same thing, and the speed-up is the runtime's.
    """
    try:
        import torch

        from ser_edge.export.fold import FoldedMember, folded_indices
        from ser_edge.models.parallel import ModelConfig
        from ser_edge.train.trainer import build_model
    except ImportError:
        return None
    fc = clf.feature_config
    provenance = json.loads(clf.metadata.get("provenance", "{}"))
    model_config = ModelConfig.from_dict(provenance.get("recipe", {}).get("model", {}))
    members = [build_model(model_config, fc, "cpu").eval().to(memory_format=torch.contiguous_format)
               for _ in range(max(1, len(provenance.get("members", []))))]
    for i in folded_indices(provenance):
        if i < len(members):
            members[i] = FoldedMember(members[i], torch.zeros(model_config.d_model))
    mean = torch.zeros(1, 1, fc.n_mels, fc.n_frames)
    scale = torch.ones_like(mean)
    path = write_clip(folder, fc.clip_s, 48_000)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)

    def infer(features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = (torch.from_numpy(features[:, None]) - mean) / scale
            return torch.stack([torch.softmax(model(x), dim=1) for model in members]).mean(dim=0).numpy()

    def total() -> np.ndarray:
        audio = load_audio(path)
        windows, _ = split_windows(to_model_rate(audio.samples, audio.sample_rate, fc), fc)
        return infer(log_mel(windows, fc)).mean(axis=0)

    features = log_mel(split_windows(load_audio(path).samples, fc)[0], fc)
    try:
        return {
            "inference": timed(lambda: infer(features), cfg.repeats // 2, cfg.warmup),
            "total": timed(total, cfg.repeats // 2, cfg.warmup),
            "torch": torch.__version__,
            "folded_members": sum(isinstance(m, FoldedMember) for m in members),
        }
    finally:
        torch.set_num_threads(previous)


# -- processes: cold start and memory -----------------------------------------------------

COLD_START = """
import time
t0 = time.perf_counter()
from ser_edge import EmotionClassifier
t1 = time.perf_counter()
clf = EmotionClassifier({model!r})
t2 = time.perf_counter()
clf.predict_file({clip!r})
t3 = time.perf_counter()
print(f"{{t1 - t0}} {{t2 - t1}} {{t3 - t2}}")
"""


def cold_start(model: str, clip: Path, runs: int) -> dict[str, float]:
    rows = []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", COLD_START.format(model=model, clip=str(clip))],
                             capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        rows.append([float(v) for v in out.stdout.split()] + [wall])
    med = np.median(np.array(rows), axis=0) * 1000
    return {"import_ms": med[0], "session_ms": med[1], "first_prediction_ms": med[2],
            "in_process_total_ms": med[0] + med[1] + med[2], "process_wall_ms": med[3]}


PEAK_RSS = """
import resource, sys
from ser_edge.cli import main
try:
    main(["classify", {clip!r}, "--model", {model!r}], standalone_mode=False)
finally:
    try:  # VmHWM: this process's own peak (ru_maxrss would include the forked parent's)
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
        print(int(hwm) / 1024, file=sys.stderr)
    except OSError:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)
"""


def peak_rss_mb(model: str, clip: Path) -> float:
    """Peak resident memory (MB) of a process running ``ser-edge classify`` on one clip."""
    out = subprocess.run([sys.executable, "-c", PEAK_RSS.format(clip=str(clip), model=model)],
                         capture_output=True, text=True, check=True)
    return float(out.stderr.strip().splitlines()[-1])


def _requirement_names(dist: metadata.Distribution, extras: set[str]) -> list[str]:
    names = []
    for req in dist.requires or []:
        name, _, marker = req.partition(";")
        if "extra ==" in marker and not any(f'extra == "{e}"' in marker for e in extras):
            continue
        for sep in "<>=!~[ (":
            name = name.split(sep)[0]
        names.append(name.strip())
    return names


def installed_size_mb(root: str, extras: set[str]) -> float | None:
    """Bytes on disk of ``root`` and its dependency closure (with ``extras``), in MB."""
    seen: set[str] = set()
    todo = [(root, extras)]
    total = 0
    while todo:
        name, wanted = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for file in dist.files or []:
            try:
                total += os.path.getsize(dist.locate_file(file))
            except OSError:
                pass
        expanded = set(wanted)
        for _ in range(3):  # extras that pull in other extras of the same package (dev -> train)
            for req in dist.requires or []:
                if req.lower().startswith(key) and "[" in req and any(f'extra == "{e}"' in req for e in expanded):
                    expanded |= set(req.split("[", 1)[1].split("]", 1)[0].split(","))
        todo += [(n, set()) for n in _requirement_names(dist, expanded) if n.lower().replace("_", "-") != key]
    return total / 1e6 if total else None


# -- the whole run ------------------------------------------------------------------------


def run(cfg: BenchConfig) -> dict[str, Any]:
    model = cfg.model or default_model_path()
    results: dict[str, Any] = {"machine": machine_info(), "model": os.path.basename(model), "config": dataclasses.asdict(cfg)}
    variants = {"fp32": model}
    if cfg.int8_model and os.path.isfile(cfg.int8_model):
        variants["int8"] = cfg.int8_model
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for variant, path in variants.items():
            for threads in cfg.threads:
                clf = EmotionClassifier(path, threads=threads)
                key = f"{variant}/threads={threads}"
                entry: dict[str, Any] = {"stages": stage_latency(clf, folder, cfg)}
                entry["batch"] = {str(b): batch_latency(clf, b, cfg) for b in cfg.batches}
                if variant == "fp32" and cfg.torch_reference:
                    entry["pytorch"] = torch_reference(clf, folder, threads, cfg)
                results[key] = entry
        clf = EmotionClassifier(model, threads=1)
        results["length_scaling"] = length_scaling(clf, folder, cfg)
        results["directory"] = directory_throughput(clf, folder, cfg)
        clip = write_clip(folder, 3.0, 48_000, name="cold.wav")
        results["cold_start"] = cold_start(model, clip, cfg.subprocess_runs)
        results["peak_rss_mb"] = peak_rss_mb(model, clip)
    results["installed_mb"] = {"edge": installed_size_mb("ser-edge", set()), "train": installed_size_mb("ser-edge", {"train"})}
    results["model_mb"] = {k: os.path.getsize(p) / 1e6 for k, p in variants.items()}
    return results


def markdown(results: dict[str, Any], targets: dict[str, float] | None = None) -> str:
    """The README table: per-stage p50/p95/p99 and the headline numbers vs targets."""
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, "
        f"onnxruntime {m['onnxruntime']}; model `{results['model']}`.",
        "",
        "| variant / threads | input | decode | resample | log-mel | inference | total p50 | p95 | p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in results.items():
        if not isinstance(entry, dict) or "stages" not in entry:
            continue
        for rate, st in entry["stages"].items():
            lines.append(
                f"| {key} | {int(rate) / 1000:g} kHz | {st['decode']['p50']:.2f} | {st['resample']['p50']:.2f} | "
                f"{st['log_mel']['p50']:.2f} | {st['inference']['p50']:.2f} | **{st['total']['p50']:.2f}** | "
                f"{st['total']['p95']:.2f} | {st['total']['p99']:.2f} |"
            )
    lines += ["", "All times in ms per 3 s clip (p50 unless stated), after warm-up.", ""]
    lines += ["| comparison | edge (ONNX) | PyTorch eager | speed-up |", "|---|---|---|---|"]
    for key, entry in results.items():
        if isinstance(entry, dict) and entry.get("pytorch"):
            edge, ref = entry["stages"]["48000"], entry["pytorch"]
            for part in ("inference", "total"):
                lines.append(f"| {key} {part} p50 | {edge[part]['p50']:.2f} ms | {ref[part]['p50']:.2f} ms | "
                             f"{ref[part]['p50'] / edge[part]['p50']:.1f}x |")
    lines += ["", "| batch (inference only) | p50 per batch | p50 per clip |", "|---|---|---|"]
    for key, entry in results.items():
        if isinstance(entry, dict) and "batch" in entry:
            for b, st in entry["batch"].items():
                lines.append(f"| {key}, batch {b} | {st['p50']:.2f} ms | {st['per_clip_p50']:.2f} ms |")
    lines += ["", "| clip length | windows | p50 | real-time factor |", "|---|---|---|---|"]
    for length, st in results["length_scaling"].items():
        lines.append(f"| {length} | {st['windows']} | {st['p50']:.1f} ms | {st['real_time_factor']:.4f} |")
    cold, d = results["cold_start"], results["directory"]
    inst = results["installed_mb"]
    lines += [
        "",
        f"- Directory of {d['clips']} clips: {d['clips_per_s']:.1f} clips/s, real-time factor {d['real_time_factor']:.4f} (1 thread).",
        f"- Cold start (fresh process, median of runs): import {cold['import_ms']:.0f} ms + session {cold['session_ms']:.0f} ms + "
        f"first prediction {cold['first_prediction_ms']:.0f} ms = **{cold['in_process_total_ms']:.0f} ms** "
        f"(whole process incl. interpreter start: {cold['process_wall_ms']:.0f} ms).",
        f"- Peak RSS of `ser-edge classify` on one clip: **{results['peak_rss_mb']:.0f} MB**.",
        f"- Installed size: edge-only {_mb(inst['edge'])}, with the train extra {_mb(inst['train'])}.",
        "- Model files: " + ", ".join(f"{k} {v:.2f} MB" for k, v in results["model_mb"].items()) + ".",
    ]
    if targets:
        lines += ["", "| target (benchmarks/targets.json) | limit | measured | met |", "|---|---|---|---|"]
        for name, (rule, limit, value) in evaluate_targets(results, targets).items():
            met = "n/a" if value is None else ("yes" if (value <= limit if rule == "max" else value >= limit) else "**NO**")
            shown = "n/a" if value is None else f"{value:.2f}"
            lines.append(f"| {name} | {rule} {limit:g} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def _mb(value: float | None) -> str:
    return f"{value:.0f} MB" if value is not None else "n/a"


def evaluate_targets(results: dict[str, Any], targets: dict[str, dict[str, float]]) -> dict[str, tuple[str, float, float | None]]:
    """``{name: (rule 'max'|'min', limit, measured)}`` for each target in targets.json."""
    one = results.get("fp32/threads=1", {})
    st = one.get("stages", {}).get("48000", {})
    ref = one.get("pytorch") or {}
    measured = {
        "total_p50_ms": st.get("total", {}).get("p50"),
        "log_mel_p50_ms": st.get("log_mel", {}).get("p50"),
        "speedup_vs_pytorch": (ref["total"]["p50"] / st["total"]["p50"]) if ref and st else None,
        "cold_start_ms": results["cold_start"]["in_process_total_ms"],
        "peak_rss_mb": results["peak_rss_mb"],
        "edge_install_mb": results["installed_mb"]["edge"],
    }
    out = {}
    for name, rule in targets.items():
        (kind, limit), = rule.items()
        out[name] = (kind, float(limit), measured.get(name))
    return out
