"""Operator API messages as the JSON the web view reads (numbers as numbers, times as epoch milliseconds)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from icmh.rpc import common_pb2, operator_pb2
from icmh.service.edge_config import CONFIG_FIELDS

QUALITIES = {"machine": operator_pb2.QUALITY_MACHINE, "human": operator_pb2.QUALITY_HUMAN,
             "original": operator_pb2.QUALITY_ORIGINAL}
QUALITY_NAMES = {value: name for name, value in QUALITIES.items()}


def time_ms(ts: Timestamp) -> float | None:
    """Milliseconds since the epoch; None for an unset timestamp."""
    return ts.ToNanoseconds() / 1e6 if ts.seconds or ts.nanos else None


def bits_per_pixel(size_bytes: int, width: int, height: int) -> float:
    return 8.0 * size_bytes / (width * height) if width and height else 0.0


def detection(d: common_pb2.Detection) -> dict[str, Any]:
    return {"class_name": d.class_name, "class_id": d.class_id, "confidence": round(d.confidence, 4),
            "box": [d.box.x1, d.box.y1, d.box.x2, d.box.y2]}


def detections(items: Iterable[common_pb2.Detection]) -> list[dict[str, Any]]:
    return [detection(d) for d in items]


def config(message: common_pb2.EdgeConfig) -> dict[str, float]:
    return {name: round(getattr(message, name), 6) for name in CONFIG_FIELDS if message.HasField(name)}


def frame(f: operator_pb2.FrameInfo) -> dict[str, Any]:
    return {"frame_id": f.frame_id, "capture_ms": time_ms(f.capture_time), "receive_ms": time_ms(f.receive_time),
            "width": f.width, "height": f.height, "base_rate": round(f.base_rate, 4), "base_bytes": f.base_bytes,
            "residual_bytes": f.residual_bytes, "base_bpp": f.base_bpp,
            "residual_bpp": bits_per_pixel(f.residual_bytes, f.width, f.height), "detected": f.detected,
            "detection_count": f.detection_count}


def layer_bpp(frames: list[operator_pb2.FrameInfo]) -> dict[str, float | None]:
    """Mean bits per pixel of each layer over ``frames`` (residual: frames whose edge reported one; None: none)."""
    base = [f.base_bpp for f in frames]
    residual = [bits_per_pixel(f.residual_bytes, f.width, f.height) for f in frames if f.residual_bytes]
    return {"base": sum(base) / len(base) if base else None,
            "residual": sum(residual) / len(residual) if residual else None}


def camera(c: operator_pb2.CameraInfo, recent: list[operator_pb2.FrameInfo]) -> dict[str, Any]:
    """One camera of ``ListCameras`` with the layers' bits per pixel over its ``recent`` frames."""
    return {"camera_id": c.camera_id, "online": c.state == operator_pb2.CAMERA_STATE_ONLINE, "fps": round(c.fps, 3),
            "last_frame_id": c.last_frame_id, "last_capture_ms": time_ms(c.last_capture_time),
            "frames_stored": c.frames_stored, "width": c.width, "height": c.height,
            "residual_mode": common_pb2.ResidualMode.Name(c.residual_mode).removeprefix("RESIDUAL_MODE_").lower(),
            "config": config(c.config), "bpp": layer_bpp(recent), "bpp_frames": len(recent)}


def result(r: common_pb2.DetectionResult) -> dict[str, Any]:
    return {"camera_id": r.camera_id, "frame_id": r.frame_id, "capture_ms": time_ms(r.capture_time),
            "detect_ms": time_ms(r.detect_time), "width": r.width, "height": r.height,
            "detections": detections(r.detections), "error": r.error}


def inspection(reply: operator_pb2.GetFrameResponse, cloud_ms: float) -> dict[str, Any]:
    """A ``GetFrame`` reply: the PNG as a data URL, layer sizes and bpp, and ``cloud_ms`` the call took."""
    return {"frame": frame(reply.frame), "quality": QUALITY_NAMES.get(reply.quality, str(reply.quality)),
            "png": "data:image/png;base64," + base64.b64encode(reply.png).decode("ascii"),
            "detections": detections(reply.detections), "base_bytes": reply.base_bytes,
            "residual_bytes": reply.residual_bytes, "lossless_bytes": reply.lossless_bytes,
            "base_bpp": reply.base_bpp, "residual_bpp": reply.residual_bpp,
            "residual_rate": round(reply.residual_rate, 4),
            "lossless_bpp": bits_per_pixel(reply.lossless_bytes, reply.frame.width, reply.frame.height),
            "cloud_ms": round(cloud_ms, 1)}
