"""The model shipped in the package: loads by default, classifies the example clip, and
reproduces its documented test-actor accuracy through the edge runtime."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ser_edge.edge_runtime import EmotionClassifier, FeatureConfig, default_model_path

from conftest import DATA_DIR, LABELS, REPO, front_end_with_blas, needs_data

PROVENANCE = Path(default_model_path()).with_suffix(".json")
INT8 = Path(default_model_path()).with_name("ser_edge_default.int8.onnx")


def documented() -> dict:
    return json.loads(PROVENANCE.read_text())


def test_default_model_loads_with_its_contract():
    clf = EmotionClassifier()
    assert clf.labels == tuple(LABELS)
    assert clf.feature_config == FeatureConfig()
    provenance = json.loads(clf.metadata["provenance"])
    assert set(provenance["split_actors"]) == {"train", "val", "test"}
    assert provenance["data_hash"] == documented()["data_hash"]
    assert Path(default_model_path()).stat().st_size < 5_000_000


def test_info_names_the_shipped_split_and_its_test_score():
    from click.testing import CliRunner

    from ser_edge.cli import main

    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    provenance = json.loads(EmotionClassifier().metadata["provenance"])
    test_actors = ", ".join(map(str, provenance["split_actors"]["test"]))
    assert f"; test actors {test_actors}\n" in result.output
    accuracy = provenance["test_metrics"]["accuracy"]
    assert f"test accuracy: {accuracy:.3f} (" in result.output and f"clips of actors {test_actors}\n" in result.output
    assert f"data sha256: {documented()['data_hash']}" in result.output


def test_example_clip_gets_a_real_prediction():
    pred = EmotionClassifier().predict_file(REPO / "examples" / "hello.wav")
    assert pred.label in LABELS and 1 / len(LABELS) < pred.confidence <= 1
    assert abs(sum(pred.probabilities.values()) - 1) < 1e-4


def test_shipped_model_was_trained_on_todays_front_end():
    """The rebuild can reproduce the shipped file only from the features it was trained on:
    a change of the log-mel's floating-point rounding (which no setting records) changes the
    fingerprint, and has to come with a rebuilt model. The fingerprint does not depend on
    the BLAS thread count (tests/test_features.py), but it does on OpenBLAS's kernel set,
    which follows the CPU: it is computed with the shipped members' kernels pinned."""
    from ser_edge.train.recipes import SHIPPED_FRONT_END_BLAS

    shipped = documented()["front_end"]
    today, _ = front_end_with_blas(dataclasses.asdict(FeatureConfig()), SHIPPED_FRONT_END_BLAS)
    assert shipped == today, (f"the shipped model learned from front-end {shipped}, this checkout computes {today} "
                              f"with OPENBLAS_CORETYPE={SHIPPED_FRONT_END_BLAS}: rebuild it "
                              "(python -m ser_edge.train.rebuild, README)")


def test_shipped_variants_match_the_files():
    assert documented()["shipped"][0] == "fp32"
    assert INT8.is_file() == ("int8" in documented()["shipped"])


@needs_data
@pytest.mark.parametrize("variant", json.loads(PROVENANCE.read_text())["shipped"])
def test_documented_test_actor_accuracy(variant):
    from ser_edge.train.evaluate import _exported_split, evaluate_onnx

    doc = documented()
    path = default_model_path() if variant == "fp32" else str(INT8)
    assert _exported_split(EmotionClassifier(path).metadata) == doc["split"]  # what evaluate checks against
    result = evaluate_onnx(path, DATA_DIR, doc["split"]["test"]).summary
    assert "not_held_out" not in result
    expected = doc["test_edge_runtime"][variant]["summary"]
    assert result["n"] == expected["n"]
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    card = (REPO / "MODEL_CARD.md").read_text()
    if variant == "fp32":  # the card's sentence under its test-actor report
        assert (f"Accuracy {100 * expected['accuracy']:.1f}%, macro-F1 {expected['macro_f1']:.3f}, "
                f"unweighted average recall {expected['uar']:.3f}.") in card
    else:
        assert f"{100 * expected['accuracy']:.1f}%" in card
