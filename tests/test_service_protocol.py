"""The EdgeLink contract under bad input: refusals, corrupt and oversized packets, duplicates,
retention, TLS — each over real gRPC against an in-process cloud server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from service_support import (
    OPERATOR_TOKEN,
    RawEdge,
    edge_settings,
    encode_frames,
    frame_ids,
    get_frame,
    make_tls_files,
    operator,
    rpc_error,
    start_cloud,
    start_edge,
    wait_for,
)

from icmh.cloud.server import CloudServer
from icmh.codec.api import ScalableCodec
from icmh.edge.link import LinkRefused, LinkSettings
from icmh.edge.node import make_hello
from icmh.rpc import edge_pb2, operator_pb2, operator_pb2_grpc
from icmh.service.grpc_setup import open_channel

CAMERAS = {"cam-raw": "token-raw", "cam-big": "token-big", "cam-auth": "token-auth"}
MAX_PACKET, MAX_MESSAGE = 4096, 64 * 1024
Ack = edge_pb2.Ack


@pytest.fixture(scope="module")
def codec(tiny_weights: Path) -> ScalableCodec:
    return ScalableCodec.from_weights(tiny_weights, mode="pr")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, shared_dir: Path) -> CloudServer:
    server = start_cloud(tmp_path_factory.mktemp("protocol"), tiny_weights, shared_dir, CAMERAS,
                         max_packet_bytes=MAX_PACKET, max_message_bytes=MAX_MESSAGE)
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def bases(codec: ScalableCodec, shared_dir: Path) -> list[bytes]:
    return encode_frames(codec, shared_dir, 4)


def hello(codec: ScalableCodec, camera: str, token: str | None = None) -> edge_pb2.Hello:
    return make_hello(camera, CAMERAS.get(camera, "x") if token is None else token, codec, 320, 192)


def errors(cloud: CloudServer, kind: str) -> float:
    return cloud.metrics.registry.get_sample_value("icmh_cloud_errors_total", {"kind": kind}) or 0.0


def ack_of(raw: RawEdge) -> edge_pb2.Ack:
    reply = raw.next()
    assert reply.WhichOneof("kind") == "ack", reply
    return reply.ack


def test_wrong_token_stops_the_edge_node(cloud: CloudServer, tmp_path: Path, shared_dir: Path,
                                         tiny_weights: Path) -> None:
    before = errors(cloud, "auth")
    node = start_edge(edge_settings(tmp_path, "cam-auth", "not-the-token", cloud.port, shared_dir, tiny_weights,
                                    max_frames=1))
    try:
        assert node.wait(timeout=60), "the edge node kept running after the refusal"
        assert isinstance(node.error, LinkRefused) and node.error.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        node.close()
    assert errors(cloud, "auth") == before + 1
    assert cloud.sessions.get("cam-auth") is None


@pytest.mark.parametrize(("camera", "token", "code"), [
    ("cam-unknown", "whatever", grpc.StatusCode.PERMISSION_DENIED),
    ("cam-raw", "", grpc.StatusCode.UNAUTHENTICATED),
    ("cam-raw", "token-auth", grpc.StatusCode.UNAUTHENTICATED),  # another camera's token
])
def test_unknown_camera_or_bad_token_refused(cloud: CloudServer, codec: ScalableCodec, camera: str, token: str,
                                             code: grpc.StatusCode) -> None:
    raw = RawEdge(cloud.port, hello(codec, camera, token))
    assert rpc_error(raw.next).code() == code
    raw.close()


def test_malformed_hello_and_codec_mismatch_refused(cloud: CloudServer, codec: ScalableCodec) -> None:
    raw = RawEdge(cloud.port, edge_pb2.EdgeMessage(base=edge_pb2.BasePacket(frame_id=1)))
    assert rpc_error(raw.next).code() == grpc.StatusCode.INVALID_ARGUMENT
    raw.close()
    other = hello(codec, "cam-raw")
    other.codec.base_weights_hash = bytes(8)
    raw = RawEdge(cloud.port, other)
    error = rpc_error(raw.next)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "base model" in error.details()
    raw.close()


def test_corrupt_packets_are_rejected_counted_and_the_stream_goes_on(cloud: CloudServer, codec: ScalableCodec,
                                                                     bases: list[bytes], shared_dir: Path) -> None:
    before = errors(cloud, "corrupt_packet")
    raw = RawEdge(cloud.port, hello(codec, "cam-raw"))
    try:
        assert raw.next().WhichOneof("kind") == "welcome"
        flipped = bytearray(bases[0])
        flipped[len(flipped) // 2] ^= 0x40
        raw.send_base(1, bytes(flipped))
        raw.send_base(2, b"not a layer")
        raw.send_base(3, bases[2])
        raw.send_base(3, bases[2])
        acks = [ack_of(raw) for _ in range(4)]
        assert [(a.frame_id, a.status) for a in acks] == [
            (1, Ack.STATUS_REJECTED), (2, Ack.STATUS_REJECTED), (3, Ack.STATUS_ACCEPTED), (3, Ack.STATUS_DUPLICATE)]
        assert "checksum" in acks[0].reason and "corrupt" in acks[1].reason
        assert errors(cloud, "corrupt_packet") == before + 2
        wait_for(lambda: frame_ids(cloud.settings.detections_jsonl, "cam-raw"), what="the valid frame's result")
        assert frame_ids(cloud.settings.detections_jsonl, "cam-raw") == [3]
        raw.send_base(3, encode_frames(codec, shared_dir, 1, rate=0.9)[0])  # another layer under a taken id
        conflict = ack_of(raw)
        assert conflict.status == Ack.STATUS_REJECTED and "different base layer" in conflict.reason
    finally:
        raw.close()


def test_oversized_packet_rejected_and_message_limit_enforced(cloud: CloudServer, codec: ScalableCodec,
                                                              bases: list[bytes]) -> None:
    before = errors(cloud, "oversized_packet")
    raw = RawEdge(cloud.port, hello(codec, "cam-big"))
    assert raw.next().welcome.max_packet_bytes == MAX_PACKET
    raw.send_base(1, bytes(MAX_PACKET + 1))
    ack = ack_of(raw)
    assert ack.status == Ack.STATUS_REJECTED and "exceeds" in ack.reason
    assert errors(cloud, "oversized_packet") == before + 1
    raw.send_base(2, bytes(MAX_MESSAGE + 1))  # beyond the gRPC message limit: the stream is ended
    assert rpc_error(raw.next).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    raw.close()
    raw = RawEdge(cloud.port, hello(codec, "cam-big"))  # the server carries on
    try:
        assert raw.next().WhichOneof("kind") == "welcome"
        raw.send_base(2, bases[1])
        assert ack_of(raw).status == Ack.STATUS_ACCEPTED
    finally:
        raw.close()


def test_edge_drops_base_layers_above_the_cloud_limit(tmp_path: Path, tiny_weights: Path, shared_dir: Path) -> None:
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-tiny": "t"}, max_packet_bytes=64)
    node = start_edge(edge_settings(tmp_path / "edge", "cam-tiny", "t", server.port, shared_dir, tiny_weights,
                                    max_frames=2))
    sample = node.metrics.registry.get_sample_value
    try:
        wait_for(lambda: sample("icmh_edge_frames_dropped_total", {"reason": "oversized"}) == 2,
                 what="both frames dropped as oversized")
        assert node.store.outbox_usage().frames == 0 and not sample("icmh_edge_frames_sent_total")
        assert server.index.usage()[0] == 0
    finally:
        node.close()
        server.stop(grace=1)


def test_retention_removes_old_frames_and_resends_stay_duplicates(tmp_path: Path, tiny_weights: Path,
                                                                  shared_dir: Path, codec: ScalableCodec,
                                                                  bases: list[bytes]) -> None:
    keep_two = sum(len(b) for b in bases[2:]) + 1
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-old": "t"}, retention_bytes=keep_two,
                         maintenance_interval_s=0.05)
    raw = RawEdge(server.port, make_hello("cam-old", "t", codec, 320, 192))
    try:
        assert raw.next().WhichOneof("kind") == "welcome"
        for frame_id, base in enumerate(bases, start=1):
            raw.send_base(frame_id, base)
        assert [ack_of(raw).status for _ in bases] == [Ack.STATUS_ACCEPTED] * 4
        listed = lambda: [f.frame_id for f in operator(server.port).ListFrames(  # noqa: E731
            operator_pb2.ListFramesRequest(camera_id="cam-old")).frames]
        wait_for(lambda: listed() == [4, 3], what="retention to keep the newest two frames")
        error = rpc_error(lambda: get_frame(server.port, "cam-old", 1, operator_pb2.QUALITY_MACHINE))
        assert error.code() == grpc.StatusCode.NOT_FOUND and "retention" in error.details()
        raw.send_base(1, bases[0])  # a late resend of a removed frame is still a duplicate
        assert ack_of(raw).status == Ack.STATUS_DUPLICATE
        # Retention removes only published frames: every accepted frame still reaches the sinks once.
        wait_for(lambda: len(frame_ids(server.settings.detections_jsonl, "cam-old")) >= 4, what="4 detections")
        assert frame_ids(server.settings.detections_jsonl, "cam-old") == [1, 2, 3, 4]
    finally:
        raw.close()
        server.stop(grace=1)


def test_mutual_tls(tmp_path: Path, tiny_weights: Path, shared_dir: Path) -> None:
    pytest.importorskip("cryptography", reason="cryptography (dev extra) makes the test certificates")
    tls = make_tls_files(tmp_path / "tls")
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-tls": "t"}, tls_cert=tls["server_cert"],
                         tls_key=tls["server_key"], tls_client_ca=tls["ca"])
    target = f"127.0.0.1:{server.port}"
    link = LinkSettings(target, tls["ca"], tls["client_cert"], tls["client_key"], backoff_min_s=0.1)
    node = start_edge(edge_settings(tmp_path / "edge", "cam-tls", "t", server.port, shared_dir, tiny_weights,
                                    link=link, max_frames=2))
    try:
        wait_for(lambda: frame_ids(server.settings.detections_jsonl, "cam-tls") == [1, 2], what="2 results over TLS")
        request = operator_pb2.ListCamerasRequest()
        with open_channel(target, ca=tls["ca"], cert=tls["client_cert"], key=tls["client_key"],
                          token=OPERATOR_TOKEN) as channel:
            assert operator_pb2_grpc.OperatorStub(channel).ListCameras(request, timeout=10).cameras
        for kwargs in ({"ca": tls["ca"], "token": OPERATOR_TOKEN}, {}):  # no client certificate / no TLS at all
            with open_channel(target, **kwargs) as channel:
                error = rpc_error(lambda c=channel: operator_pb2_grpc.OperatorStub(c).ListCameras(request, timeout=10))
                assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        node.close()
        server.stop(grace=1)

