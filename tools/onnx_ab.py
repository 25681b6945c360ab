"""Inference-only latency A/B of two ONNX files, alternating call by call.

usage:
    python tools/onnx_ab.py A.onnx B.onnx [--pairs 3000] [--threads 1]

On a shared VM whose speed drifts by more than the difference looked for, two separate
benchmark runs cannot tell two graphs apart. Here the two sessions take turns on one
random 3 s log-mel input (which one goes first alternates), so any drift hits both alike,
and the paired differences are reported: each file's median and 10th percentile, the
median of (B - A) over the pairs, and the share of pairs in which B was faster. Both
sessions get the runtime's own SessionOptions (``session.session_options``), so the A/B
measures what ``EmotionClassifier`` runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

WARMUP_RUNS = 50
MS = 1e3
INPUT_SEED = 0


def paired_times(a: Path, b: Path, pairs: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds per call of ``a`` and of ``b``, ``pairs`` calls each, in alternation."""
    import onnxruntime as ort

    from ser_edge.edge_runtime.features import FeatureConfig
    from ser_edge.edge_runtime.session import INPUT_NAME, session_options

    options = session_options(threads)  # what EmotionClassifier runs with
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (a, b)]
    config = FeatureConfig()
    x = np.random.default_rng(INPUT_SEED).uniform(-config.top_db, 0, (1, 1, config.n_mels, config.n_frames))
    feed = {INPUT_NAME: x.astype(np.float32)}
    return alternate([lambda s=s: s.run(None, feed) for s in sessions], pairs)


def alternate(calls, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds per call of ``calls[0]`` and ``calls[1]``, after ``WARMUP_RUNS`` each,
    ``pairs`` calls each, taking turns (which one goes first alternates)."""
    for call in calls:
        for _ in range(WARMUP_RUNS):
            call()
    times = np.empty((2, pairs))
    for i in range(pairs):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            calls[k]()
            times[k, i] = (time.perf_counter() - start) * MS
    return times[0], times[1]


def report(a_label: str, b_label: str, a: np.ndarray, b: np.ndarray) -> None:
    """Each side's median and 10th percentile, and the paired differences."""
    for name, label, t in (("A", a_label, a), ("B", b_label, b)):
        print(f"{name} {label}: p50 {np.median(t):.3f} ms, p10 {np.percentile(t, 10):.3f} ms")
    print(f"paired over {len(a)}: median B - A {np.median(b - a):+.3f} ms; B faster in {np.mean(b < a):.0%} of pairs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for path in (args.a, args.b):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 1
    if args.pairs < 1 or args.threads < 1:
        print("error: --pairs and --threads must be at least 1", file=sys.stderr)
        return 2
    report(str(args.a), str(args.b), *paired_times(args.a, args.b, args.pairs, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
