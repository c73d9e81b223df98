"""COCO-style detection mAP in numpy (101-point interpolated AP over IoU 0.50:0.05:0.95).

Follows the bounding-box evaluation of pycocotools (Lin et al., "Microsoft COCO", ECCV 2014)
without crowd regions or area ranges: per image and class, detections (at most ``max_det``
per image, highest scores first) are matched greedily in score order to the unmatched
ground-truth box of highest IoU >= t; across images they are ranked by score into a
precision-recall curve whose precision envelope is sampled at recall 0, 0.01, ..., 1.
AP is averaged over the 10 IoU thresholds and over the classes that have ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from icmh.detector import Boxes

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class MapResult:
    """mAP50-95, mAP50 and the AP of each evaluated class at each IoU threshold."""

    map50_95: float
    map50: float
    ap: dict[int, np.ndarray]  # class id -> AP at IOU_THRESHOLDS


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, shape (len(a), len(b))."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(detections: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """True-positive flags (len(detections), thresholds) of score-sorted detections against truths."""
    tp = np.zeros((len(detections), len(IOU_THRESHOLDS)), dtype=bool)
    if len(detections) == 0 or len(truths) == 0:
        return tp
    iou = box_iou(detections, truths)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(truths), dtype=bool)
        for d in range(len(detections)):
            candidates = np.where(taken, -1.0, iou[d])
            best = int(np.argmax(candidates))
            if candidates[best] >= threshold:
                taken[best] = True
                tp[d, t] = True
    return tp


def _average_precision(tp: np.ndarray, scores: np.ndarray, num_truths: int) -> np.ndarray:
    """101-point interpolated AP at each IoU threshold from pooled TP flags and scores."""
    ap = np.zeros(tp.shape[1])
    if len(scores) == 0:
        return ap
    order = np.argsort(-scores, kind="mergesort")
    tp_cum = np.cumsum(tp[order], axis=0)
    fp_cum = np.cumsum(~tp[order], axis=0)
    for t in range(tp.shape[1]):
        recall = tp_cum[:, t] / num_truths
        precision = tp_cum[:, t] / np.maximum(tp_cum[:, t] + fp_cum[:, t], np.finfo(np.float64).eps)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, RECALL_POINTS, side="left")
        sampled = np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)
        ap[t] = sampled.mean()
    return ap


def mean_average_precision(
    detections: Sequence[Boxes], truths: Sequence[Boxes], classes: Iterable[int] | None = None, max_det: int = 100
) -> MapResult:
    """COCO mAP over ``classes`` (default: all) that have at least one ground-truth box.

    ``detections[i]`` and ``truths[i]`` belong to the same image; detections of classes not
    evaluated are ignored. Returns NaN means when no evaluated class has ground truth.
    """
    if len(detections) != len(truths):
        raise ValueError("detections and truths must list the same images")
    present = set(np.concatenate([t.classes for t in truths]).tolist()) if truths else set()
    evaluated = sorted(present if classes is None else present & set(classes))
    ap: dict[int, np.ndarray] = {}
    for cls in evaluated:
        flags, scores, num_truths = [], [], 0
        for det, gt in zip(detections, truths, strict=True):
            gt_boxes = gt.xyxy[gt.classes == cls]
            num_truths += len(gt_boxes)
            mine = np.flatnonzero(det.classes == cls)
            mine = mine[np.argsort(-det.scores[mine], kind="mergesort")][:max_det]
            flags.append(_match_image(det.xyxy[mine], gt_boxes))
            scores.append(det.scores[mine])
        ap[cls] = _average_precision(np.concatenate(flags), np.concatenate(scores), num_truths)
    if not ap:
        return MapResult(float("nan"), float("nan"), ap)
    table = np.stack(list(ap.values()))
    return MapResult(float(table.mean()), float(table[:, 0].mean()), ap)
