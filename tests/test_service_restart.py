"""Restarts: a cloud killed mid-stream and restarted loses and repeats nothing; an edge restarted keeps
its residual store and its frame numbering."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from service_support import (
    DETECTOR_IMGSZ,
    VIDEO,
    edge_settings,
    frame_ids,
    free_port,
    get_frame,
    start_cloud,
    start_edge,
    wait_for,
)

from icmh.codec.api import ScalableCodec
from icmh.edge.store import EdgeStore
from icmh.rpc import operator_pb2
from icmh.service.images import decode_png

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 12


def cloud_process(tmp: Path, port: int, weights: Path, shared_dir: Path) -> subprocess.Popen:
    """The ``cloud-server`` CLI in its own process (so it can be killed like a crashed host)."""
    ready = tmp / "ready"
    ready.unlink(missing_ok=True)
    log = (tmp / "cloud.log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "icmh.cloud.cli", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "cloud"),
         "--camera", "cam-k=token-k", "--weights", str(weights), "--detector", str(shared_dir / "models/yolov8n.pt"),
         "--detector-imgsz", str(DETECTOR_IMGSZ), "--detections-jsonl", str(tmp / "detections.jsonl"),
         "--metrics-port", "0", "--threads", "1", "--ready-file", str(ready)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wait_for(lambda: ready.exists() or process.poll() is not None, timeout=120, what="the cloud process to serve")
    assert process.poll() is None, (tmp / "cloud.log").read_text()
    return process


@pytest.mark.slow
def test_cloud_killed_and_restarted_mid_stream_detects_every_frame_once(tmp_path: Path, tiny_weights: Path,
                                                                        shared_dir: Path) -> None:
    port, jsonl = free_port(), tmp_path / "detections.jsonl"
    cloud = cloud_process(tmp_path, port, tiny_weights, shared_dir)
    node = start_edge(edge_settings(tmp_path / "edge", "cam-k", "token-k", port, shared_dir, tiny_weights,
                                    max_frames=FRAMES, fps=4.0))
    try:
        wait_for(lambda: len(frame_ids(jsonl, "cam-k")) >= 2, what="the first results")
        cloud.send_signal(signal.SIGKILL)
        cloud.wait(timeout=30)
        detected_before = frame_ids(jsonl, "cam-k")
        assert len(detected_before) < FRAMES, "the stream ended before the kill: nothing was tested"
        cloud = cloud_process(tmp_path, port, tiny_weights, shared_dir)
        wait_for(lambda: len(frame_ids(jsonl, "cam-k")) >= FRAMES and node.store.outbox_usage().frames == 0,
                 timeout=120, what="every frame after the restart")
        ids = frame_ids(jsonl, "cam-k")
        assert sorted(ids) == list(range(1, FRAMES + 1)), f"lost or repeated frames: {ids}"
        assert node.metrics.registry.get_sample_value("icmh_edge_reconnects_total") >= 1
        assert node.link.sessions >= 2
    finally:
        node.close()
        cloud.send_signal(signal.SIGTERM)
        assert cloud.wait(timeout=60) == 0, "the cloud did not shut down cleanly on SIGTERM"


def test_edge_restart_keeps_residual_store_and_numbering(tmp_path: Path, tiny_weights: Path,
                                                         shared_dir: Path) -> None:
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-e": "token-e"})
    settings = edge_settings(tmp_path / "edge", "cam-e", "token-e", server.port, shared_dir, tiny_weights)
    jsonl = server.settings.detections_jsonl
    try:
        node = start_edge(settings)
        wait_for(lambda: frame_ids(jsonl, "cam-e") == [1, 2, 3], what="the first run's results")
        node.close()
        wait_for(lambda: server.sessions.get("cam-e") is None, what="the edge to go offline")

        node = start_edge(edge_settings(tmp_path / "edge", "cam-e", "token-e", server.port, shared_dir,
                                        tiny_weights, max_frames=2))
        try:
            wait_for(lambda: frame_ids(jsonl, "cam-e") == [1, 2, 3, 4, 5], what="the second run's results")
            human = decode_png(get_frame(server.port, "cam-e", 2, operator_pb2.QUALITY_HUMAN).png)
            codec = ScalableCodec.from_weights(tiny_weights, mode="pr")
            expected = codec.decode_human(server.index.base_layer("cam-e", 2), node.store.residual(2),
                                          exact_pixels=False)  # the cloud's view
            assert np.array_equal(human, expected)
        finally:
            node.close()
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_edge_cli_streams_and_stops_cleanly_on_sigterm(tmp_path: Path, tiny_weights: Path, shared_dir: Path) -> None:
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-cli": "token-cli"})
    edge = subprocess.Popen(
        [sys.executable, "-m", "icmh.edge.cli", "--camera-id", "cam-cli", "--cloud", f"127.0.0.1:{server.port}",
         "--source", str(shared_dir / VIDEO), "--max-frames", "2", "--width", "320", "--height", "192",
         "--weights", str(tiny_weights), "--data-dir", str(tmp_path / "edge"), "--metrics-port", "0",
         "--threads", "1"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "ICMH_EDGE_TOKEN": "token-cli"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(lambda: frame_ids(server.settings.detections_jsonl, "cam-cli") == [1, 2] or edge.poll() is not None,
                 timeout=120, what="the edge CLI's results")
        assert edge.poll() is None, edge.stdout.read()
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(timeout=60) == 0, edge.stdout.read()
        store = EdgeStore(tmp_path / "edge" / "edge.db")
        assert store.outbox_usage().frames == 0 and store.frame(2) is not None and store.next_frame_id() == 3
        store.close()
    finally:
        if edge.poll() is None:
            edge.kill()
        server.stop(grace=1)
