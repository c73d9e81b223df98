"""Residual policies of the edge: lazy residuals equal eager ones, the inspection store, HUMAN over gRPC."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_support import FRAME_SIZE, VIDEO, edge_settings, frame_ids, get_frame, start_cloud, start_edge, wait_for

from icmh.codec import ScalableCodec, lossless
from icmh.edge.capture import CaptureLoop
from icmh.edge.layers import InspectionLayers
from icmh.edge.metrics import EdgeMetrics
from icmh.edge.source import FrameSource
from icmh.edge.store import EdgeStore, StoreLimits
from icmh.rpc import operator_pb2
from icmh.service.images import decode_png
from tests.test_codec import kodak


@pytest.fixture(scope="module")
def frames(shared_dir: Path) -> list[np.ndarray]:
    return [kodak(shared_dir, name)[:160, :224] for name in ("03.png", "15.png")]


def capture(codec: ScalableCodec, store: EdgeStore, policy: str, image: np.ndarray, base_rate: float,
            residual_rate: float) -> tuple[int, dict[str, bytes]]:
    """Code one frame as the capture loop does under ``policy`` and store it; returns (frame id, layers)."""
    loop = CaptureLoop(None, codec, store, None, EdgeMetrics(), lambda: None, policy)  # type: ignore[arg-type]
    layers, _ = loop.code(image, base_rate, residual_rate)
    frame_id = store.add_frame(0, base_rate, layers["base"], layers.get("residual"), layers["frame"], residual_rate)
    return frame_id, layers


@pytest.mark.parametrize(("mode", "weights"), [("pr", "tiny"), ("fr", "tiny"), ("avif", "tiny"), ("pr", "shipped")])
def test_lazy_residual_equals_the_eager_one(tiny_weights: Path, tmp_path: Path, frames: list[np.ndarray],
                                            mode: str, weights: str) -> None:
    codec = ScalableCodec.from_weights(tiny_weights if weights == "tiny" else None, mode=mode)
    store = EdgeStore(tmp_path / "edge.db")
    metrics = EdgeMetrics()
    layers = InspectionLayers(codec, store, metrics)
    for image, (base_rate, residual_rate) in zip(frames, ((0.3, 0.8), (0.7, 0.2)), strict=True):
        eager_id, eager = capture(codec, store, "eager", image, base_rate, residual_rate)
        lazy_id, lazy = capture(codec, store, "lazy", image, base_rate, residual_rate)
        assert "residual" not in lazy and lazy["base"] == eager["base"]
        assert store.residual(lazy_id) is None and store.next_pending(eager_id).residual_on_request
        assert layers.residual(lazy_id) == eager["residual"] == layers.residual(eager_id)
        assert store.residual(lazy_id) == eager["residual"]  # kept: the next request reads it
        assert np.array_equal(codec.decode_original(lazy["base"], layers.lossless(lazy_id)), image)
    assert metrics.registry.get_sample_value("icmh_edge_encode_seconds_count", {"layer": "residual_on_request"}) == 2
    store.close()


def test_requested_residual_rate_is_coded_from_the_kept_frame_and_not_kept(tiny_weights: Path, tmp_path: Path,
                                                                          frames: list[np.ndarray]) -> None:
    """An operator's residual rate: coded from the kept frame on the sent base layer; the store keeps the layer of
    the capture-time rate (which the lossless layer refines). Without the kept frame, the stored layer answers."""
    codec = ScalableCodec.from_weights(tiny_weights, mode="pr")
    store = EdgeStore(tmp_path / "edge.db")
    layers = InspectionLayers(codec, store, EdgeMetrics())
    image = frames[0]
    lazy_id, lazy = capture(codec, store, "lazy", image, 0.5, 0.4)
    sent = codec.open_base(lazy["base"])
    assert layers.residual(lazy_id, 1.0) == codec.encode_residual(image, sent, 1.0)
    assert store.residual(lazy_id) is None  # not kept
    assert layers.residual(lazy_id, 0.4) == codec.encode_residual(image, sent, 0.4) == store.residual(lazy_id)
    assert layers.residual(lazy_id, 0.9) == codec.encode_residual(image, sent, 0.9)  # stored one has another rate
    eager_id = store.add_frame(0, 0.5, lazy["base"], codec.encode_residual(image, sent, 0.4), None, 0.4)
    assert layers.residual(eager_id, 1.0) == store.residual(eager_id)  # no captured frame: the stored layer
    with pytest.raises(ValueError, match="rate"):
        layers.residual(lazy_id, 1.5)
    store.close()


def test_lazy_residual_is_coded_on_the_sent_base_layer(tmp_path: Path, frames: list[np.ndarray]) -> None:
    """The residual is coded against the base layer that was sent, whatever the kept frame would re-encode to."""
    codec = ScalableCodec.from_weights(mode="avif")  # shipped base: (unlike the tiny one) it codes image content
    store = EdgeStore(tmp_path / "edge.db")
    image, other = frames
    sent = codec.encode_base(other, 0.5)  # a base layer the kept frame does not re-encode to
    frame_id = store.add_frame(0, 0.5, sent.data, None, lossless.webp_lossless(image, "fast"), 0.6)
    residual = InspectionLayers(codec, store, EdgeMetrics()).residual(frame_id)
    assert residual == codec.encode_residual(image, sent, 0.6)
    assert residual != codec.encode_residual(image, codec.encode_base(image, 0.5), 0.6)
    store.close()


def test_inspection_store_bounds_frames_and_residuals_together_and_survives_restart(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge.db", StoreLimits(residual_bytes=100))
    for i in range(3):  # 30 (frame) + 2 (base) + 10 (residual) bytes each
        store.add_frame(i, 0.5, b"bb", bytes(10), image=bytes([i]) * 30, residual_rate=0.25)
    assert store.frame(1) is None and store.residual(1) is None  # oldest frame evicted with its residual
    assert store.frame_usage() .bytes + store.residual_usage().bytes == 84
    store.close()
    store = EdgeStore(tmp_path / "edge.db", StoreLimits(residual_bytes=100))
    kept = store.frame(3)
    assert (kept.image, kept.base, kept.residual_rate) == (bytes([2]) * 30, b"bb", 0.25)
    store.put_residual(3, bytes(60))  # a residual coded on request counts in the same bound
    assert store.frame(2) is None and store.frame(3) is not None and store.residual(3) == bytes(60)
    store.close()


def test_store_written_before_the_lazy_policy_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE outbox (frame_id INTEGER PRIMARY KEY, capture_ns INTEGER NOT NULL, rate REAL NOT NULL,
            base BLOB NOT NULL, base_bytes INTEGER NOT NULL, residual_bytes INTEGER NOT NULL);
        INSERT INTO meta VALUES ('next_frame_id', 8);
        INSERT INTO outbox VALUES (7, 1, 0.5, x'00', 1, 3);
    """)
    db.commit()
    db.close()
    store = EdgeStore(path)
    pending = store.next_pending(0)
    assert (pending.frame_id, pending.residual_bytes, pending.residual_on_request) == (7, 3, False)
    assert store.add_frame(2, 0.5, b"b", None, b"frame") == 8 and store.next_pending(7).residual_on_request
    store.close()


@pytest.mark.parametrize("mode", ["pr", "avif"])
def test_lazy_edge_serves_human_quality_over_grpc(tmp_path: Path, tiny_weights: Path, shared_dir: Path,
                                                  mode: str) -> None:
    """A lazy edge codes the residual on the first HUMAN request: the same image an eager edge gives."""
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-l": "token-l"})
    source = FrameSource(str(shared_dir / VIDEO), size=FRAME_SIZE, max_frames=2)
    try:
        captured = [f.image for f in source.frames(threading.Event())]
    finally:
        source.close()
    node = start_edge(edge_settings(tmp_path / "edge", "cam-l", "token-l", server.port, shared_dir, tiny_weights,
                                    residual_policy="lazy", residual_rate=0.7, max_frames=2, mode=mode))
    try:
        wait_for(lambda: frame_ids(server.settings.detections_jsonl, "cam-l") == [1, 2], what="2 results")
        frames = server.index.frames("cam-l", 0, 0, 10)
        assert [f.residual_bytes for f in frames] == [0, 0]  # nothing coded yet
        codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
        base = server.index.base_layer("cam-l", 2)
        eager = codec.encode_residual(captured[1], codec.encode_base(captured[1], 0.5), 0.7)
        for _ in range(2):  # the second request reads the residual the first one coded
            reply = get_frame(server.port, "cam-l", 2, operator_pb2.QUALITY_HUMAN)
            assert reply.residual_bytes == len(eager)
        assert server.index.base_layer("cam-l", 2) == codec.encode_base(captured[1], 0.5).data
        assert np.array_equal(decode_png(reply.png), codec.decode_human(base, eager, exact_pixels=False))  # a view
        assert reply.residual_rate == pytest.approx(round(0.7 * 255) / 255)
        # an operator asks for the sharpest view: coded at that rate for the request, from the kept frame
        sharp = get_frame(server.port, "cam-l", 2, operator_pb2.QUALITY_HUMAN, residual_rate=1.0)
        at_one = codec.encode_residual(captured[1], codec.open_base(base), 1.0)
        assert (sharp.residual_rate, sharp.residual_bytes) == (1.0, len(at_one)) and at_one != eager
        assert np.array_equal(decode_png(sharp.png), codec.decode_human(base, at_one, exact_pixels=False))
        assert get_frame(server.port, "cam-l", 2, operator_pb2.QUALITY_HUMAN).residual_bytes == len(eager)
        for quality, rate in ((operator_pb2.QUALITY_HUMAN, 1.5), (operator_pb2.QUALITY_MACHINE, 0.5)):
            with pytest.raises(grpc.RpcError) as refused:
                get_frame(server.port, "cam-l", 2, quality, residual_rate=rate)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [r.detail for r in server.audit.query() if r.outcome == "ok"].count("residual_rate 1") == 1
        samples = node.metrics.registry.get_sample_value
        assert samples("icmh_edge_encode_seconds_count", {"layer": "residual_on_request"}) == 1
        assert samples("icmh_edge_encode_seconds_count", {"layer": "residual_at_requested_rate"}) == 1
        assert samples("icmh_edge_encode_seconds_count", {"layer": "frame"}) == 2
    finally:
        node.close()
        server.stop(grace=1)


def test_edge_cli_flags_select_mode_and_policy() -> None:
    from icmh.edge.cli import build_parser, settings_from_args

    args = ["--camera-id", "c", "--token", "t", "--cloud", "localhost:1", "--source", "0"]
    default = settings_from_args(build_parser().parse_args(args))
    assert (default.mode, default.residual_policy) == ("pr", "lazy")
    chosen = settings_from_args(build_parser().parse_args([*args, "--residual-mode", "avif", "--residual-policy",
                                                           "eager"]))
    assert (chosen.mode, chosen.residual_policy) == ("avif", "eager")
    with pytest.raises(ValueError, match="residual policy"):
        CaptureLoop(None, None, None, None, EdgeMetrics(), lambda: None, "sometimes")  # type: ignore[arg-type]
