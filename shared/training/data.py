"""Training images held in memory, random crops for the training loops.

Only the training sets named in ../shared/DATA.md are ever read here:
bsds500 (train, test; val is held out for monitoring), road_traffic4/train and
frames of the two traffic videos. Evaluation sets (kodak, road_traffic4/val,
coco128) are refused by :func:`check_training_path`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..media import iter_video_frames, read_rgb
from ..splits import check_training_path, is_road_traffic4_selection, video_frames


def read_yolo_boxes(label_path: Path, height: int, width: int) -> np.ndarray:
    """YOLO txt labels -> (N, 4) pixel boxes x0, y0, x1, y1."""
    boxes = []
    if label_path.exists():
        for line in label_path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue
            _, cx, cy, w, h = (float(v) for v in parts)
            boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


@dataclass
class Sample:
    """One training image, its identity (for mask caching) and its labelled boxes, if any."""

    key: str
    image: np.ndarray
    boxes: np.ndarray | None = None


@dataclass
class TrainingSet:
    samples: list[Sample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


def load_training_set(shared_dir: Path, video_stride: int = 4, held_out: bool = False) -> TrainingSet:
    """Load the training images (or, with ``held_out``, the bsds500/val monitoring images).

    Part of the training sets is kept out of training for detector-based checkpoint selection
    (:func:`load_detection_monitor_set`).
    """
    data = shared_dir / "data"
    out = TrainingSet()
    if held_out:
        for path in sorted((data / "bsds500" / "val").glob("*.jpg")):
            out.samples.append(Sample(f"bsds500/val/{path.name}", read_rgb(path)))
        return out
    for split in ("train", "test"):
        for path in sorted((data / "bsds500" / split).glob("*.jpg")):
            check_training_path(path)
            out.samples.append(Sample(f"bsds500/{split}/{path.name}", read_rgb(path)))
    rt4 = data / "road_traffic4" / "train"
    for index, path in enumerate(sorted((rt4 / "images").glob("*.jpg"))):
        check_training_path(path)
        if is_road_traffic4_selection(index):
            continue
        image = read_rgb(path)
        boxes = read_yolo_boxes(rt4 / "labels" / (path.stem + ".txt"), *image.shape[:2])
        out.samples.append(Sample(f"road_traffic4/train/{path.name}", image, boxes))
    for video in sorted((data / "traffic").glob("*.mp4")):
        frames = list(iter_video_frames(video))
        for index in video_frames(len(frames), "train", video_stride):
            out.samples.append(Sample(f"traffic/{video.name}#{index}", frames[index]))
    return out


def load_detection_monitor_set(shared_dir: Path) -> TrainingSet:
    """Training-set images never trained on, to select checkpoints by detector accuracy: the selection
    part of shared/splits.py (every 15th road_traffic4/train image, the selection frames of each video)."""
    data = shared_dir / "data"
    out = TrainingSet()
    for index, path in enumerate(sorted((data / "road_traffic4" / "train" / "images").glob("*.jpg"))):
        if is_road_traffic4_selection(index):
            out.samples.append(Sample(f"road_traffic4/train/{path.name}", read_rgb(path)))
    for video in sorted((data / "traffic").glob("*.mp4")):
        frames = list(iter_video_frames(video))
        for index in video_frames(len(frames), "selection"):
            out.samples.append(Sample(f"traffic/{video.name}#{index}", frames[index]))
    return out


class CropSampler:
    """Random crops (with horizontal flips) of images and their masks, as float batches."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray] | None, crop: int, seed: int = 0):
        keep = [i for i, im in enumerate(images) if min(im.shape[:2]) >= crop]
        self.images = [images[i] for i in keep]
        self.masks = None if masks is None else [masks[i] for i in keep]
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray | None]:
        c = self.crop
        xs = np.empty((size, c, c, 3), np.uint8)
        ms = None if self.masks is None else np.empty((size, c, c), np.float32)
        for b in range(size):
            i = int(self.rng.integers(len(self.images)))
            im = self.images[i]
            y0 = int(self.rng.integers(im.shape[0] - c + 1))
            x0 = int(self.rng.integers(im.shape[1] - c + 1))
            flip = bool(self.rng.integers(2))
            patch = im[y0 : y0 + c, x0 : x0 + c]
            xs[b] = patch[:, ::-1] if flip else patch
            if ms is not None:
                m = self.masks[i][y0 : y0 + c, x0 : x0 + c]
                ms[b] = m[:, ::-1] if flip else m
        return xs, ms
