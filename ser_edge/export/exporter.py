"""Training run -> one self-contained ONNX file the edge runtime loads.

The graph: ``log_mel (B, 1, n_mels, n_frames)`` -> ``(x - mean) / scale`` (the training
scaler, as constants) -> ParallelModel logits -> ``/ temperature`` -> softmax ->
``probabilities (B, n_labels)``. Output is probabilities (not logits), in label order.

An ensemble is the same graph over several runs of one recipe and one actor split that
differ only in their seed: one shared scaler (the split's, identical across the runs), each
member's softmax at one shared temperature, and the mean of the members' probabilities.

Exported with the ``torch.export``-based exporter (``dynamo=True``; the TorchScript one is
deprecated) at opset 18, the exporter's native opset: onnxruntime >= 1.14 and
``onnx.reference`` run it. The batch axis is a symbolic dimension, verified with batches
of 1, 3 and 8 (the transformer branch is where a traced export would bake the batch in).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ser_edge.edge_runtime.errors import SerEdgeError
from ser_edge.edge_runtime.features import FeatureConfig
from ser_edge.edge_runtime.session import INPUT_NAME, OUTPUT_NAME
from ser_edge.export.fold import fold_members, probe_rows
from ser_edge.export.lean import lean_copy
from ser_edge.models.parallel import ParallelModel

log = logging.getLogger(__name__)

OPSET = 18
MAX_BATCH = 4096  # upper bound of the symbolic batch dimension
PARITY_ATOL = 1e-4  # max |p_torch - p_onnx| allowed at export
PARITY_BATCHES = (1, 3, 8)
INT8_VAL_BAR_POINTS = 1.0  # an int8 variant may lose at most this much accuracy
TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.25), np.log(8.0), 121))
# Weight storage. "float16" rounds every member's weights to float16 before anything is
# measured and stores them as float16 in the file, each behind a Cast to float32 that
# onnxruntime folds when the session loads: half the file, the same float32 arithmetic.
WEIGHT_DTYPES = ("float32", "float16")
FLOAT16_MIN_ELEMENTS = 256  # smaller tensors (biases, norms) stay float32: no size to gain


class ExportError(SerEdgeError):
    """The exported graph is wrong (parity, shapes, checker) or the run is unusable."""


class ExportWrapper(nn.Module):
    """Scaler + model(s) + temperature + softmax (+ mean over members), as one graph."""

    def __init__(
        self,
        models: nn.Module | Sequence[nn.Module],  # ParallelModel or fold.FoldedMember
        mean: np.ndarray,
        scale: np.ndarray,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        members = [models] if isinstance(models, nn.Module) else list(models)
        if not members:
            raise ValueError("ExportWrapper needs at least one model")
        self.models = nn.ModuleList(m.to(memory_format=torch.contiguous_format).eval() for m in members)
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32))[None, None])
        self.register_buffer("inv_scale", torch.from_numpy(1.0 / np.asarray(scale, np.float32))[None, None])
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def logits(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Every member's logits, ``(members, batch, n_labels)``."""
        x = (log_mel - self.mean) * self.inv_scale
        return torch.stack([model(x) for model in self.models])

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(log_mel) * self.inv_temperature, dim=2).mean(dim=0)


@dataclasses.dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float
    argmax_equal: bool
    n: int
    batches: tuple[int, ...]
    reference_max_abs_diff: float | None = None


def metadata_props(
    labels: Sequence[str],
    feature_config: FeatureConfig,
    *,
    model_name: str,
    model_version: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    props = {
        "labels": json.dumps(list(labels)),
        "feature_config": feature_config.to_json(),
        "model_name": model_name,
        "model_version": model_version,
        "export_date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "opset": str(OPSET),
        "input": f"{INPUT_NAME}: float32 (batch, 1, n_mels, n_frames) log-mel, unnormalised",
        "output": f"{OUTPUT_NAME}: float32 (batch, n_labels) softmax probabilities in label order",
    }
    for key, value in (extra or {}).items():
        props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def export_onnx(wrapper: ExportWrapper, path: str | os.PathLike, feature_config: FeatureConfig, props: Mapping[str, str]) -> None:
    """Trace ``wrapper`` to a single-file ONNX at ``path`` with a dynamic batch axis.

    What is traced is ``lean.lean_copy(wrapper)``: the same weights and arithmetic with the
    transformer layers written for a smaller graph; ``check_parity`` compares the file with
    ``wrapper`` itself."""
    import onnx

    dummy = torch.zeros(2, 1, feature_config.n_mels, feature_config.n_frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused eager kernel has no ONNX form
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                lean_copy(wrapper.eval()),
                (dummy,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load(str(path))
    # The exporter tags every node with its Python stack trace and module path: a fifth of
    # the file, and the exporting machine's paths. The shipped graph carries none of it.
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "ser-edge"
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    if any(p.name.endswith(".data") for p in path.parent.glob(path.name + "*") if p != path):
        raise ExportError("export wrote external data next to the model", path=str(path))


def round_to_float16(model: nn.Module) -> nn.Module:
    """Round ``model``'s floating-point weights and buffers to float16 values, in place.

    They stay float32 tensors: the model computes exactly as the float16-stored graph does.
    """
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(torch.float16).to(tensor.dtype))
    return model


def store_float16(path: str | os.PathLike) -> int:
    """Rewrite the ONNX at ``path`` with its float16-exact weights stored as float16.

    Only float32 initializers of at least ``FLOAT16_MIN_ELEMENTS`` whose every value is a
    float16 value are converted (lossless); each is read through a Cast to float32, so the
    graph computes the same numbers. Returns the number of converted initializers.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        values = numpy_helper.to_array(init) if init.data_type == onnx.TensorProto.FLOAT else None
        if values is None or values.size < FLOAT16_MIN_ELEMENTS or not np.array_equal(
            values.astype(np.float16).astype(np.float32), values
        ):
            kept.append(init)
            continue
        half = numpy_helper.from_array(values.astype(np.float16), f"{init.name}__float16")
        kept.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                           name=f"{init.name}__cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return len(casts)


def torch_probabilities(wrapper: ExportWrapper, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return wrapper(torch.from_numpy(np.asarray(features, np.float32)[:, None])).numpy()


def onnx_probabilities(path: str | os.PathLike, features: np.ndarray, batch: int = 8) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.asarray(features, np.float32)[:, None]
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def check_parity(
    wrapper: ExportWrapper, path: str | os.PathLike, features: np.ndarray, *, reference: bool = True
) -> ParityResult:
    """PyTorch vs onnxruntime (batches 1, 3, 8) and vs ``onnx.reference`` (one window)."""
    import onnxruntime as ort

    expected = torch_probabilities(wrapper, features)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.asarray(features, np.float32)[:, None]
    worst, argmax_equal = 0.0, True
    for batch in PARITY_BATCHES:
        for i in range(0, len(x), batch):
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch]})[0]
            want = expected[i : i + batch]
            if got.shape != want.shape:
                raise ExportError(f"batch {batch}: onnxruntime returned {got.shape}, expected {want.shape}", path=str(path))
            worst = max(worst, float(np.abs(got - want).max()))
            argmax_equal &= bool((got.argmax(1) == want.argmax(1)).all())
    reference_diff = None
    if reference:
        import onnx
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.load(str(path)))
        got = evaluator.run(None, {INPUT_NAME: x[:1]})[0]
        reference_diff = float(np.abs(got - expected[:1]).max())
        worst = max(worst, reference_diff)
        argmax_equal &= bool(got.argmax(1)[0] == expected[0].argmax())
    result = ParityResult(worst, argmax_equal, len(x), PARITY_BATCHES, reference_diff)
    if worst >= PARITY_ATOL or not argmax_equal:
        raise ExportError(
            f"PyTorch/ONNX parity failed: max |diff| {worst:.2e} (limit {PARITY_ATOL:.0e}), argmax equal: {argmax_equal}",
            path=str(path),
        )
    return result


def fit_temperature(window_logits: np.ndarray, window_clip: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the clip-level NLL (mean of window softmax), by grid search.

    ``window_logits`` is ``(windows, n_labels)`` or, for an ensemble, ``(members, windows,
    n_labels)``: one temperature for all members, applied before their probabilities are
    averaged (as the exported graph does).
    """
    from ser_edge.train.metrics import clip_probabilities

    n_clips = len(labels)
    best, best_nll = 1.0, np.inf
    for temperature in TEMPERATURE_GRID:
        probs = clip_probabilities(_softmax(window_logits, temperature), window_clip, n_clips)
        nll = -np.mean(np.log(np.clip(probs[np.arange(n_clips), labels], 1e-12, 1.0)))
        if nll < best_nll:
            best, best_nll = float(temperature), nll
    return best


# -- from a run folder ---------------------------------------------------------------------


@dataclasses.dataclass
class ExportReport:
    path: str
    parity: ParityResult
    temperature: float
    ece: dict[str, float]
    test_metrics: dict[str, Any]
    int8: dict[str, Any] | None = None
    code_version: str = ""  # of the code that exported (the members' own is in their config.json)
    weights: str = "float32"  # how the weights are stored (WEIGHT_DTYPES)
    branch_fold: list[dict[str, Any]] | None = None  # per member (fold.BranchFold); None: not tried

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _run_features(run_config: Mapping[str, Any], data_dir: str | os.PathLike, cache_dir):
    from ser_edge.train.pipeline import prepare

    feature_config = FeatureConfig.from_dict(run_config["features"])
    prepared = prepare(data_dir, feature_config, cache_dir=cache_dir)
    if run_config.get("data_hash") and prepared.data_hash != run_config["data_hash"]:
        log.warning("data hash %s differs from the run's %s", prepared.data_hash[:12], run_config["data_hash"][:12])
    return feature_config, prepared.feature_set


def _window_logits(wrapper: ExportWrapper, features: np.ndarray, rows: np.ndarray, batch: int = 64) -> np.ndarray:
    """``(members, len(rows), n_labels)`` logits."""
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            x = torch.from_numpy(np.asarray(features[rows[i : i + batch]], np.float32)[:, None])
            out.append(wrapper.logits(x).numpy())
    return np.concatenate(out, axis=1)


def _clip_eval(fs, rows: np.ndarray, window_probs: np.ndarray, labels: Sequence[str]) -> tuple[dict, np.ndarray, np.ndarray]:
    from ser_edge.train import metrics
    from ser_edge.train.trainer import clip_level

    probs, y = clip_level(fs, rows, window_probs)
    summary = metrics.summary(y, probs.argmax(1), labels)
    summary["ece"] = metrics.expected_calibration_error(probs, y)
    return summary, probs, y


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over the last axis; a leading members axis (3-D input) is averaged out."""
    z = logits / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    return probs.mean(axis=0) if probs.ndim == 3 else probs


# Run settings that may differ between the members of an ensemble (everything else must match).
MEMBER_KEYS = ("seed", "threads", "device")


def _member_recipe(run_config: Mapping[str, Any]) -> dict[str, Any]:
    train = {k: v for k, v in run_config["train"].items() if k not in MEMBER_KEYS}
    return {"train": train, "model": run_config["model"], "augment": run_config["augment"],
            "labels": run_config["labels"], "features": run_config["features"], "split": run_config["split"],
            "data_hash": run_config.get("data_hash")}


def load_members(run_dirs: Sequence[str | os.PathLike]) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """The runs' shared config, each run's config, and their shared scaler.

    The runs must be one recipe on one actor split (they may differ in seed only); their
    scalers, fit on the same training actors, must then be identical.
    """
    from ser_edge.train.data import blas_kernels_note
    from ser_edge.train.scaler import Scaler

    configs, scaler = [], None
    for run_dir in map(Path, run_dirs):
        for name in ("config.json", "scaler.npz", "best_parallel_ser.pt"):
            if not (run_dir / name).is_file():
                raise ExportError(f"run folder has no {name}", path=str(run_dir))
        config = json.loads((run_dir / "config.json").read_text())
        if configs and config.get("front_end") != configs[0].get("front_end"):
            raise ExportError(
                f"run's features come from another front-end than {run_dirs[0]}'s (fingerprint "
                f"{config.get('front_end') or 'not recorded'} against {configs[0].get('front_end') or 'not recorded'}"
                f"{blas_kernels_note(config, configs[0])}): retrain it with the same code and BLAS kernels "
                "(OPENBLAS_CORETYPE)", path=str(run_dir))
        if configs and _member_recipe(config) != _member_recipe(configs[0]):
            raise ExportError(f"run is not the same recipe and actor split as {run_dirs[0]} (only the seed may differ)",
                              path=str(run_dir))
        run_scaler = Scaler.load(run_dir / "scaler.npz")
        if scaler is not None and not (np.array_equal(run_scaler.mean, scaler.mean)
                                       and np.array_equal(run_scaler.scale, scaler.scale)):
            raise ExportError(f"run's scaler differs from {run_dirs[0]}'s (different training data?)", path=str(run_dir))
        configs.append(config)
        if scaler is None:
            scaler = run_scaler
    if not configs:
        raise ExportError("no run folder given")
    return configs[0], configs, scaler


MEMBER_METRICS = ("accuracy", "macro_f1", "uar", "actors")


def member_summary(run_dir: Path, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ensemble member's record: the ONNX provenance and the rebuild's JSON both carry it."""
    run_dir = Path(run_dir)
    if config is None:
        config = json.loads((run_dir / "config.json").read_text())
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    out = {"run": run_dir.name, "seed": config["train"].get("seed"), "code_version": config.get("code_version"),
           "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run")}
    for key, split in (("validation", "val"), ("test_pytorch", "test")):
        if split in metrics:
            out[key] = {k: metrics[split].get(k) for k in MEMBER_METRICS}
    return out


RAVDESS_LICENSE = "CC BY-NC-SA 4.0 (trained on RAVDESS)"


def weights_license(run_config: Mapping[str, Any]) -> str:
    """The license a run's weights carry: RAVDESS's when RAVDESS trained them or they were
    fine-tuned from a model that carries it; otherwise the training data's, which only
    its owner knows."""
    from ser_edge.train.data import is_manifest

    started = run_config.get("init_from") or {}
    if not is_manifest(run_config.get("data_root", "")):
        return RAVDESS_LICENSE
    if started.get("license"):
        return f"{started['license']}; fine-tuned on the clips of a CSV manifest, whose terms apply too"
    return "the training data's terms (trained from scratch on the clips of a CSV manifest)"


def export_run(
    run_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    data_dir: str | os.PathLike,
    cache_dir=None,
    calibrate: bool = True,
    quantize: str | None = None,
    model_name: str = "ser-edge-parallel",
    model_version: str | None = None,
    weights: str = "float32",
    fold: bool = True,
) -> ExportReport:
    """Export a run folder (or an ensemble of runs); parity on its test actors; optional int8.

    ``weights="float16"`` rounds the members' weights to float16 first (so calibration,
    metrics and parity are those of the rounded model) and stores them as float16.
    ``fold``: write each member whose transformer branch is constant on the training
    actors' windows without that branch (``fold.py``); parity is still against the
    unfolded members.
    """
    from ser_edge import __version__
    from ser_edge.train.trainer import code_version, load_model

    run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, os.PathLike)) else [Path(r) for r in run_dirs]
    run_config, configs, scaler = load_members(run_dirs)
    labels = run_config["labels"]
    feature_config, fs = _run_features(run_config, data_dir, cache_dir)
    if weights not in WEIGHT_DTYPES:
        raise ExportError(f"weights must be one of {WEIGHT_DTYPES}, got {weights!r}")
    models = [load_model(run_dir, feature_config) for run_dir in run_dirs]
    if weights == "float16":
        models = [round_to_float16(model) for model in models]
    split = run_config["split"]
    val_rows, test_rows = fs.rows_for_actors(split["val"]), fs.rows_for_actors(split["test"])
    if len(test_rows) == 0:
        raise ExportError(f"no clips of the run's test actors {split['test']} under {data_dir}", path=str(run_dirs[0]))

    wrapper = ExportWrapper(models, scaler.mean, scaler.scale)
    temperature, ece = 1.0, {}
    if calibrate and len(val_rows):
        temperature, ece = _calibrate(wrapper, fs, val_rows, test_rows, labels)
        wrapper = ExportWrapper(models, scaler.mean, scaler.scale, temperature)

    traced, branch_fold = wrapper, None
    train_rows = fs.rows_for_actors(split["train"])
    if fold and len(train_rows):
        traced, branch_fold = _fold(models, wrapper, scaler, temperature, np.asarray(fs.features[probe_rows(train_rows)]))

    test_window_probs = torch_probabilities(wrapper, np.asarray(fs.features[test_rows]))
    test_summary = _clip_eval(fs, test_rows, test_window_probs, labels)[0]
    members = [member_summary(run_dir, config) for run_dir, config in zip(run_dirs, configs, strict=True)]
    provenance = {
        "split_actors": split,
        "test_metrics": {k: test_summary[k] for k in ("n", "accuracy", "macro_f1", "uar", "ece")},
        "data_hash": run_config.get("data_hash", ""),
        "code_version": run_config.get("code_version", ""),  # what trained the members
        "export_code_version": code_version(),
        "best_epoch": members[0]["best_epoch"] if len(members) == 1 else [m["best_epoch"] for m in members],
        "members": members,
        "temperature": temperature,
        "ece": ece,
        "recipe": {k: run_config[k] for k in ("train", "model", "augment")},
        "weights": weights,
        **({"branch_fold": branch_fold} if branch_fold is not None else {}),
        **({"speakers": run_config["speakers"]} if run_config.get("speakers") else {}),  # a manifest's names
        **({"init_from": run_config["init_from"]} if run_config.get("init_from") else {}),
    }
    props = metadata_props(
        labels, feature_config, model_name=model_name, model_version=model_version or __version__,
        extra={"provenance": provenance, "license": weights_license(run_config)},
    )
    export_onnx(traced, out_path, feature_config, props)
    int8 = None
    if quantize == "int8":  # from the float32-stored graph: the quantizer reads float32 weights
        int8 = quantize_int8(out_path, fs, run_config, labels, test_summary)
    if weights == "float16":
        converted = store_float16(out_path)
        log.info("stored %d weight tensors as float16: %.2f MB", converted, Path(out_path).stat().st_size / 1e6)
    parity_rows = test_rows[: 16]  # of the file as written, whatever its weight storage
    parity = check_parity(wrapper, out_path, np.asarray(fs.features[parity_rows]))
    log.info("parity on %d test-actor windows: max |diff| %.2e", len(parity_rows), parity.max_abs_diff)
    return ExportReport(str(out_path), parity, temperature, ece, provenance["test_metrics"], int8=int8,
                        code_version=provenance["export_code_version"], weights=weights, branch_fold=branch_fold)


def _fold(models: list[ParallelModel], wrapper: ExportWrapper, scaler, temperature: float,
          probe: np.ndarray) -> tuple[ExportWrapper, list[dict]]:
    """The graph to trace, with every dead transformer branch folded, and the verdicts."""
    standardised = (probe.astype(np.float32) - scaler.mean.astype(np.float32)) * (1.0 / scaler.scale.astype(np.float32))
    members, verdicts = fold_members(models, standardised)
    for i, verdict in enumerate(verdicts):
        log.info("member %d: transformer branch %s (max logit change %.1e over %d training windows)", i,
                 "folded into the classifier bias" if verdict.folded else "kept", verdict.max_logit_deviation,
                 verdict.probe_windows)
    records = [v.to_dict() for v in verdicts]
    if not any(v.folded for v in verdicts):
        return wrapper, records
    return ExportWrapper(members, scaler.mean, scaler.scale, temperature), records


def _calibrate(wrapper: ExportWrapper, fs, val_rows: np.ndarray, test_rows: np.ndarray, labels) -> tuple[float, dict[str, float]]:
    """Temperature fit on the validation actors; ECE before/after on validation and test."""
    val_logits = _window_logits(wrapper, fs.features, val_rows)
    owners = fs.window_clip[val_rows]
    clips, local = np.unique(owners, return_inverse=True)
    y_val = np.array([fs.clips[c].label_index for c in clips])
    temperature = fit_temperature(val_logits, local, y_val)
    test_logits = _window_logits(wrapper, fs.features, test_rows)
    ece = {}
    for split_name, rows, logits in (("val", val_rows, val_logits), ("test", test_rows, test_logits)):
        ece[f"{split_name}_before"] = _clip_eval(fs, rows, _softmax(logits, 1.0), labels)[0]["ece"]
        ece[f"{split_name}_after"] = _clip_eval(fs, rows, _softmax(logits, temperature), labels)[0]["ece"]
    return temperature, ece


def quantize_int8(fp32_path: str | os.PathLike, fs, run_config: Mapping[str, Any], labels, fp32_summary) -> dict[str, Any]:
    """Static and dynamic int8 variants; keep the better; report the accuracy change."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static, QuantFormat
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path = Path(fp32_path)
    split = run_config["split"]
    test_rows = fs.rows_for_actors(split["test"])
    calib_rows = fs.rows_for_actors(split["train"])
    rng = np.random.default_rng(0)
    calib_rows = np.sort(rng.choice(calib_rows, size=min(128, len(calib_rows)), replace=False))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(calib_rows)

        def get_next(self):
            row = next(self._rows, None)
            return None if row is None else {INPUT_NAME: np.asarray(fs.features[row : row + 1], np.float32)[:, None]}

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs every skipped tensor
    pre = fp32_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    candidates = {}
    static_path = fp32_path.with_name(fp32_path.stem + ".int8-static.onnx")
    quantize_static(str(pre), str(static_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    candidates["static"] = static_path
    dynamic_path = fp32_path.with_name(fp32_path.stem + ".int8-dynamic.onnx")
    quantize_dynamic(str(pre), str(dynamic_path), weight_type=QuantType.QInt8)
    candidates["dynamic"] = dynamic_path
    pre.unlink(missing_ok=True)

    import onnx

    fp32_meta = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    val_rows = fs.rows_for_actors(split["val"])
    fp32_val = _clip_eval(fs, val_rows, onnx_probabilities(fp32_path, np.asarray(fs.features[val_rows])), labels)[0]
    results = {}
    for kind, path in candidates.items():
        scores = {}
        for name, rows, reference in (("val", val_rows, fp32_val), ("test", test_rows, fp32_summary)):
            probs = onnx_probabilities(path, np.asarray(fs.features[rows]))
            accuracy = _clip_eval(fs, rows, probs, labels)[0]["accuracy"]
            scores[f"{name}_accuracy"] = accuracy
            scores[f"{name}_delta_points"] = 100 * (accuracy - reference["accuracy"])
        results[kind] = {**scores, "size_bytes": path.stat().st_size}
    fp32_ms = latency_ms(fp32_path, np.asarray(fs.features[test_rows[:1]]))
    for kind, path in candidates.items():
        results[kind]["latency_ms"] = latency_ms(path, np.asarray(fs.features[test_rows[:1]]))
    # Chosen on validation actors and speed only; the test change is reported, never used:
    # the fastest variant within INT8_VAL_BAR_POINTS of fp32 on the validation actors.
    eligible = [k for k in results if results[k]["val_delta_points"] > -INT8_VAL_BAR_POINTS] or list(results)
    best = min(eligible, key=lambda k: results[k]["latency_ms"])
    final = fp32_path.with_name(fp32_path.stem + ".int8.onnx")
    model = onnx.load(str(candidates[best]))
    del model.metadata_props[:]
    for key, value in {**fp32_meta, "quantization": f"int8 {best} (onnxruntime)"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(final))
    for path in candidates.values():
        path.unlink(missing_ok=True)
    return {"chosen": best, "chosen_by": "fastest within the validation-accuracy bar", "path": str(final),
            "candidates": results, "fp32_latency_ms": fp32_ms,
            "passes_bar": results[best]["test_delta_points"] > -INT8_VAL_BAR_POINTS,
            "faster_than_fp32": results[best]["latency_ms"] < fp32_ms}


def latency_ms(path: str | os.PathLike, features: np.ndarray, repeats: int = 50) -> float:
    """Median single-thread latency of one window through onnxruntime (as the runtime runs it)."""
    import time

    import onnxruntime as ort

    from ser_edge.edge_runtime.session import session_options

    session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: np.asarray(features[:1], np.float32)[:, None]}
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)
