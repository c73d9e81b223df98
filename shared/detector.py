"""The one Ultralytics YOLO wrapper (offline): the cloud's detector, the benchmarks' evaluator, training's box masks.

Ultralytics is imported lazily, after :func:`configure_offline`, so that a checkpoint path is all it ever reads.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROAD_USERS = (0, 1, 2, 3, 5, 7)  # COCO person, bicycle, car, motorcycle, bus, truck
TRUTH_SCORE = 0.25  # detections on an original at or above this score serve as pseudo ground truth


def configure_offline() -> None:
    """Keep Ultralytics from looking up hosts and writing settings outside a temporary folder."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "icmh-ultralytics"))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def keeping_threads() -> Iterator[None]:
    """Undo what Ultralytics does to the process's threads.

    Its import sets ``OMP_NUM_THREADS=1`` (inherited by every child process) where unset, and setting up a
    predictor (the first ``predict``) calls ``torch.set_num_threads(min(8, cpu_count - 1))`` for the whole process:
    on a 2-core machine every later decode ran on one thread (1280x720 exact machine decode 555 -> 972 ms, base
    encode 285 -> 505 ms, measured on a 2-core AMD EPYC), in the cloud server after its first detection and in each
    benchmark stage after the first detector stage.
    """
    import torch

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def load_yolo(checkpoint: str | Path) -> Any:
    """``ultralytics.YOLO`` of a local checkpoint; a missing file is a clear error, never a download."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"detector checkpoint not found: {checkpoint}")
    configure_offline()
    with keeping_threads():
        from ultralytics import YOLO

        return YOLO(str(checkpoint))


@dataclass
class Boxes:
    """Boxes of one image: ``xyxy`` (n, 4) in pixels, ``classes`` (n,), ``scores`` (n,) for detections."""

    xyxy: np.ndarray
    classes: np.ndarray
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if len(self.scores) == 0:
            self.scores = np.ones(len(self.classes))
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if not len(self.xyxy) == len(self.classes) == len(self.scores):
            raise ValueError("xyxy, classes and scores must have the same length")

    def road_users(self, min_score: float = TRUTH_SCORE) -> Boxes:
        """The confident road-user boxes (pseudo ground truth when these are detections on an original)."""
        keep = (self.scores >= min_score) & np.isin(self.classes, ROAD_USERS)
        return Boxes(self.xyxy[keep], self.classes[keep])


class YoloDetector:
    """A YOLO checkpoint applied to RGB images, several per call."""

    def __init__(self, checkpoint: str | Path, *, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 300) -> None:
        self.checkpoint = Path(checkpoint)
        self.model = load_yolo(self.checkpoint)
        self.names: dict[int, str] = dict(self.model.names)
        self.predict_args = {"imgsz": imgsz, "conf": conf, "iou": iou, "max_det": max_det}
        # the predictor is set up (and the process's threads reset, see keeping_threads) on the first predict: do it
        # now, so that every detection runs on the process's threads, the first one too
        self.detect(np.zeros((32, 32, 3), np.uint8))

    def detect_batch(self, images_rgb: Sequence[np.ndarray]) -> list[Boxes]:
        """Boxes of every image (same order), in the image's pixels."""
        if not images_rgb:
            return []
        bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in images_rgb]  # YOLO takes BGR
        with keeping_threads():
            results = self.model.predict(bgr, verbose=False, **self.predict_args)
        return [Boxes(r.boxes.xyxy.cpu().numpy(), r.boxes.cls.cpu().numpy(), r.boxes.conf.cpu().numpy())
                for r in results]

    def detect(self, image_rgb: np.ndarray) -> Boxes:
        return self.detect_batch([image_rgb])[0]

    @classmethod
    def for_evaluation(cls, checkpoint: str | Path) -> YoloDetector:
        """Settings of ``ultralytics val`` (conf 0.001, NMS IoU 0.7): for mAP, not for publishing."""
        return cls(checkpoint, **EVALUATION_ARGS)


EVALUATION_ARGS: dict[str, Any] = {"imgsz": 640, "conf": 0.001, "iou": 0.7, "max_det": 300}
