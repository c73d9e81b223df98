"""The cloud detector (Ultralytics YOLO, offline) run as ``ultralytics val`` does: conf 0.001, NMS IoU 0.7."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .detection_map import Boxes

ROAD_USERS = [0, 1, 2, 3, 5, 7]  # COCO person, bicycle, car, motorcycle, bus, truck
PSEUDO_LABEL_SCORE = 0.25
PREDICT_ARGS = {"conf": 0.001, "iou": 0.7, "imgsz": 640, "max_det": 300, "verbose": False}


def configure_offline() -> None:
    """Keep Ultralytics from looking up hosts and writing settings outside a temporary folder."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "icmh-ultralytics"))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)


class Detector:
    """YOLO checkpoint -> COCO-80 detections of an RGB image."""

    def __init__(self, checkpoint: str | Path) -> None:
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise FileNotFoundError(f"detector checkpoint not found: {checkpoint}")
        configure_offline()
        from ultralytics import YOLO

        self.checkpoint = checkpoint
        self.model = YOLO(str(checkpoint))

    def detect(self, image: np.ndarray) -> Boxes:
        result = self.model.predict(np.ascontiguousarray(image[:, :, ::-1]), **PREDICT_ARGS)[0]  # YOLO takes BGR
        boxes = result.boxes
        return Boxes(boxes.xyxy.cpu().numpy(), boxes.cls.cpu().numpy(), boxes.conf.cpu().numpy())

    def pseudo_truth(self, image: np.ndarray) -> Boxes:
        """The detector's confident road-user boxes on an original image: ground truth for asking how
        much of what the cloud would detect survives a codec."""
        found = self.detect(image)
        keep = (found.scores >= PSEUDO_LABEL_SCORE) & np.isin(found.classes, ROAD_USERS)
        return Boxes(found.xyxy[keep], found.classes[keep])
