"""Rebuild the shipped default model from the data, in one command:

    python -m ser_edge.train.rebuild --data ../shared/data/ravdess-speech

train (the shipped recipe, seed 0, actor split 16/2/2) -> export (temperature on the
validation actors, parity on the test actors, int8 variant) -> evaluate through the edge
runtime on the test actors (clean, noisy, band-limited) -> write the models and
``ser_edge_default.json`` (provenance: data hash, split, metrics, code version, command)
into ``ser_edge/models/``. An interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_NAME = "ser_edge_default"
SNRS_DB = (20.0, 10.0, 5.0, 0.0)
BANDWIDTHS = (16_000, 8_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="RAVDESS speech folder")
    parser.add_argument("--run-dir", default="runs/default", help="training run folder (resumable)")
    parser.add_argument("--cache", default=".cache/ser-edge", help="feature cache")
    parser.add_argument("--out-dir", default=str(MODELS_DIR), help="where the shipped files go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default=None, help="training recipe (default: the shipped one, see pipeline.SHIPPED_RECIPE)")
    parser.add_argument("--skip-train", action="store_true", help="export an existing run folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ser_edge").setLevel(logging.INFO)

    from ser_edge.cli import main as cli

    from ser_edge.train.pipeline import SHIPPED_RECIPE

    if not args.skip_train:
        cli(["train", args.data, "--out", args.run_dir, "--seed", str(args.seed), "--cache", args.cache, "--quiet",
             "--recipe", args.recipe or SHIPPED_RECIPE], standalone_mode=False)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(args.run_dir) / "export"
    staging.mkdir(exist_ok=True)
    fp32 = staging / f"{DEFAULT_NAME}.onnx"

    from ser_edge.export.exporter import export_run
    from ser_edge.train import robustness
    from ser_edge.train.data import scan_dataset
    from ser_edge.train.evaluate import evaluate_conditions, evaluate_onnx

    report = export_run(args.run_dir, fp32, data_dir=args.data, cache_dir=args.cache, quantize="int8",
                        model_name="ser-edge-default")
    config = json.loads((Path(args.run_dir) / "config.json").read_text())
    test_actors = config["split"]["test"]

    shipped = {"fp32": fp32}
    # int8 ships only if it keeps accuracy (test change under 1 point) and is faster.
    if report.int8 and report.int8["passes_bar"] and report.int8["faster_than_fp32"]:
        shipped["int8"] = Path(report.int8["path"])
    evaluations = {}
    for kind, path in shipped.items():
        result = evaluate_onnx(path, args.data, test_actors)
        evaluations[kind] = {"summary": result.summary, "report": result.report()}

    pool = [c.path for c in scan_dataset(args.data).clips if c.actor not in set(test_actors)]
    conditions = {c.name: c.transform for c in robustness.conditions(SNRS_DB, BANDWIDTHS, pool)}
    robust = {name: ev.summary["accuracy"]
              for name, ev in evaluate_conditions(fp32, args.data, test_actors, conditions).items()}
    robustness.plot(robust, SNRS_DB, str(out_dir / f"{DEFAULT_NAME}.robustness.png"))

    for kind, path in shipped.items():
        target = out_dir / (f"{DEFAULT_NAME}.onnx" if kind == "fp32" else f"{DEFAULT_NAME}.int8.onnx")
        shutil.copyfile(path, target)
    if "int8" not in shipped:
        (out_dir / f"{DEFAULT_NAME}.int8.onnx").unlink(missing_ok=True)
    metrics = json.loads((Path(args.run_dir) / "metrics.json").read_text())
    provenance = {
        "command": "python -m ser_edge.train.rebuild " + " ".join(argv if argv is not None else sys.argv[1:]),
        "code_version": config["code_version"],
        "torch_version": config["torch_version"],
        "data_hash": config["data_hash"],
        "split": config["split"],
        "recipe": {k: config[k] for k in ("train", "model", "augment")},
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "validation": {k: metrics["val"][k] for k in ("accuracy", "macro_f1", "uar", "actors")},
        "export": report.to_dict(),
        "test_edge_runtime": evaluations,
        "robustness_test_accuracy": robust,
        "shipped": sorted(shipped),
    }
    (out_dir / f"{DEFAULT_NAME}.json").write_text(json.dumps(provenance, indent=2))
    print(evaluations["fp32"]["report"])
    print(json.dumps(robust, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
