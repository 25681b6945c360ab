"""Latency A/B of the log-mel front-end of two checkouts, alternating call by call.

usage:
    python tools/logmel_ab.py OLD_CHECKOUT NEW_CHECKOUT [--pairs 3000]

Each checkout's ``ser_edge/edge_runtime/features.py`` is loaded as its own module in this
one process, and both compute the log-mel of the same 3 s random signal in turns (which
one goes first alternates: ``tools/onnx_ab.py``'s loop and report), so a drifting VM hits
both alike. Also prints the largest difference between their outputs, in dB. BLAS threads
are numpy's default unless ``OPENBLAS_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys
from pathlib import Path

import numpy as np

FEATURES = Path("ser_edge") / "edge_runtime" / "features.py"
SIGNAL_SEED = 0
SIGNAL_RMS = 0.1


def load_front_end(checkout: Path, name: str):
    """The ``features`` module of ``checkout``, imported under ``name``."""
    spec = importlib.util.spec_from_file_location(name, checkout / FEATURES)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="checkout A (e.g. the previous release)")
    parser.add_argument("b", type=Path, help="checkout B")
    parser.add_argument("--pairs", type=int, default=3000)
    args = parser.parse_args(argv)
    for checkout in (args.a, args.b):
        if not (checkout / FEATURES).is_file():
            print(f"error: {checkout}: no {FEATURES} there", file=sys.stderr)
            return 1
    if args.pairs < 1:
        print("error: --pairs must be at least 1", file=sys.stderr)
        return 2
    a, b = (load_front_end(checkout, f"logmel_ab_{k}") for k, checkout in enumerate((args.a, args.b)))
    config = b.FeatureConfig()
    x = (np.random.default_rng(SIGNAL_SEED).standard_normal(config.n_samples) * SIGNAL_RMS).astype(np.float32)
    print(f"largest |B - A|: {float(np.abs(b.log_mel(x) - a.log_mel(x)).max()):.2e} dB")
    ab = runpy.run_path(str(Path(__file__).with_name("onnx_ab.py")))
    ab["report"](str(args.a), str(args.b), *ab["alternate"]([lambda: a.log_mel(x), lambda: b.log_mel(x)], args.pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
