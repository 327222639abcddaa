"""The face-parsing metric (spec section 6) against confusion counts and scores computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segface_hf import HELEN_LABELS
from segface_hf.metrics import (
    FACE_PARSING_F1_PATH,
    confusion_matrix,
    flatten_scores,
    load_face_parsing_f1,
    scores_from_confusion,
)

NAMES = ["background", "skin", "hair"]
# Two images, 2x2 each; 255 marks an ignored pixel.
GT_A, PRED_A = [[0, 1], [1, 2]], [[0, 1], [2, 2]]
GT_B, PRED_B = [[1, 1], [255, 0]], [[1, 0], [2, 0]]
# By hand (rows = ground truth, columns = prediction), the ignored pixel dropped:
# A: (0,0) (1,1) (1,2) (2,2); B: (1,1) (1,0) (0,0)
HAND_CONFUSION = [[2, 0, 0], [1, 2, 1], [0, 0, 1]]


def test_confusion_counts_match_hand_count():
    total = confusion_matrix(PRED_A, GT_A, 3) + confusion_matrix(PRED_B, GT_B, 3)
    assert total.tolist() == HAND_CONFUSION
    assert total.dtype == np.int64


def test_scores_match_hand_computation():
    scores = scores_from_confusion(HAND_CONFUSION, label_names=NAMES)
    # |gt| = 2, 4, 1; |pred| = 3, 2, 2; TP = 2, 2, 1.
    assert scores["f1"] == pytest.approx({"background": 4 / 5, "skin": 4 / 6, "hair": 2 / 3})
    assert scores["mean_f1"] == pytest.approx((4 / 6 + 2 / 3) / 2)  # background left out
    assert scores["iou"] == pytest.approx({"background": 2 / 3, "skin": 2 / 4, "hair": 1 / 2})
    assert scores["mean_iou"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)  # background included
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)
    assert scores["mean_accuracy"] == pytest.approx((1 + 2 / 4 + 1) / 3)
    assert scores["absent_classes"] == [] and scores["num_pixels"] == 7
    assert scores["merged_f1"] == {}


def test_f1_is_dataset_level_not_a_mean_over_images():
    # Image 1: one skin pixel, found. Image 2: three skin pixels, all missed (predicted background).
    total = confusion_matrix([[1, 0]], [[1, 0]], 2) + confusion_matrix([[0, 0, 0]], [[1, 1, 1]], 2)
    scores = scores_from_confusion(total, label_names=["background", "skin"])
    assert scores["f1"]["skin"] == pytest.approx(2 * 1 / (4 + 1))  # 0.4; the per-image mean would be 0.5
    assert scores["mean_f1"] == pytest.approx(0.4)


def test_class_absent_from_both_sides_is_reported_and_left_out_of_the_means():
    names = ["background", "skin", "hair", "hat"]
    # hat (3) occurs nowhere; hair (2) is predicted once but never in the ground truth.
    prediction = [[0, 1, 1, 2]]
    reference = [[0, 1, 1, 1]]
    scores = scores_from_confusion(confusion_matrix(prediction, reference, 4), label_names=names)
    assert scores["f1"]["hat"] is None and scores["iou"]["hat"] is None
    assert scores["absent_classes"] == ["hat"]
    assert scores["f1"]["hair"] == 0.0  # predicted but absent from ground truth: a real error, it counts
    assert scores["f1"]["skin"] == pytest.approx(2 * 2 / (3 + 2))
    assert scores["mean_f1"] == pytest.approx((0.8 + 0.0) / 2)  # skin and hair; hat left out, not NaN
    assert scores["mean_iou"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert scores["mean_accuracy"] == pytest.approx((1 + 2 / 3) / 2)  # classes without ground truth left out
    assert not any(isinstance(v, float) and math.isnan(v) for v in flatten_scores(scores).values())
    assert "f1_hat" not in flatten_scores(scores) and flatten_scores(scores)["f1_hair"] == 0.0


def test_ignored_pixels_do_not_count_and_other_values_are_errors():
    assert confusion_matrix([[1, 1]], [[255, 1]], 2).tolist() == [[0, 0], [0, 1]]
    with pytest.raises(ValueError, match="outside the 2 classes"):
        confusion_matrix([[1, 1]], [[7, 1]], 2)
    with pytest.raises(ValueError, match="prediction holds values"):
        confusion_matrix([[5, 1]], [[0, 1]], 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([[1]], [[255]], 2, ignore_index=None)
    with pytest.raises(ValueError, match="must match"):
        confusion_matrix([[1, 1]], [[1], [1]], 2)


def test_helen_merged_entries_merge_both_sides_and_stay_out_of_the_mean():
    names = list(HELEN_LABELS)
    le, re, lb, nose, ulip, mouth = (names.index(n) for n in ("l_eye", "r_eye", "l_brow", "nose", "u_lip", "mouth"))
    # Every left-eye pixel predicted as right eye: both eye classes score 0, the merged "eyes" entry scores 1.
    reference = np.array([[le, le, re, lb, nose, ulip, mouth, 0]])
    prediction = np.array([[re, re, re, lb, nose, mouth, mouth, 0]])
    scores = scores_from_confusion(
        confusion_matrix(prediction, reference, 11), label_names=names, merged_entries="helen"
    )
    assert scores["f1"]["l_eye"] == 0.0
    assert scores["f1"]["r_eye"] == pytest.approx(2 * 1 / (1 + 3))
    assert scores["merged_f1"]["eyes"] == pytest.approx(1.0)
    assert scores["merged_f1"]["brows"] == pytest.approx(1.0)  # only l_brow present, found
    assert scores["merged_f1"]["mouth"] == pytest.approx(1.0)  # u_lip taken for mouth: still the mouth entry
    assert scores["merged_f1"]["overall"] == pytest.approx(1.0)
    present = [scores["f1"][n] for n in names[1:] if scores["f1"][n] is not None]
    assert scores["mean_f1"] == pytest.approx(sum(present) / len(present))  # classes only
    flat = flatten_scores(scores)  # the merged "mouth" entry does not overwrite the class "mouth"
    assert flat["merged_f1_mouth"] == pytest.approx(1.0) and flat["f1_mouth"] == pytest.approx(2 * 1 / (1 + 2))


def test_merged_entries_accept_indices_and_reject_unknown_classes():
    scores = scores_from_confusion(HAND_CONFUSION, label_names=NAMES, merged_entries={"face": [1, "hair"]})
    # gt in {1,2}: 5 pixels; pred in {1,2}: 4; both: 2+1+1 = 4.
    assert scores["merged_f1"]["face"] == pytest.approx(2 * 4 / 9)
    with pytest.raises(ValueError, match="not one of the classes"):
        scores_from_confusion(HAND_CONFUSION, label_names=NAMES, merged_entries={"eyes": ["l_eye"]})
    with pytest.raises(ValueError, match="unknown merged-entry preset"):
        scores_from_confusion(HAND_CONFUSION, label_names=NAMES, merged_entries="lapa")
    with pytest.raises(ValueError, match="3 label names for a 2-class"):
        scores_from_confusion([[1, 0], [0, 1]], label_names=NAMES)


def test_background_index_none_averages_every_class():
    scores = scores_from_confusion(HAND_CONFUSION, label_names=NAMES, background_index=None)
    assert scores["mean_f1"] == pytest.approx((4 / 5 + 4 / 6 + 2 / 3) / 3)


def test_evaluate_module_loads_offline_by_path_and_agrees(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert FACE_PARSING_F1_PATH.endswith("face_parsing_f1")
    metric = load_face_parsing_f1()
    results = metric.compute(
        predictions=[PRED_A, PRED_B], references=[GT_A, GT_B], label_names=NAMES, return_confusion_matrix=True
    )
    assert results["confusion_matrix"] == HAND_CONFUSION
    assert results["mean_f1"] == pytest.approx((4 / 6 + 2 / 3) / 2)
    assert results["f1"]["background"] == pytest.approx(0.8)
    # Images of different sizes are fine, batch by batch.
    metric.add_batch(predictions=[[[1, 0]]], references=[[[1, 0]]])
    metric.add_batch(predictions=[[[0, 0], [0, 0]]], references=[[[1, 1], [1, 0]]])
    results = metric.compute(num_labels=2)
    assert results["f1"]["class_1"] == pytest.approx(2 * 1 / (4 + 1))
    # The module cites the paper with its own copy of the BibTeX (it runs without the package): the package's one.
    from segface_hf.references import SEGFACE_CITATION

    assert metric.citation.strip() == SEGFACE_CITATION
