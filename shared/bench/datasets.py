"""Evaluation images from ../shared/data: labelled detection sets, Kodak, and traffic video frames."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from icmh.detector import ROAD_USERS, Boxes, YoloDetector

from ..media import iter_video_frames
from ..splits import video_frames

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
#: name -> (images folder, labels folder, class map file or None when labels are COCO-80 ids)
DETECTION_SETS = {
    "road_traffic4": ("data/road_traffic4/val/images", "data/road_traffic4/val/labels",
                      "data/road_traffic4/coco_class_map.json"),
    "coco128": ("data/coco128/images/train", "data/coco128/labels/train", None),
}
#: test frames of the traffic videos (shared/splits.py: never trained on, never used for checkpoint
#: selection), labelled with the detector's own boxes on the original frames (pseudo ground truth)
TRAFFIC_CAMS = "traffic_cams"
KODAK = "data/kodak"
TRAFFIC_VIDEO = "data/traffic/cvtrafficcam_street.mp4"
COCO80 = range(80)


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files of ``folder`` in name order, the first ``limit`` of them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    return paths[:limit] if limit else paths


@dataclass(frozen=True)
class LabelledImage:
    """An image path and its YOLO labels: COCO-80 class ids and normalised (cx, cy, w, h) boxes."""

    path: Path
    classes: np.ndarray
    cxcywh: np.ndarray

    def truth(self, width: int, height: int) -> Boxes:
        """Ground-truth boxes in pixels for an image of the given size."""
        c = self.cxcywh * np.array([width, height, width, height], dtype=np.float64)
        xyxy = np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], axis=1)
        return Boxes(xyxy, self.classes)


def _read_labels(path: Path, to_coco: dict[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(path, ndmin=2) if path.exists() and path.stat().st_size else np.zeros((0, 5))
    classes = rows[:, 0].astype(np.int64)
    if to_coco is not None:
        classes = np.array([to_coco[int(c)] for c in classes], dtype=np.int64)
    return classes, rows[:, 1:5].astype(np.float64)


def load_detection_set(shared: Path, name: str, limit: int | None = None) -> tuple[list[LabelledImage], list[int]]:
    """Images of a labelled set with labels mapped to COCO-80, and the COCO ids it evaluates."""
    if name not in DETECTION_SETS:
        raise ValueError(f"unknown detection set {name!r}; known: {sorted(DETECTION_SETS)}")
    images_dir, labels_dir, class_map = DETECTION_SETS[name]
    to_coco = None
    classes = list(COCO80)
    if class_map is not None:
        mapping = json.loads((shared / class_map).read_text())["to_coco80_index"]
        to_coco = {int(k): int(v) for k, v in mapping.items()}
        classes = sorted(to_coco.values())
    items = []
    for path in list_images(shared / images_dir, limit):
        labels, boxes = _read_labels(shared / labels_dir / f"{path.stem}.txt", to_coco)
        items.append(LabelledImage(path, labels, boxes))
    return items, classes


def read_video_frames(path: str | Path, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of a video as RGB images."""
    frames = list(itertools.islice(iter_video_frames(path), count))
    if not frames:
        raise ValueError(f"cannot read frames from {path}")
    return frames


def load_pseudo_labelled_frames(shared: Path, detector: YoloDetector, folder: Path,
                                limit: int | None = None) -> tuple[list[LabelledImage], list[int]]:
    """Test frames of the traffic videos (:func:`traffic_test_frames`) saved as PNG in ``folder``, each
    labelled with the detector's road-user boxes (score >= 0.25) on the original: accuracy on a decoded
    frame then says how much of what the cloud would detect on the original survives the codec."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for key, image in traffic_test_frames(shared)[:limit]:
        path = folder / (key.replace("/", "_").replace("#", "_") + ".png")
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        height, width = image.shape[:2]
        truth = detector.detect(image).road_users()
        xyxy = truth.xyxy / np.array([width, height, width, height], dtype=np.float64)
        cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        items.append(LabelledImage(path, truth.classes, cxcywh))
    return items, ROAD_USERS


def traffic_test_frames(shared: Path) -> list[tuple[str, np.ndarray]]:
    """(key, RGB frame) of the test part of every traffic video (shared/splits.py), in video then frame order."""
    out = []
    for video in sorted((shared / "data" / "traffic").glob("*.mp4")):
        frames = list(iter_video_frames(video))
        out += [(f"traffic/{video.name}#{i}", frames[i]) for i in video_frames(len(frames), "test")]
    return out
