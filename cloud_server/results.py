"""Detection results: the record kept in the frame index, written to the JSON Lines sink and sent
as ``icmh.v1.DetectionResult``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from icmh.detector import Boxes
from icmh.rpc import common_pb2
from icmh.service.timestamps import to_timestamp


@dataclass(frozen=True)
class Detection:
    class_name: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels

    def to_json(self) -> dict[str, Any]:
        return {"class_name": self.class_name, "class_id": self.class_id,
                "confidence": round(self.confidence, 4), "box": [round(v, 1) for v in self.box]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Detection:
        return cls(d["class_name"], int(d["class_id"]), float(d["confidence"]), tuple(d["box"]))

    def to_proto(self) -> common_pb2.Detection:
        x1, y1, x2, y2 = self.box
        return common_pb2.Detection(class_name=self.class_name, class_id=self.class_id, confidence=self.confidence,
                                    box=common_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))


@dataclass(frozen=True)
class FrameResult:
    """The detector's answer for one frame (``error`` set when it could not be decoded or detected)."""

    camera_id: str
    frame_id: int
    capture_ns: int
    detect_ns: int
    width: int
    height: int
    detections: tuple[Detection, ...] = ()
    error: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.camera_id, self.frame_id

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "camera_id": self.camera_id, "frame_id": self.frame_id, "capture_ns": self.capture_ns,
            "detect_ns": self.detect_ns, "width": self.width, "height": self.height,
            "detections": [d.to_json() for d in self.detections],
        }
        if self.error:
            record["error"] = self.error
        return record

    def to_proto(self) -> common_pb2.DetectionResult:
        return common_pb2.DetectionResult(
            camera_id=self.camera_id, frame_id=self.frame_id, capture_time=to_timestamp(self.capture_ns),
            detect_time=to_timestamp(self.detect_ns), width=self.width, height=self.height,
            detections=[d.to_proto() for d in self.detections], error=self.error,
        )

    @classmethod
    def from_proto(cls, message: common_pb2.DetectionResult) -> FrameResult:
        """The inverse of :meth:`to_proto` (a result relayed by another replica)."""
        return cls(
            message.camera_id, message.frame_id, message.capture_time.ToNanoseconds(),
            message.detect_time.ToNanoseconds(), message.width, message.height,
            tuple(Detection(d.class_name, d.class_id, d.confidence, (d.box.x1, d.box.y1, d.box.x2, d.box.y2))
                  for d in message.detections), message.error)


def detections_to_json(detections: tuple[Detection, ...]) -> list[dict[str, Any]]:
    return [d.to_json() for d in detections]


def detections_from_json(items: list[dict[str, Any]]) -> tuple[Detection, ...]:
    return tuple(Detection.from_json(d) for d in items)


def detections_from_boxes(boxes: Boxes, names: dict[int, str]) -> tuple[Detection, ...]:
    """The detector's boxes of one frame as published detections (class names from the checkpoint)."""
    return tuple(
        Detection(names.get(int(c), str(int(c))), int(c), float(score), tuple(float(v) for v in xyxy))
        for xyxy, c, score in zip(boxes.xyxy, boxes.classes, boxes.scores, strict=True)
    )
