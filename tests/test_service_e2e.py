"""Edge nodes and a cloud server over real gRPC on 127.0.0.1: frames -> detections -> inspection."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_support import (
    FRAME_SIZE,
    OPERATOR_TOKEN,
    VIDEO,
    Subscriber,
    edge_settings,
    frame_ids,
    free_port,
    get_frame,
    operator,
    rpc_error,
    start_cloud,
    start_edge,
    wait_for,
)

from icmh.cloud import operator_cli
from icmh.cloud.server import CloudServer
from icmh.codec.api import ScalableCodec
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR
from icmh.edge.source import FrameSource
from icmh.edge.store import StoreLimits
from icmh.metrics import psnr
from icmh.rpc import common_pb2, operator_pb2
from icmh.service.images import decode_png

CAMERAS = {c: f"token-{c}" for c in ("cam-main", "cam-evict", "cam-a", "cam-b", "cam-config", "cam-cli", "cam-idle")}
MACHINE, HUMAN = operator_pb2.QUALITY_MACHINE, operator_pb2.QUALITY_HUMAN
WIDTH, HEIGHT = FRAME_SIZE


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, shared_dir: Path) -> CloudServer:
    server = start_cloud(tmp_path_factory.mktemp("e2e"), tiny_weights, shared_dir, CAMERAS, metrics_port=free_port())
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def codec(tiny_weights: Path) -> ScalableCodec:
    return ScalableCodec.from_weights(tiny_weights, mode="pr")


def edge(cloud: CloudServer, tmp_path: Path, camera: str, shared_dir: Path, weights: Path, **overrides: object):
    return start_edge(edge_settings(tmp_path / camera, camera, CAMERAS[camera], cloud.port, shared_dir, weights,
                                    **overrides))


def test_frames_flow_to_detections_and_inspection(cloud: CloudServer, codec: ScalableCodec, tmp_path: Path,
                                                  shared_dir: Path, tiny_weights: Path) -> None:
    subscriber = Subscriber(cloud.port, ["cam-main"])
    wait_for(lambda: cloud.hub.count >= 1, what="the subscription")
    node = edge(cloud, tmp_path, "cam-main", shared_dir, tiny_weights, max_frames=4)
    try:
        wait_for(lambda: len(subscriber.ids("cam-main")) >= 4, what="4 live detection results")
        assert subscriber.ids("cam-main") == [1, 2, 3, 4]
        assert frame_ids(cloud.settings.detections_jsonl, "cam-main") == [1, 2, 3, 4]
        for result in subscriber.results:
            assert (result.width, result.height) == FRAME_SIZE and not result.error
            assert result.capture_time.ToNanoseconds() <= result.detect_time.ToNanoseconds()

        frames = operator(cloud.port).ListFrames(operator_pb2.ListFramesRequest(camera_id="cam-main")).frames
        assert [f.frame_id for f in frames] == [4, 3, 2, 1] and all(f.detected for f in frames)
        assert all(f.base_bpp == pytest.approx(8 * f.base_bytes / (WIDTH * HEIGHT)) for f in frames)
        cameras = {c.camera_id: c for c in operator(cloud.port).ListCameras(operator_pb2.ListCamerasRequest()).cameras}
        main = cameras["cam-main"]
        assert main.state == operator_pb2.CAMERA_STATE_ONLINE and main.last_frame_id == 4
        assert (main.width, main.height, main.residual_mode) == (WIDTH, HEIGHT, common_pb2.RESIDUAL_MODE_PR)
        assert cameras["cam-idle"].state == operator_pb2.CAMERA_STATE_OFFLINE

        # Inspection: the images are exactly the codec's decodes of the layers the cloud and the edge hold (views in
        # float pixels by default, see test_lossless for --exact-views)
        machine, human = get_frame(cloud.port, "cam-main", 2, MACHINE), get_frame(cloud.port, "cam-main", 2, HUMAN)
        base, residual = cloud.index.base_layer("cam-main", 2), node.store.residual(2)
        machine_image, human_image = decode_png(machine.png), decode_png(human.png)
        assert machine_image.shape == human_image.shape == (HEIGHT, WIDTH, 3)
        assert np.array_equal(machine_image, codec.decode_machine(base, exact_pixels=False))
        assert np.array_equal(human_image, codec.decode_human(base, residual, exact_pixels=False))
        assert not np.array_equal(human_image, machine_image)  # the residual layer was applied
        assert (machine.residual_bytes, human.residual_bytes) == (0, len(residual))
        assert human.base_bytes == len(base) and human.frame.frame_id == 2
        assert node.metrics.registry.get_sample_value("icmh_edge_frames_encoded_total") == 4
    finally:
        node.close()
        subscriber.close()


def test_human_inspection_errors_when_residual_evicted_or_edge_offline(
        cloud: CloudServer, tmp_path: Path, shared_dir: Path, tiny_weights: Path) -> None:
    node = edge(cloud, tmp_path, "cam-evict", shared_dir, tiny_weights, limits=StoreLimits(residual_bytes=1))
    jsonl = cloud.settings.detections_jsonl
    try:
        wait_for(lambda: frame_ids(jsonl, "cam-evict") == [1, 2, 3], what="3 detection results")
        assert node.store.residual_usage().frames == 0  # every residual exceeds the 1-byte store
        error = rpc_error(lambda: get_frame(cloud.port, "cam-evict", 2, HUMAN))
        assert error.code() == grpc.StatusCode.NOT_FOUND and "no longer holds" in error.details()
        assert get_frame(cloud.port, "cam-evict", 2, MACHINE).png  # the machine image needs only the cloud
    finally:
        node.close()
    wait_for(lambda: cloud.sessions.get("cam-evict") is None, what="the edge to go offline")
    error = rpc_error(lambda: get_frame(cloud.port, "cam-evict", 3, HUMAN))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "offline" in error.details()
    error = rpc_error(lambda: get_frame(cloud.port, "cam-evict", 99, MACHINE))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_two_edges_stream_at_once(cloud: CloudServer, tmp_path: Path, shared_dir: Path, tiny_weights: Path) -> None:
    metrics_port = free_port()
    nodes = [edge(cloud, tmp_path, "cam-a", shared_dir, tiny_weights, metrics_port=metrics_port),
             edge(cloud, tmp_path, "cam-b", shared_dir, tiny_weights)]
    jsonl = cloud.settings.detections_jsonl
    try:
        wait_for(lambda: cloud.sessions.count() >= 2, what="both edges online")
        wait_for(lambda: len(frame_ids(jsonl, "cam-a")) == 3 and len(frame_ids(jsonl, "cam-b")) == 3,
                 what="3 results per camera")
        assert frame_ids(jsonl, "cam-a") == frame_ids(jsonl, "cam-b") == [1, 2, 3]
        cameras = {c.camera_id: c for c in operator(cloud.port).ListCameras(operator_pb2.ListCamerasRequest()).cameras}
        assert cameras["cam-a"].last_frame_id == cameras["cam-b"].last_frame_id == 3
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "icmh_edge_frames_encoded_total 3.0" in scraped
        assert 'icmh_edge_bits_per_pixel_count{layer="base"} 3.0' in scraped
    finally:
        for node in nodes:
            node.close()


def test_cloud_config_changes_the_edge_rate(cloud: CloudServer, tmp_path: Path, shared_dir: Path,
                                            tiny_weights: Path) -> None:
    node = edge(cloud, tmp_path, "cam-config", shared_dir, tiny_weights, max_frames=8, fps=4.0, base_rate=0.5)
    jsonl = cloud.settings.detections_jsonl
    try:
        wait_for(lambda: frame_ids(jsonl, "cam-config"), what="a first frame")
        reply = operator(cloud.port).ConfigureCamera(operator_pb2.ConfigureCameraRequest(
            camera_id="cam-config", config=common_pb2.EdgeConfig(base_rate=0.2)))
        assert reply.delivered and reply.config.base_rate == pytest.approx(0.2)
        wait_for(lambda: len(frame_ids(jsonl, "cam-config")) == 8, what="8 results")
        rates = [f.base_rate for f in operator(cloud.port).ListFrames(
            operator_pb2.ListFramesRequest(camera_id="cam-config")).frames]
        assert rates[-1] == pytest.approx(0.5, abs=1 / 255) and rates[0] == pytest.approx(0.2, abs=1 / 255)
        bad = rpc_error(lambda: operator(cloud.port).ConfigureCamera(operator_pb2.ConfigureCameraRequest(
            camera_id="cam-config", config=common_pb2.EdgeConfig(base_rate=1.5))))
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        node.close()


def test_operator_cli(cloud: CloudServer, tmp_path: Path, shared_dir: Path, tiny_weights: Path,
                      capsys: pytest.CaptureFixture) -> None:
    node = edge(cloud, tmp_path, "cam-cli", shared_dir, tiny_weights, max_frames=2)
    server = ["--server", f"127.0.0.1:{cloud.port}", "--token", OPERATOR_TOKEN]
    try:
        wait_for(lambda: frame_ids(cloud.settings.detections_jsonl, "cam-cli") == [1, 2], what="2 results")
        assert operator_cli.main([*server, "cameras"]) == 0
        assert "cam-cli" in capsys.readouterr().out
        assert operator_cli.main([*server, "frames", "--camera", "cam-cli"]) == 0
        assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["2", "1"]
        out = tmp_path / "frame.png"
        assert operator_cli.main([*server, "inspect", "--camera", "cam-cli", "--frame", "1", "--quality", "human",
                                  "-o", str(out)]) == 0
        assert decode_png(out.read_bytes()).shape == (HEIGHT, WIDTH, 3)
        assert operator_cli.main([*server, "inspect", "--camera", "cam-cli", "--frame", "7", "-o", str(out)]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
    finally:
        node.close()


def test_health_and_reflection(cloud: CloudServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{cloud.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "icmh.v1.EdgeLink", "icmh.v1.Operator", "icmh.v1.Detections"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for s in next(iter(replies)).list_services_response.service}
    assert {"icmh.v1.EdgeLink", "icmh.v1.Operator", "icmh.v1.Detections", "grpc.health.v1.Health"} <= names
    channel.close()
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{cloud.settings.metrics_port}/metrics", timeout=10).read()
    assert b"icmh_cloud_edges_connected" in scraped and b"icmh_cloud_detect_seconds" in scraped


@pytest.mark.skipif(not all((SHIPPED_DIR / LAYER_FILES[k]).exists() for k in ("base", "pr")),
                    reason="trained weights not shipped yet (tiny random codecs give no quality ordering)")
def test_human_closer_to_original_than_machine_with_shipped_weights(tmp_path: Path, shared_dir: Path) -> None:
    server = start_cloud(tmp_path, SHIPPED_DIR, shared_dir, {"cam-q": "token-q"})
    node = start_edge(edge_settings(tmp_path / "edge", "cam-q", "token-q", server.port, shared_dir, None,
                                    max_frames=1))
    try:
        wait_for(lambda: frame_ids(server.settings.detections_jsonl, "cam-q") == [1], what="the frame")
        source = FrameSource(str(shared_dir / VIDEO), size=FRAME_SIZE, max_frames=1)
        original = next(source.frames(threading.Event())).image
        source.close()
        machine = decode_png(get_frame(server.port, "cam-q", 1, MACHINE).png)
        human = decode_png(get_frame(server.port, "cam-q", 1, HUMAN).png)
        assert psnr(human, original) > psnr(machine, original)
    finally:
        node.close()
        server.stop(grace=1)
