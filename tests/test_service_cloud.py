"""Cloud server parts on their own: frame index admission, the detector loop's batching and
exactly-once delivery after a crash, the JSON Lines sink, subscriber filters, the camera registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from service_support import encode_frames, read_jsonl, shared_detector

from icmh.cloud.auth import AuthError, CameraRegistry
from icmh.cloud.codecs import CloudCodecs
from icmh.cloud.frame_index import Admission, FrameIndex, FrameState
from icmh.cloud.jsonl_sink import JsonlSink
from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.pipeline import DetectionPipeline
from icmh.cloud.results import Detection, FrameResult, detections_from_boxes
from icmh.cloud.subscribers import ResultFilter, SubscriberHub
from icmh.codec.api import ScalableCodec


@pytest.fixture(scope="module")
def base_layer(tiny_weights: Path, shared_dir: Path) -> bytes:
    return encode_frames(ScalableCodec.from_weights(tiny_weights), shared_dir, 1)[0]


def add(index: FrameIndex, camera: str, frame_id: int, base: bytes) -> Admission:
    return index.add_frame(camera, frame_id, 10**18 + frame_id, 0.5, base, 320, 192, 100)


def test_index_admission_duplicates_conflicts_and_retention(tmp_path: Path) -> None:
    index = FrameIndex(tmp_path / "frames.db")
    index.register_camera("c", 320, 192, "pr")
    assert [add(index, "c", i, b"layer%d" % i) for i in (1, 2, 3)] == [Admission.ACCEPTED] * 3
    assert add(index, "c", 2, b"layer2") is Admission.DUPLICATE
    assert add(index, "c", 2, b"other") is Admission.CONFLICT
    assert add(index, "d", 2, b"layer2") is Admission.ACCEPTED  # ids are per camera
    assert [r.frame_id for r, _ in index.pending(10)] == [1, 2, 3, 2]
    assert index.prune(max_bytes=1) == 0  # frames not yet published are never removed
    index.mark_published([("c", 1), ("c", 2)])
    assert index.prune(max_bytes=len(b"layer3") * 2) == 2
    assert index.frame("c", 1) is None and index.camera("c").last_frame_id == 3
    assert add(index, "c", 1, b"layer1") is Admission.DUPLICATE  # removed, but known as received
    index.close()
    reopened = FrameIndex(tmp_path / "frames.db")
    assert reopened.frame("c", 3).state is FrameState.RECEIVED and reopened.usage() == (2, 12, 2)


def test_pipeline_batches_across_cameras_and_recovers_exactly_once(tmp_path: Path, tiny_weights: Path,
                                                                   shared_dir: Path, base_layer: bytes) -> None:
    index, metrics, hub = FrameIndex(tmp_path / "frames.db"), CloudMetrics(), SubscriberHub()
    sink = JsonlSink(tmp_path / "d.jsonl")
    subscription = hub.subscribe(ResultFilter())
    codecs, detector = CloudCodecs(tiny_weights), shared_detector(shared_dir / "models" / "yolov8n.pt")
    pipeline = DetectionPipeline(index, codecs, detector, hub, sink, metrics, max_batch=8)
    for camera in ("a", "b"):
        for frame_id in (1, 2):
            add(index, camera, frame_id, base_layer)
    results = pipeline.process(index.pending(8))
    assert [r.key for r in results] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert metrics.registry.get_sample_value("icmh_cloud_detect_batch_size_count") == 1  # one detector call
    assert metrics.registry.get_sample_value("icmh_cloud_detect_batch_size_sum") == 4
    assert subscription.queue.qsize() == 4 and index.pending(8) == []
    assert [(r["camera_id"], r["frame_id"]) for r in read_jsonl(sink.path)] == [r.key for r in results]

    # A crash after storing results but before (or while) writing them: the restart writes each exactly once.
    add(index, "a", 3, base_layer)
    add(index, "a", 4, base_layer)
    stored = [FrameResult("a", i, 1, 2, 320, 192) for i in (3, 4)]
    index.record_results(stored)
    sink.write(stored[:1])
    with sink.path.open("a") as f:
        f.write('{"camera_id": "a", "frame_id": 4, "tor')  # torn by the crash
    sink.close()
    sink = JsonlSink(tmp_path / "d.jsonl")
    restarted = DetectionPipeline(index, codecs, detector, SubscriberHub(), sink, metrics)
    restarted.publish_unpublished()
    keys = [(r["camera_id"], r["frame_id"]) for r in read_jsonl(sink.path)]
    assert keys.count(("a", 3)) == 1 and keys.count(("a", 4)) == 1 and len(keys) == 6
    assert index.unpublished() == [] and index.frame("a", 4).state is FrameState.PUBLISHED


def test_pipeline_reports_undecodable_frames(tmp_path: Path, tiny_weights: Path, shared_dir: Path) -> None:
    index, metrics = FrameIndex(tmp_path / "frames.db"), CloudMetrics()
    pipeline = DetectionPipeline(index, CloudCodecs(tiny_weights), shared_detector(shared_dir / "models/yolov8n.pt"),
                                 SubscriberHub(), None, metrics)
    add(index, "a", 1, b"garbage that passed no check")
    [result] = pipeline.process(index.pending(8))
    assert result.error.startswith("decode failed") and result.detections == ()
    assert metrics.registry.get_sample_value("icmh_cloud_errors_total", {"kind": "decode"}) == 1


def test_detector_finds_traffic_on_an_original_frame(shared_dir: Path) -> None:
    """The tiny random codecs decode to noise, so the detector's parsing is checked on a real frame."""
    from icmh.edge.source import FrameSource

    source = FrameSource(str(shared_dir / "data/traffic/cvtrafficcam_street.mp4"), max_frames=1)
    width, height = source.open()
    image = next(source.frames(threading.Event())).image
    source.close()
    detector = shared_detector(shared_dir / "models" / "yolov8n.pt")
    found = detections_from_boxes(detector.detect(image), detector.names)
    assert {d.class_name for d in found} & {"car", "truck", "bus", "person"}, found
    for d in found:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= width + 1 and 0 <= y1 < y2 <= height + 1 and 0.25 <= d.confidence <= 1


THREADS_SCRIPT = """
import os, sys, numpy as np, torch
from icmh.detector import YoloDetector
torch.set_num_threads(os.cpu_count() + 1)  # never what Ultralytics sets, min(8, cores - 1) or 1
detector = YoloDetector(sys.argv[1], imgsz=320)
after_setup = torch.get_num_threads()
detector.detect(np.zeros((64, 96, 3), np.uint8))
print(os.cpu_count() + 1, after_setup, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
"""


def test_the_detector_leaves_the_process_threads_alone(shared_dir: Path) -> None:
    """Ultralytics' import sets OMP_NUM_THREADS=1 and its predictor set-up resets torch to min(8, cores - 1)
    threads: the wrapper puts both back, so the cloud's decoding keeps its threads after the first detection (on 2
    cores it had run on one from then on). In a fresh process, where Ultralytics is imported for the first time."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(shared_dir / "models" / "yolov8n.pt")],
                         capture_output=True, text=True, env=env, timeout=300, check=True)
    wanted, after_setup, after_detect, omp = out.stdout.split()[-4:]
    assert after_setup == after_detect == wanted
    assert omp == "None"


def test_subscriber_filters() -> None:
    car, person = Detection("car", 2, 0.9, (0, 0, 1, 1)), Detection("person", 0, 0.3, (0, 0, 1, 1))
    result = FrameResult("a", 1, 0, 0, 10, 10, (car, person))
    assert ResultFilter().apply(result) is result
    assert ResultFilter(camera_ids=frozenset({"b"})).apply(result) is None
    assert ResultFilter(class_names=frozenset({"person"})).apply(result).detections == (person,)
    assert ResultFilter(min_confidence=0.5).apply(result).detections == (car,)
    assert ResultFilter(class_names=frozenset({"person"}), min_confidence=0.5).apply(result) is None
    assert ResultFilter().apply(FrameResult("a", 2, 0, 0, 10, 10)) is not None  # empty results reach everyone


def test_slow_subscriber_is_ended_not_silently_starved() -> None:
    hub = SubscriberHub(capacity=2)
    subscription = hub.subscribe(ResultFilter())
    hub.publish([FrameResult("a", i, 0, 0, 1, 1) for i in range(3)])
    items = [subscription.queue.get_nowait() for _ in range(3)]
    assert items[-1] is None and subscription.overflowed and hub.count == 0


def test_camera_registry(tmp_path: Path) -> None:
    path = tmp_path / "cameras.json"
    path.write_text(json.dumps({"cameras": {
        "north": {"token": "n-secret", "config": {"base_rate": 0.3}},
        "south": {"token_sha256": hashlib.sha256(b"s-secret").hexdigest()},
    }}))
    registry = CameraRegistry.load(path, ["east=e-secret", "north=override"])
    assert registry.ids() == ["east", "north", "south"]
    assert registry.authenticate("south", "s-secret").camera_id == "south"
    assert registry.authenticate("north", "override").config == {"base_rate": 0.3}
    for camera, token, code in (("north", "n-secret", grpc.StatusCode.UNAUTHENTICATED),
                                ("west", "x", grpc.StatusCode.PERMISSION_DENIED),
                                ("east", "", grpc.StatusCode.UNAUTHENTICATED)):
        with pytest.raises(AuthError) as caught:
            registry.authenticate(camera, token)
        assert caught.value.code == code
    for bad, message in (({"cameras": {"x": {}}}, "neither"), ({"cameras": {"x": {"token": "t", "config":
                         {"base_rate": 3}}}}, "base rate"), ({"nope": 1}, "cannot read")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            CameraRegistry.load(path)
    with pytest.raises(ValueError, match="ID=TOKEN"):
        CameraRegistry.load(None, ["no-token"])
    with pytest.raises(ValueError, match="no camera"):
        CameraRegistry.load(None, [])
    example = CameraRegistry.load(Path(__file__).resolve().parents[1] / "deploy" / "cameras.example.json")
    assert example.authenticate("cam-south", "change-me-south").config == {"target_kbps": 300.0}
