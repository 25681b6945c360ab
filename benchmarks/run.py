"""Run the benchmarks and write benchmarks/results/latest.{json,md}.

    python benchmarks/run.py                 # full run (a few minutes on 2 cores)
    python benchmarks/run.py --quick         # smoke run, numbers meaningless

Targets (benchmarks/targets.json) are reported as met/missed, never asserted: run this on
an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ser_edge.bench import BenchConfig, markdown, run

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="fp32 ONNX model (default: the shipped one)")
    parser.add_argument("--int8-model", help="int8 ONNX model (default: the shipped one, if any)")
    parser.add_argument("--threads", default="1,2", help="onnxruntime/torch thread counts to measure")
    parser.add_argument("--repeats", type=int, default=200, help="timed repetitions per measurement")
    parser.add_argument("--quick", action="store_true", help="few repetitions: checks the code, not the numbers")
    parser.add_argument("--out", default=str(HERE / "results" / "latest"), help="output path without extension")
    args = parser.parse_args()
    threads = tuple(int(t) for t in args.threads.split(","))
    config = BenchConfig(model=args.model, int8_model=args.int8_model or _shipped_int8(), threads=threads,
                         repeats=args.repeats, warmup=max(1, args.repeats // 10))
    if args.quick:
        config = dataclasses.replace(config, repeats=5, warmup=1, directory_clips=3, subprocess_runs=1)
    results = run(config)
    targets = json.loads((HERE / "targets.json").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    table = markdown(results, targets)
    out.with_suffix(".md").write_text(table)
    print(table)


def _shipped_int8() -> str | None:
    from ser_edge.edge_runtime.session import default_model_path

    path = Path(default_model_path()).with_name("ser_edge_default.int8.onnx")
    return str(path) if path.is_file() else None


if __name__ == "__main__":
    main()
