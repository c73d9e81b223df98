"""COCO-style mAP on tiny hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icmh.bench.detection_map import Boxes, box_iou, mean_average_precision

A = [0, 0, 100, 100]
B = [200, 200, 300, 300]


def test_box_iou() -> None:
    iou = box_iou(np.array([A, [0, 0, 100, 62]], float), np.array([A, B], float))
    assert iou == pytest.approx(np.array([[1.0, 0.0], [0.62, 0.0]]))


def test_perfect_detections() -> None:
    truths = [Boxes([A, B], [2, 0]), Boxes([A], [2])]
    detections = [Boxes([A, B], [2, 0], [0.9, 0.8]), Boxes([A], [2], [0.7])]
    result = mean_average_precision(detections, truths)
    assert result.map50_95 == pytest.approx(1.0)
    assert result.map50 == pytest.approx(1.0)
    assert sorted(result.ap) == [0, 2]


def test_false_positive_between_true_positives() -> None:
    # ranked: TP (P=1, R=.5), FP (P=.5, R=.5), TP (P=2/3, R=1): the envelope is 1 for the 51
    # recall points 0..0.50 and 2/3 for the 50 points 0.51..1.00.
    truths = [Boxes([A, B], [0, 0])]
    detections = [Boxes([A, [500, 500, 600, 600], B], [0, 0, 0], [0.9, 0.8, 0.7])]
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    result = mean_average_precision(detections, truths)
    assert result.map50 == pytest.approx(expected)
    assert result.map50_95 == pytest.approx(expected)


def test_iou_thresholds() -> None:
    # IoU 0.62 is a match at 0.50, 0.55, 0.60 and a miss at 0.65..0.95
    result = mean_average_precision([Boxes([[0, 0, 100, 62]], [0], [0.5])], [Boxes([A], [0])])
    assert result.map50 == pytest.approx(1.0)
    assert result.map50_95 == pytest.approx(0.3)


def test_duplicate_detection_is_false_positive_and_recall_is_capped() -> None:
    # two detections on one object, a second object missed: P=1 at R=.5, then FP; R never reaches 1
    truths = [Boxes([A, B], [0, 0])]
    detections = [Boxes([A, [1, 1, 100, 100]], [0, 0], [0.9, 0.8])]
    assert mean_average_precision(detections, truths).map50 == pytest.approx(51 / 101)


def test_score_order_across_images() -> None:
    # the FP (0.95, image 2) outranks the TP (0.6, image 1): P = 1/2 at R = 1
    truths = [Boxes([A], [0]), Boxes(np.zeros((0, 4)), [])]
    detections = [Boxes([A], [0], [0.6]), Boxes([B], [0], [0.95])]
    assert mean_average_precision(detections, truths).map50 == pytest.approx(0.5)


def test_class_selection_and_missing_classes() -> None:
    truths = [Boxes([A, B], [1, 5])]
    detections = [Boxes([A, B], [1, 7], [0.9, 0.9])]  # class 5 never detected; class 7 has no truth
    result = mean_average_precision(detections, truths)
    assert sorted(result.ap) == [1, 5]
    assert result.map50 == pytest.approx(0.5)
    only = mean_average_precision(detections, truths, classes=[1, 7])
    assert sorted(only.ap) == [1] and only.map50 == pytest.approx(1.0)
    empty = mean_average_precision(detections, truths, classes=[3])
    assert math.isnan(empty.map50_95)


def test_max_det_keeps_highest_scores() -> None:
    truths = [Boxes([A], [0])]
    detections = [Boxes([B, A], [0, 0], [0.9, 0.1])]
    assert mean_average_precision(detections, truths, max_det=1).map50 == pytest.approx(0.0)
    assert mean_average_precision(detections, truths, max_det=2).map50 == pytest.approx(0.5)
