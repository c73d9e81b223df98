"""Ultralytics YOLO on decoded machine images, several frames per call."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from shared.bench.detector import configure_offline

from .results import Detection


class YoloDetector:
    """``YOLO(path).predict`` on batches of RGB frames; offline (no hub look-ups)."""

    def __init__(self, model_path: str | Path, imgsz: int = 640, confidence: float = 0.25) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"detector checkpoint not found: {model_path}")
        configure_offline()
        from ultralytics import YOLO

        self.model = YOLO(str(model_path))
        self.imgsz, self.confidence = imgsz, confidence
        self.names: dict[int, str] = dict(self.model.names)

    def detect(self, images_rgb: list[np.ndarray]) -> list[tuple[Detection, ...]]:
        """Detections of every image (same order), boxes in the image's pixels."""
        if not images_rgb:
            return []
        bgr = [cv2.cvtColor(image, cv2.COLOR_RGB2BGR) for image in images_rgb]
        results = self.model.predict(bgr, imgsz=self.imgsz, conf=self.confidence, verbose=False)
        out = []
        for result in results:
            boxes = result.boxes
            classes = boxes.cls.int().tolist()
            out.append(tuple(
                Detection(self.names.get(c, str(c)), c, float(conf), tuple(float(v) for v in xyxy))
                for c, conf, xyxy in zip(classes, boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True)
            ))
        return out
