"""Rebuild the shipped default model from the data, in one command:

    python -m ser_edge.train.rebuild --data ../shared/data/ravdess-speech

train (the shipped recipe, one run per seed in ``SHIPPED_SEEDS``, all on the actor split
16/2/2 of ``--split-seed``; the runs train in parallel processes, one torch thread each)
-> export the runs as one ensemble graph (temperature on the validation actors, parity on
the test actors, int8 variant) -> evaluate through the edge runtime on the validation and
test actors (clean, noisy, band-limited) -> write the models and ``ser_edge_default.json``
(provenance: data hash, split, members, metrics, code version, command) into
``ser_edge/models/``. An interrupted run resumes from its checkpoints; finished member runs
are not retrained.

On an x86-64 CPU with AVX2 the whole rebuild runs with OpenBLAS's kernels pinned to the
shipped members' (``OPENBLAS_CORETYPE``, see ``SHIPPED_FRONT_END_BLAS``): other kernel sets
round the log-mel differently, and the rebuild would not be bit for bit. Set
``OPENBLAS_CORETYPE`` yourself to choose another.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_NAME = "ser_edge_default"
SNRS_DB = (20.0, 10.0, 5.0, 0.0)
BANDWIDTHS = (16_000, 8_000)
TRAIN_THREADS = 1  # torch threads per member run: results do not depend on the core count
POLL_S = 5.0  # how often the running member trainings are checked
BLAS_KERNEL_VARIABLE = "OPENBLAS_CORETYPE"  # read by OpenBLAS when numpy loads it
PINNABLE_MACHINES = ("x86_64", "amd64")  # platform.machine() of CPUs that have the AVX2 kernels

log = logging.getLogger("ser_edge.rebuild")


class RebuildError(RuntimeError):
    """A member's training failed."""


def member_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / f"seed_{seed}"


def blas_pin(environ: Mapping[str, str], *, machine: str, has_avx2: bool) -> str | None:
    """The OpenBLAS kernel set to rebuild with, or None to leave it as it is: the shipped
    members' on an x86-64 CPU with AVX2, unless ``OPENBLAS_CORETYPE`` is set already."""
    from ser_edge.train.recipes import SHIPPED_FRONT_END_BLAS

    if BLAS_KERNEL_VARIABLE in environ or machine.lower() not in PINNABLE_MACHINES or not has_avx2:
        return None
    return SHIPPED_FRONT_END_BLAS


def cpu_has_avx2() -> bool:
    """Whether this CPU runs AVX2 code (numpy's own dispatch table; False if it has none)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        return False
    return bool(__cpu_features__.get("AVX2"))


def train_members(args: argparse.Namespace, seeds: list[int], recipe: str) -> list[Path]:
    """Train one run per seed (``--jobs`` at a time); return the run folders."""
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pending = list(seeds)
    running: dict[int, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            command = [sys.executable, "-m", "ser_edge.cli", "train", args.data, "--out", str(member_dir(run_dir, seed)),
                       "--seed", str(seed), "--split-seed", str(args.split_seed), "--recipe", recipe,
                       "--threads", str(TRAIN_THREADS), "--cache", args.cache, "--quiet"]
            if args.epochs is not None:
                command += ["--epochs", str(args.epochs)]
            log.info("training seed %d: %s (log: %s)", seed, " ".join(command), run_dir / f"seed_{seed}.log")
            with open(run_dir / f"seed_{seed}.log", "a") as out:
                running[seed] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        seed, code = _wait_any(running)
        if code != 0:
            for other in running.values():
                other.terminate()
            raise RebuildError(f"training seed {seed} failed (exit {code}); see {run_dir / f'seed_{seed}.log'}")
    return [member_dir(run_dir, seed) for seed in seeds]


def _wait_any(running: dict[int, subprocess.Popen]) -> tuple[int, int]:
    """Block until one process ends; remove it; return (seed, exit code)."""
    while True:
        for seed, process in running.items():
            code = process.poll()
            if code is not None:
                del running[seed]
                return seed, code
        time.sleep(POLL_S)


def ship(args: argparse.Namespace, members: list[Path], out_dir: Path) -> dict[str, Any]:
    """Export, evaluate and copy into ``out_dir``; return the provenance record."""
    from ser_edge.export.exporter import export_run, member_summary
    from ser_edge.train import robustness
    from ser_edge.train.data import scan_dataset
    from ser_edge.train.evaluate import evaluate_conditions, evaluate_onnx

    staging = Path(args.run_dir) / "export"
    staging.mkdir(parents=True, exist_ok=True)
    fp32 = staging / f"{DEFAULT_NAME}.onnx"
    report = export_run(members, fp32, data_dir=args.data, cache_dir=args.cache, quantize="int8",
                        model_name="ser-edge-default", weights=args.weights)
    config = json.loads((members[0] / "config.json").read_text())
    split = config["split"]

    shipped = {"fp32": fp32}
    # int8 ships only if it keeps accuracy (test change under 1 point) and is faster.
    if report.int8 and report.int8["passes_bar"] and report.int8["faster_than_fp32"]:
        shipped["int8"] = Path(report.int8["path"])
    validation = evaluate_onnx(fp32, args.data, split["val"]).summary
    pool = [c.path for c in scan_dataset(args.data).clips if c.actor not in set(split["test"])]
    conditions = {c.name: c.transform for c in robustness.conditions(SNRS_DB, BANDWIDTHS, pool)}
    fp32_conditions = evaluate_conditions(fp32, args.data, split["test"], conditions)
    robust = {name: ev.summary["accuracy"] for name, ev in fp32_conditions.items()}
    test_evaluations = {"fp32": fp32_conditions["clean"]}  # the clean condition is the fp32 test report
    if "int8" in shipped:
        test_evaluations["int8"] = evaluate_onnx(shipped["int8"], args.data, split["test"])
    evaluations = {kind: {"summary": ev.summary, "report": ev.report()} for kind, ev in test_evaluations.items()}
    robustness.plot(robust, SNRS_DB, str(out_dir / f"{DEFAULT_NAME}.robustness.png"))

    for kind, path in shipped.items():
        target = out_dir / (f"{DEFAULT_NAME}.onnx" if kind == "fp32" else f"{DEFAULT_NAME}.int8.onnx")
        shutil.copyfile(path, target)
    if "int8" not in shipped:
        (out_dir / f"{DEFAULT_NAME}.int8.onnx").unlink(missing_ok=True)
    return {
        "code_version": config["code_version"],  # what trained the members
        "export_code_version": report.code_version,
        "torch_version": config["torch_version"],
        "data_hash": config["data_hash"],
        "front_end": config.get("front_end"),  # fingerprint of the features the members saw
        "front_end_blas": config.get("front_end_blas"),  # the BLAS kernels that computed them
        "split": split,
        "recipe": {k: config[k] for k in ("train", "model", "augment")},
        "members": [member_summary(run) for run in members],
        "validation_edge_runtime": {k: validation[k] for k in ("accuracy", "macro_f1", "uar", "actors")},
        "export": {k: v for k, v in report.to_dict().items() if k != "code_version"},  # top level has it
        "test_edge_runtime": evaluations,
        "robustness_test_accuracy": robust,
        "shipped": sorted(shipped),
    }


def main(argv: list[str] | None = None) -> int:
    from ser_edge.cli import EXIT_INTERRUPTED
    from ser_edge.edge_runtime.errors import SerEdgeError
    from ser_edge.export.exporter import WEIGHT_DTYPES
    from ser_edge.outputs import why_unwritable
    from ser_edge.train.recipes import RECIPES, SHIPPED_RECIPE, SHIPPED_SEEDS, SHIPPED_WEIGHTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="RAVDESS speech folder")
    parser.add_argument("--run-dir", default="runs/default", help="folder of the member runs (resumable)")
    parser.add_argument("--cache", default=".cache/ser-edge", help="feature cache")
    parser.add_argument("--out-dir", default=str(MODELS_DIR), help="where the shipped files go")
    parser.add_argument("--seeds", default=",".join(map(str, SHIPPED_SEEDS)),
                        help="comma-separated seeds, one ensemble member each (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the actor split (default: %(default)s)")
    parser.add_argument("--recipe", default=SHIPPED_RECIPE, choices=sorted(RECIPES), metavar="RECIPE",
                        help="training recipe, one of train/recipes.py's RECIPES (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                        help="member runs trained at once (default: %(default)s)")
    parser.add_argument("--epochs", type=int, help="epoch cap (default: the recipe's; only for quick checks)")
    parser.add_argument("--weights", choices=WEIGHT_DTYPES, default=SHIPPED_WEIGHTS,
                        help="how the graph stores its weights (default: %(default)s)")
    parser.add_argument("--skip-train", action="store_true", help="export the existing member runs")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if len(set(seeds)) != len(seeds) or args.jobs < 1:
        parser.error("--seeds must be distinct and --jobs at least 1")
    for option, folder in (("--run-dir", args.run_dir), ("--out-dir", args.out_dir), ("--cache", args.cache)):
        problem = why_unwritable(folder, folder=True)  # now, not after hours of training
        if problem:
            parser.error(f"{option} {folder}: {problem}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ser_edge").setLevel(logging.INFO)
    pin = blas_pin(os.environ, machine=platform.machine(), has_avx2=cpu_has_avx2())
    if pin:  # numpy has chosen its kernels already: the rebuild runs again, in a process that has the pin
        log.info("rebuilding with %s=%s, the shipped members' BLAS kernels", BLAS_KERNEL_VARIABLE, pin)
        command = [sys.executable, "-m", "ser_edge.train.rebuild", *(argv if argv is not None else sys.argv[1:])]
        try:
            return subprocess.run(command, env={**os.environ, BLAS_KERNEL_VARIABLE: pin}).returncode
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    if args.skip_train:
        members = [member_dir(Path(args.run_dir), seed) for seed in seeds]
    else:
        try:
            members = train_members(args, seeds, args.recipe)
        except RebuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        shipped = ship(args, members, out_dir)
    except SerEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    provenance = {"command": "python -m ser_edge.train.rebuild " + " ".join(argv if argv is not None else sys.argv[1:]),
                  **shipped}
    (out_dir / f"{DEFAULT_NAME}.json").write_text(json.dumps(provenance, indent=2))
    print(provenance["test_edge_runtime"]["fp32"]["report"])
    print(json.dumps(provenance["robustness_test_accuracy"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
