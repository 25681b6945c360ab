"""What would an ensemble of N members of a recipe cost at inference, before training it?

usage:
    python tools/member_latency.py fast-cmn-speed-wide-ema:2 fast-cmn-speed-wide-ema-light:3 \
        fast-cmn-speed-wide-ema-long-lr2:3:folded [--rounds 3] [--repeats 400]

Each ``RECIPE:N`` becomes one graph the way the exporter writes the shipped model
(``ExportWrapper`` around N randomly initialised ``ParallelModel``s of the recipe, weights
rounded to and stored as float16), with a random scaler: the latency of a graph does not
depend on what its weights learned. ``RECIPE:N:folded`` writes each member as the exporter
writes one whose transformer branch is dead (``export/fold.py``: the CNN branch and the
classifier only), the form the shipped model has had since 0.10.0. Each graph is timed with ``exporter.latency_ms`` (one
onnxruntime thread, batch 1, the median of ``--repeats`` runs), the graphs in turn, for
``--rounds`` rounds, so that a slow spell of the machine hits all of them. Prints one line
per graph: its file size and its median latency in each round.

Run it on an otherwise idle machine; it needs the dev extra (torch, onnx).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

SPEC_SEPARATOR = ":"
FOLDED = "folded"
MB = 1e6
PARAMETER_JITTER = 1e-2
PROBE_TEMPERATURE = 1.5  # not 1: a temperature of 1 is folded away, a calibrated one is not


def parse_spec(spec: str) -> tuple[str, int, bool]:
    """``"RECIPE:N"`` or ``"RECIPE:N:folded"`` -> (recipe, N, folded); the recipe must be one of ``RECIPES``."""
    from ser_edge.train.recipes import RECIPES

    name, _, rest = spec.partition(SPEC_SEPARATOR)
    count, has_suffix, suffix = rest.partition(SPEC_SEPARATOR)
    if name not in RECIPES or not count.isdigit() or int(count) < 1 or (has_suffix and suffix != FOLDED):
        raise argparse.ArgumentTypeError(f"{spec!r}: expected RECIPE:N or RECIPE:N:{FOLDED} with RECIPE one of "
                                         f"{sorted(RECIPES)} and N >= 1")
    return name, int(count), suffix == FOLDED


def build_graph(recipe: str, n_members: int, path: Path, feature_config, *, folded: bool = False) -> int:
    """Write the float16 ensemble graph of ``n_members`` untrained members to ``path``; its size in bytes.
    ``folded``: each member without its transformer branch, as ``export/fold.py`` writes a dead one."""
    import torch

    from ser_edge.export.exporter import ExportWrapper, export_onnx, round_to_float16, store_float16
    from ser_edge.export.fold import FoldedMember
    from ser_edge.train.recipes import RECIPES
    from ser_edge.train.trainer import build_model

    members = []
    for seed in range(n_members):
        torch.manual_seed(seed)
        model = build_model(RECIPES[recipe].model, feature_config, "cpu").eval()
        with torch.no_grad():  # the transformer's layers start as copies of one layer: make them differ, as trained ones do
            for parameter in model.parameters():
                parameter.add_(PARAMETER_JITTER * torch.randn_like(parameter))
        model = round_to_float16(model)
        members.append(FoldedMember(model, torch.zeros(model.config.d_model)) if folded else model)
    shape = (feature_config.n_mels, feature_config.n_frames)
    rng = np.random.default_rng(0)
    mean, scale = rng.normal(size=shape).astype(np.float32), rng.uniform(1, 2, size=shape).astype(np.float32)
    export_onnx(ExportWrapper(members, mean, scale, temperature=PROBE_TEMPERATURE), path, feature_config, {})
    store_float16(path)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    from ser_edge.edge_runtime.features import FeatureConfig
    from ser_edge.export.exporter import latency_ms

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="+", type=parse_spec, metavar="RECIPE:N")
    parser.add_argument("--rounds", type=int, default=3, help="times each graph is timed, in turn")
    parser.add_argument("--repeats", type=int, default=400, help="runs per timing (the median is kept)")
    args = parser.parse_args(argv)
    config = FeatureConfig()
    features = np.random.default_rng(0).normal(size=(1, config.n_mels, config.n_frames)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {}
        for recipe, n, folded in args.specs:
            name = f"{recipe} x{n}" + (f" {FOLDED}" if folded else "")
            path = Path(tmp) / f"{name.replace(' ', '-')}.onnx"
            graphs[name] = (path, build_graph(recipe, n, path, config, folded=folded))
        times = {name: [] for name in graphs}
        for _ in range(args.rounds):
            for name, (path, _) in graphs.items():
                times[name].append(latency_ms(path, features, repeats=args.repeats))
    for name, (_, size) in graphs.items():
        print(f"{name}: {size / MB:.2f} MB, p50 {' / '.join(f'{t:.2f}' for t in times[name])} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
