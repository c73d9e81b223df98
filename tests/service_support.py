"""Helpers of the service tests (tests/test_service_*.py): real gRPC on 127.0.0.1, real codec, real detector."""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from icmh.bench.delivery import read_jsonl
from icmh.cloud.auth import CameraRegistry, OperatorRegistry
from icmh.cloud.codecs import CloudCodecs
from icmh.cloud.server import CloudServer, CloudSettings
from icmh.codec.api import ScalableCodec
from icmh.detector import YoloDetector
from icmh.edge.link import LinkSettings
from icmh.edge.node import EdgeNode, EdgeSettings
from icmh.edge.source import FrameSource
from icmh.rpc import edge_pb2, edge_pb2_grpc, operator_pb2, operator_pb2_grpc
from icmh.service.feed import DetectionFeed
from icmh.service.grpc_setup import channel_options, with_token
from icmh.service.local import free_port, wait_for  # noqa: F401 - used by the tests

FRAME_SIZE = (320, 192)  # small frames: fast on 2 shared cores
DETECTOR_IMGSZ = 320
VIDEO = Path("data") / "traffic" / "cvtrafficcam_street.mp4"
OPERATOR_TOKEN = "test-admin-token"  # the admin operator every test cloud has (unless overridden)


@functools.lru_cache(maxsize=1)
def shared_detector(model_path: Path) -> YoloDetector:
    """One YOLO model per test process (loading it is the slow part of a cloud start)."""
    return YoloDetector(model_path, imgsz=DETECTOR_IMGSZ)


def start_cloud(tmp: Path, weights: Path, shared_dir: Path, cameras: dict[str, str],
                **overrides: object) -> CloudServer:
    """An in-process cloud server on a free port, detections also in ``tmp/detections.jsonl``, operator
    ``test-admin`` (token :data:`OPERATOR_TOKEN`)."""
    settings = CloudSettings(**{
        "cameras": CameraRegistry.load(None, [f"{c}={t}" for c, t in cameras.items()]), "data_dir": tmp / "cloud",
        "operators": OperatorRegistry.load(None, [f"test-admin={OPERATOR_TOKEN}:admin"]),
        "detector": shared_dir / "models" / "yolov8n.pt", "listen": "127.0.0.1:0", "weights": weights,
        "detector_imgsz": DETECTOR_IMGSZ, "detections_jsonl": tmp / "detections.jsonl", "metrics_port": 0,
        **overrides,
    })
    server = CloudServer(settings, detector=shared_detector(settings.detector), codecs=CloudCodecs(weights))
    server.start()
    return server


def edge_settings(data_dir: Path, camera_id: str, token: str, port: int, shared_dir: Path, weights: Path,
                  **overrides: object) -> EdgeSettings:
    return EdgeSettings(**{
        "camera_id": camera_id, "token": token, "source": str(shared_dir / VIDEO), "data_dir": data_dir,
        "link": LinkSettings(f"127.0.0.1:{port}", backoff_min_s=0.1, backoff_max_s=0.5), "weights": weights,
        "size": FRAME_SIZE, "max_frames": 3, "metrics_port": 0, **overrides,
    })


def start_edge(settings: EdgeSettings) -> EdgeNode:
    node = EdgeNode(settings)
    node.start()
    return node


def encode_frames(codec: ScalableCodec, shared_dir: Path, count: int, rate: float = 0.5) -> list[bytes]:
    """Base layers of the first ``count`` video frames (what an edge would send as frames 1..count)."""
    source = FrameSource(str(shared_dir / VIDEO), size=FRAME_SIZE, max_frames=count)
    try:
        return [codec.encode_base(f.image, rate).data for f in source.frames(threading.Event())]
    finally:
        source.close()


def frame_ids(path: Path, camera_id: str) -> list[int]:
    """Frame ids of one camera's results in a JSON Lines sink, in file order."""
    return [r["frame_id"] for r in read_jsonl(path) if r["camera_id"] == camera_id]


def operator(port: int, token: str | None = OPERATOR_TOKEN) -> operator_pb2_grpc.OperatorStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    return operator_pb2_grpc.OperatorStub(with_token(channel, token))


def get_frame(port: int, camera_id: str, frame_id: int, quality: int,
              token: str | None = OPERATOR_TOKEN, residual_rate: float | None = None) -> operator_pb2.GetFrameResponse:
    request = operator_pb2.GetFrameRequest(camera_id=camera_id, frame_id=frame_id, quality=quality,
                                           residual_rate=residual_rate)
    return operator(port, token).GetFrame(request, timeout=30)


class Subscriber(DetectionFeed):
    """A live detection feed subscribed with an operator token (the test admin's by default)."""

    def __init__(self, port: int, camera_ids: tuple[str, ...] | list[str] = (), class_names: tuple[str, ...] = (),
                 token: str | None = OPERATOR_TOKEN) -> None:
        super().__init__(port, camera_ids, class_names, token=token)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """The RpcError ``call`` raises (fails the test if it succeeds)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded; an error was expected")


class RawEdge:
    """A hand-driven ``EdgeLink.Connect`` stream: send any message, read the cloud's replies."""

    def __init__(self, port: int, first: edge_pb2.Hello | edge_pb2.EdgeMessage) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options(max_send_bytes=64 << 20))
        self._outgoing: queue.Queue[edge_pb2.EdgeMessage | None] = queue.Queue()
        self._outgoing.put(edge_pb2.EdgeMessage(hello=first) if isinstance(first, edge_pb2.Hello) else first)
        self.call = edge_pb2_grpc.EdgeLinkStub(self.channel).Connect(iter(self._outgoing.get, None))
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        try:
            for reply in self.call:
                self._replies.put(reply)
            self._replies.put(None)
        except grpc.RpcError as exc:
            self._replies.put(exc)

    def send_base(self, frame_id: int, data: bytes, capture_ns: int | None = None) -> None:
        packet = edge_pb2.BasePacket(frame_id=frame_id, base_layer=data, rate=0.5)
        packet.capture_time.FromNanoseconds(capture_ns or time.time_ns())
        self._outgoing.put(edge_pb2.EdgeMessage(base=packet))

    def next(self, timeout: float = 30.0) -> edge_pb2.CloudMessage:
        """The next reply; raises the call's RpcError when the stream ended with one."""
        reply = self._replies.get(timeout=timeout)
        if isinstance(reply, grpc.RpcError):
            raise reply
        if reply is None:
            raise AssertionError("the cloud ended the stream")
        return reply

    def close(self) -> None:
        self._outgoing.put(None)
        self.call.cancel()
        self.channel.close()


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A throw-away CA with a server certificate for 127.0.0.1 / localhost, an edge client certificate (CN
    ``edge``) and an operator console certificate (CN ``ops-console``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    folder.mkdir(parents=True, exist_ok=True)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(common: str, issuer: x509.Name | None, issuer_key, is_ca: bool, san: list | None = None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(issuer or name(common))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    def write(stem: str, key, cert) -> tuple[Path, Path]:
        key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.crt"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path

    ca_key, ca_cert = issue("icmh test CA", None, None, True)
    server = issue("localhost", ca_cert.subject, ca_key, False,
                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = issue("edge", ca_cert.subject, ca_key, False)
    console = issue("ops-console", ca_cert.subject, ca_key, False, [x509.DNSName("ops-console.example.net")])
    _, ca_path = write("ca", ca_key, ca_cert)
    server_key, server_cert = write("server", *server)
    client_key, client_cert = write("client", *client)
    operator_key, operator_cert = write("operator", *console)
    return {"ca": ca_path, "server_key": server_key, "server_cert": server_cert, "client_key": client_key,
            "client_cert": client_cert, "operator_key": operator_key, "operator_cert": operator_cert}
