"""Re-export a ser-edge ONNX file with today's exporter, from the weights inside it.

usage:
    python tools/reexport_onnx.py IN.onnx OUT.onnx [--atol 1e-6]

For a model whose training runs are gone (the shipped 0.7.0 file: its members were trained
on an earlier machine) when the exporter has changed how it writes the graph, not what it
computes (``export/lean.py``). The members are rebuilt from the file's own weights and
provenance by ``ser_edge/export/onnx_weights.py``, which reads files of either form, from
before ``export/lean.py`` or after. Scaler and temperature are copied as stored. Nothing is trusted: the
rebuilt modules must reproduce IN's probabilities, OUT is parity-checked against them
(``exporter.check_parity``), and OUT must give IN's probabilities to ``--atol`` on random
and silent inputs; otherwise the tool stops with an error and writes nothing. OUT keeps IN's
metadata; its provenance gains ``reexport`` (IN's export date, today's code version, the
largest difference measured). Members whose transformer branch IN had folded into the
classifier bias (``export/fold.py``) are written folded again. Needs the dev extra (torch, onnx).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ser_edge.export.exporter import ExportError
from ser_edge.export.onnx_weights import rebuild_wrapper


class ReexportError(ExportError):
    """The re-exported file would not compute what the original computes."""


DEFAULT_ATOL = 1e-6
CHECK_WINDOWS = 6
CHECK_SEED = 0


def reexport(src: Path, dst: Path, atol: float = DEFAULT_ATOL) -> float:
    """Write ``dst``; the largest |probability difference| between ``src`` and ``dst``."""
    import onnx

    from ser_edge.export.exporter import check_parity, export_onnx, onnx_probabilities, store_float16, torch_probabilities
    from ser_edge.train.trainer import code_version

    model = onnx.load(str(src))
    wrapper, feature_config, props = rebuild_wrapper(model)
    rng = np.random.default_rng(CHECK_SEED)
    shape = (feature_config.n_mels, feature_config.n_frames)
    features = np.concatenate([rng.uniform(-feature_config.top_db, 0, (CHECK_WINDOWS - 1, *shape)),
                               np.full((1, *shape), -feature_config.top_db)]).astype(np.float32)
    want = onnx_probabilities(src, features)
    rebuilt = float(np.abs(torch_probabilities(wrapper, features) - want).max())
    if rebuilt > atol:
        raise ReexportError(f"the weights read from {src} do not reproduce it: max |diff| {rebuilt:.2e} > {atol:.0e}")
    provenance = json.loads(props["provenance"])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / dst.name
        export_onnx(_refolded(wrapper, provenance), out, feature_config, props)
        if provenance.get("weights") == "float16":
            store_float16(out)
        check_parity(wrapper, out, features)
        diff = float(np.abs(onnx_probabilities(out, features) - want).max())
        if diff > atol:
            raise ReexportError(f"re-exported graph differs from {src}: max |diff| {diff:.2e} > {atol:.0e}")
        provenance["reexport"] = {"from_export_date": props.get("export_date"), "code_version": code_version(),
                                  "max_abs_diff": diff}
        result = onnx.load(str(out))
        for entry in result.metadata_props:
            if entry.key == "provenance":
                entry.value = json.dumps(provenance)
            elif entry.key == "export_date":
                entry.value = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(result, str(dst), save_as_external_data=False)
    return diff


def _refolded(wrapper, provenance: dict):
    """``wrapper`` with the members IN had folded folded again (their branch's classifier
    columns are zero after the rebuild, so the constant is zero too)."""
    import copy

    import torch

    from ser_edge.export.fold import FoldedMember, folded_indices

    folded = folded_indices(provenance)
    if not folded:
        return wrapper
    out = copy.deepcopy(wrapper)
    for i in folded:
        member = out.models[i]
        out.models[i] = FoldedMember(member, torch.zeros(member.config.d_model))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    args = parser.parse_args(argv)
    if not args.src.is_file():
        print(f"error: {args.src}: no such file", file=sys.stderr)
        return 1
    try:
        diff = reexport(args.src, args.dst, args.atol)
    except ExportError as error:
        print(f"error: {args.src}: {error}", file=sys.stderr)
        return 1
    print(f"{args.dst}: {args.dst.stat().st_size / 1e6:.2f} MB, probabilities equal to {args.src}'s within {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
