"""Operator access control, the inspection audit and safe deployment defaults, over real gRPC on 127.0.0.1.

Every caller (no token, wrong token, a camera's token, each role) against every operator-facing call; camera
lists; malformed and oversized requests; audit rows written, durable and queryable; client-certificate
identities; an edge refusing a cloud whose certificate does not verify; metrics-port bind failures; weights
files that carry pickled code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_support import (
    OPERATOR_TOKEN,
    VIDEO,
    edge_settings,
    frame_ids,
    make_tls_files,
    rpc_error,
    start_cloud,
    start_edge,
    wait_for,
)

from icmh.cloud import cli as cloud_cli
from icmh.cloud import operator_cli
from icmh.cloud.audit import AuditLog, AuditRecord
from icmh.cloud.auth import CameraRegistry, OperatorRegistry, Role
from icmh.cloud.server import CloudServer, CloudSettings
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR, load_layer, load_state
from icmh.edge.link import LinkRefused, LinkSettings
from icmh.rpc import common_pb2, detections_pb2, detections_pb2_grpc, operator_pb2, operator_pb2_grpc
from icmh.service.grpc_setup import bearer_metadata, channel_options, open_channel

ROOT = Path(__file__).resolve().parents[1]
CAMERAS = {"cam-a": "cam-a-token", "cam-b": "cam-b-token"}
TOKENS = {"viewer": "viewer-token", "inspector": "inspector-token", "admin": "admin-token"}
Q = operator_pb2.Quality
Code = grpc.StatusCode
REFUSED = (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED)
MAX_MESSAGE = 1 << 20


def operator_flags() -> list[str]:
    return [f"{role}-op={token}:{role}" for role, token in TOKENS.items()]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, shared_dir: Path) -> CloudServer:
    """A cloud with one operator per role plus ``scoped`` (inspector of cam-a only); cam-a's edge streamed 2
    frames and stays online."""
    tmp = tmp_path_factory.mktemp("access")
    operators_file = tmp / "operators.json"
    operators_file.write_text(json.dumps({"operators": [
        {"name": "scoped", "token": "scoped-token", "role": "inspector", "cameras": ["cam-a"]}]}))
    server = start_cloud(tmp, tiny_weights, shared_dir, CAMERAS,
                         operators=OperatorRegistry.load(operators_file, operator_flags()),
                         max_message_bytes=MAX_MESSAGE, max_packet_bytes=MAX_MESSAGE // 2)
    node = start_edge(edge_settings(tmp / "edge-a", "cam-a", CAMERAS["cam-a"], server.port, shared_dir,
                                    tiny_weights, max_frames=2))
    try:
        wait_for(lambda: frame_ids(server.settings.detections_jsonl, "cam-a") == [1, 2], what="cam-a's 2 frames")
        yield server
    finally:
        node.close()
        server.stop(grace=1)


@pytest.fixture(scope="module")
def channel(cloud: CloudServer) -> grpc.Channel:
    options = [*channel_options(max_send_bytes=4 * MAX_MESSAGE)]
    with grpc.insecure_channel(f"127.0.0.1:{cloud.port}", options=options) as ch:
        yield ch


def code_of(call: Callable[[], object]) -> Code:
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)  # a server stream: read it to its end (or its error)
    except grpc.RpcError as exc:
        return exc.code()
    return Code.OK


def get_frame(channel: grpc.Channel, metadata: tuple, camera: str, frame: int, quality: int) -> Callable[[], object]:
    request = operator_pb2.GetFrameRequest(camera_id=camera, frame_id=frame, quality=quality)
    return lambda: operator_pb2_grpc.OperatorStub(channel).GetFrame(request, timeout=30, metadata=metadata)


#: call -> (role it needs, status when allowed; None: any status but a refusal)
CALLS: dict[str, tuple[Role, Code | None]] = {
    "ListCameras": (Role.VIEWER, Code.OK),
    "ListFrames": (Role.VIEWER, Code.OK),
    "GetFrame machine": (Role.VIEWER, Code.OK),
    "GetFrame human": (Role.INSPECTOR, Code.OK),
    "GetFrame original": (Role.INSPECTOR, None),  # the lossless tier's own outcome is not this test's concern
    "ConfigureCamera": (Role.ADMIN, Code.OK),
    "ListAudit": (Role.ADMIN, Code.OK),
    "Subscribe": (Role.VIEWER, Code.DEADLINE_EXCEEDED),  # allowed: the live stream runs until its deadline
}


def make_call(name: str, channel: grpc.Channel, metadata: tuple) -> Callable[[], object]:
    stub = operator_pb2_grpc.OperatorStub(channel)
    calls: dict[str, Callable[[], object]] = {
        "ListCameras": lambda: stub.ListCameras(operator_pb2.ListCamerasRequest(), timeout=30, metadata=metadata),
        "ListFrames": lambda: stub.ListFrames(operator_pb2.ListFramesRequest(camera_id="cam-a"), timeout=30,
                                              metadata=metadata),
        "GetFrame machine": get_frame(channel, metadata, "cam-a", 1, Q.QUALITY_MACHINE),
        "GetFrame human": get_frame(channel, metadata, "cam-a", 1, Q.QUALITY_HUMAN),
        "GetFrame original": get_frame(channel, metadata, "cam-a", 1, Q.QUALITY_ORIGINAL),
        "ConfigureCamera": lambda: stub.ConfigureCamera(operator_pb2.ConfigureCameraRequest(
            camera_id="cam-a", config=common_pb2.EdgeConfig(residual_rate=0.5)), timeout=30, metadata=metadata),
        "ListAudit": lambda: stub.ListAudit(operator_pb2.ListAuditRequest(), timeout=30, metadata=metadata),
        "Subscribe": lambda: detections_pb2_grpc.DetectionsStub(channel).Subscribe(
            detections_pb2.SubscribeRequest(camera_ids=["cam-a"]), timeout=1.0, metadata=metadata),
    }
    return calls[name]


CALLERS: dict[str, tuple[str | None, Role | None]] = {
    "no token": (None, None),
    "wrong token": ("not-a-token", None),
    "camera token": (CAMERAS["cam-a"], None),  # an edge's credential is never an operator's
    **{role: (token, Role.parse(role)) for role, token in TOKENS.items()},
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("caller", list(CALLERS))
def test_each_caller_against_each_call(cloud: CloudServer, channel: grpc.Channel, caller: str, call: str) -> None:
    token, role = CALLERS[caller]
    needed, allowed = CALLS[call]
    code = code_of(make_call(call, channel, bearer_metadata(token)))
    if role is None:
        assert code == Code.UNAUTHENTICATED
    elif role < needed:
        assert code == Code.PERMISSION_DENIED
    elif allowed is None:
        assert code not in REFUSED
    else:
        assert code == allowed


def test_refusals_say_why(cloud: CloudServer, channel: grpc.Channel) -> None:
    stub = operator_pb2_grpc.OperatorStub(channel)
    request = operator_pb2.ListCamerasRequest()
    error = rpc_error(lambda: stub.ListCameras(request, timeout=30))
    assert error.code() == Code.UNAUTHENTICATED and "authorization: Bearer TOKEN" in error.details()
    error = rpc_error(get_frame(channel, bearer_metadata(TOKENS["viewer"]), "cam-a", 1, Q.QUALITY_HUMAN))
    assert error.code() == Code.PERMISSION_DENIED
    assert "viewer-op" in error.details() and "inspector" in error.details()
    refusals = cloud.metrics.registry.get_sample_value("icmh_cloud_auth_refusals_total", {"code": "unauthenticated"})
    assert refusals >= 1


def test_camera_list_of_an_operator(cloud: CloudServer, channel: grpc.Channel) -> None:
    scoped = bearer_metadata("scoped-token")
    stub = operator_pb2_grpc.OperatorStub(channel)
    listed = stub.ListCameras(operator_pb2.ListCamerasRequest(), timeout=30, metadata=scoped).cameras
    assert [c.camera_id for c in listed] == ["cam-a"]
    everyone = stub.ListCameras(operator_pb2.ListCamerasRequest(), timeout=30, metadata=bearer_metadata(
        TOKENS["viewer"])).cameras
    assert [c.camera_id for c in everyone] == ["cam-a", "cam-b"]
    assert code_of(get_frame(channel, scoped, "cam-a", 2, Q.QUALITY_HUMAN)) == Code.OK
    # cam-b has no frame 1: the refusal comes before the frame is looked up (NOT_FOUND for an allowed caller)
    assert code_of(get_frame(channel, scoped, "cam-b", 1, Q.QUALITY_MACHINE)) == Code.PERMISSION_DENIED
    assert code_of(get_frame(channel, bearer_metadata(TOKENS["admin"]), "cam-b", 1, Q.QUALITY_MACHINE)) \
        == Code.NOT_FOUND
    assert code_of(lambda: stub.ListFrames(operator_pb2.ListFramesRequest(camera_id="cam-b"), timeout=30,
                                           metadata=scoped)) == Code.PERMISSION_DENIED
    subscribe = detections_pb2_grpc.DetectionsStub(channel).Subscribe
    assert code_of(lambda: subscribe(detections_pb2.SubscribeRequest(camera_ids=["cam-a", "cam-b"]), timeout=5,
                                     metadata=scoped)) == Code.PERMISSION_DENIED


def test_malformed_credentials(cloud: CloudServer, channel: grpc.Channel) -> None:
    list_cameras = operator_pb2_grpc.OperatorStub(channel).ListCameras
    request = operator_pb2.ListCamerasRequest()
    for metadata in ((("authorization", f"Basic {TOKENS['admin']}"),), (("authorization", "Bearer "),),
                     (("authorization", "Bearer"),), (("authorization", f"Bearer {'x' * 6000}"),),
                     (("authorization", f"Bearer {TOKENS['admin']}"), ("authorization", "Bearer other"))):
        error = rpc_error(lambda m=metadata: list_cameras(request, timeout=30, metadata=m))
        assert error.code() == Code.UNAUTHENTICATED, metadata[0][1][:20]
    # Metadata beyond gRPC's header limit never reaches the interceptor; the server goes on serving.
    assert code_of(lambda: list_cameras(request, timeout=30, metadata=bearer_metadata("y" * 100_000))) != Code.OK
    ok = list_cameras(request, timeout=30, metadata=(("authorization", f"bearer  {TOKENS['viewer']} "),))
    assert ok.cameras


def test_malformed_and_oversized_requests(cloud: CloudServer, channel: grpc.Channel) -> None:
    inspector, viewer = bearer_metadata(TOKENS["inspector"]), bearer_metadata(TOKENS["viewer"])
    stub = operator_pb2_grpc.OperatorStub(channel)
    assert code_of(get_frame(channel, inspector, "c" * 300, 1, Q.QUALITY_HUMAN)) == Code.INVALID_ARGUMENT
    assert code_of(get_frame(channel, inspector, "cam-a", 2**64 - 1, Q.QUALITY_HUMAN)) == Code.INVALID_ARGUMENT
    assert code_of(get_frame(channel, viewer, "cam-a", 1, 99)) == Code.PERMISSION_DENIED  # unknown tier: refused
    assert code_of(get_frame(channel, inspector, "cam-a", 1, 99)) == Code.INVALID_ARGUMENT
    assert code_of(lambda: stub.ListFrames(operator_pb2.ListFramesRequest(camera_id="cam-a", max_frame_id=2**64 - 1),
                                           timeout=30, metadata=viewer)) == Code.INVALID_ARGUMENT
    assert code_of(lambda: stub.ListFrames(operator_pb2.ListFramesRequest(camera_id="x" * 10_000),
                                           timeout=30, metadata=viewer)) == Code.INVALID_ARGUMENT
    # Above the server's message limit: refused before any handler runs, with or without credentials.
    for metadata in ((), inspector):
        assert code_of(get_frame(channel, metadata, "c" * (2 * MAX_MESSAGE), 1, Q.QUALITY_HUMAN)) \
            == Code.RESOURCE_EXHAUSTED
    # Bytes that are no GetFrameRequest at all.
    raw = channel.unary_unary("/icmh.v1.Operator/GetFrame")
    for metadata in ((), inspector):
        assert code_of(lambda m=metadata: raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=30, metadata=m)) == Code.INTERNAL
    assert code_of(lambda: channel.unary_unary("/icmh.v1.Operator/Nope")(b"", timeout=30, metadata=inspector)) \
        == Code.UNIMPLEMENTED
    assert stub.ListCameras(operator_pb2.ListCamerasRequest(), timeout=30, metadata=viewer).cameras  # still serving


def audit_rows(channel: grpc.Channel, **filters: object) -> list[operator_pb2.AuditRecord]:
    request = operator_pb2.ListAuditRequest(**filters)
    return list(operator_pb2_grpc.OperatorStub(channel).ListAudit(
        request, timeout=30, metadata=bearer_metadata(TOKENS["admin"])).records)


def test_human_inspections_are_audited(cloud: CloudServer, channel: grpc.Channel, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sample = cloud.metrics.registry.get_sample_value
    before = {o: sample("icmh_cloud_inspections_total", {"quality": "human", "outcome": o}) or 0
              for o in ("ok", "denied", "not_found")}
    assert code_of(get_frame(channel, bearer_metadata(TOKENS["inspector"]), "cam-a", 2, Q.QUALITY_HUMAN)) == Code.OK
    assert code_of(get_frame(channel, bearer_metadata(TOKENS["viewer"]), "cam-a", 2, Q.QUALITY_HUMAN)) \
        == Code.PERMISSION_DENIED
    assert code_of(get_frame(channel, bearer_metadata(TOKENS["admin"]), "cam-a", 77, Q.QUALITY_HUMAN)) \
        == Code.NOT_FOUND
    assert code_of(get_frame(channel, bearer_metadata(TOKENS["viewer"]), "cam-a", 2, Q.QUALITY_MACHINE)) == Code.OK
    rows = [r for r in audit_rows(channel, camera_id="cam-a") if r.frame_id in (2, 77)]
    assert [(r.operator, r.role, r.via, r.frame_id, r.quality, r.outcome) for r in rows[:3]] == [
        ("admin-op", "admin", "token", 77, Q.QUALITY_HUMAN, "not_found"),
        ("viewer-op", "viewer", "token", 2, Q.QUALITY_HUMAN, "denied"),
        ("inspector-op", "inspector", "token", 2, Q.QUALITY_HUMAN, "ok"),
    ]  # newest first; the machine-quality view is not an inspection
    assert rows[0].peer.startswith("ipv4:127.0.0.1") and "inspector" in rows[1].detail
    assert rows[2].time.ToNanoseconds() <= rows[1].time.ToNanoseconds() <= rows[0].time.ToNanoseconds()
    assert [r.outcome for r in audit_rows(channel, operator="viewer-op") if r.frame_id == 2] == ["denied"]
    assert audit_rows(channel, camera_id="cam-a", since=rows[0].time)[0].frame_id == 77
    earlier = audit_rows(channel, camera_id="cam-a", until=rows[2].time)
    assert all(r.time.ToNanoseconds() < rows[2].time.ToNanoseconds() and r.frame_id != 77 for r in earlier)
    after = {o: sample("icmh_cloud_inspections_total", {"quality": "human", "outcome": o}) for o in before}
    assert all(after[o] - before[o] >= 1 for o in before)
    assert sample("icmh_cloud_inspections_total", {"quality": "machine", "outcome": "ok"}) >= 1

    server = ["--server", f"127.0.0.1:{cloud.port}"]
    assert operator_cli.main([*server, "--token", TOKENS["admin"], "audit", "--camera", "cam-a",
                              "--operator", "viewer-op"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["TIME", "(UTC)", "OPERATOR"] and any("denied" in line for line in out[1:])
    assert operator_cli.main([*server, "--token", TOKENS["inspector"], "audit"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    monkeypatch.delenv("ICMH_OPERATOR_TOKEN", raising=False)
    assert operator_cli.main([*server, "audit"]) == 1
    assert "UNAUTHENTICATED" in (err := capsys.readouterr().err) and "ICMH_OPERATOR_TOKEN" in err


def test_no_image_without_its_audit_row(cloud: CloudServer, channel: grpc.Channel,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_disk(record: AuditRecord) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cloud.audit, "record", broken_disk)
    error = rpc_error(get_frame(channel, bearer_metadata(TOKENS["inspector"]), "cam-a", 1, Q.QUALITY_HUMAN))
    assert error.code() == Code.INTERNAL and "not delivered" in error.details()
    assert cloud.metrics.registry.get_sample_value("icmh_cloud_inspections_total",
                                                   {"quality": "human", "outcome": "audit_failed"}) == 1
    assert code_of(get_frame(channel, bearer_metadata(TOKENS["viewer"]), "cam-a", 1, Q.QUALITY_MACHINE)) == Code.OK


def test_audit_log_is_durable_and_pruned_by_its_own_age(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    old, new = 1_000_000_000, 5_000_000_000
    for when, outcome in ((old, "ok"), (new, "denied")):
        log.record(AuditRecord(when, "alice", "inspector", "token", "ipv4:127.0.0.1:1", "cam-a", 3, Q.QUALITY_HUMAN,
                               outcome))
    log.close()
    log = AuditLog(tmp_path / "audit.db")
    assert [r.outcome for r in log.query()] == ["denied", "ok"]
    assert log.prune(0) == 0 and log.count() == 2  # 0: keep forever
    assert log.prune(2.0, now_ns=new) == 1
    assert [(r.time_ns, r.operator, r.frame_id) for r in log.query(camera_id="cam-a")] == [(new, "alice", 3)]
    log.close()


def test_without_operators_everything_is_refused_and_open_access_is_explicit(tmp_path: Path, tiny_weights: Path,
                                                                              shared_dir: Path) -> None:
    request = operator_pb2.ListCamerasRequest()
    for name, overrides, expected in (("closed", {"operators": OperatorRegistry()}, Code.UNAUTHENTICATED),
                                      ("open", {"operators": OperatorRegistry(), "open_operator_access": True},
                                       Code.OK)):
        server = start_cloud(tmp_path / name, tiny_weights, shared_dir, {"cam-x": "x-token"}, **overrides)
        try:
            with open_channel(f"127.0.0.1:{server.port}") as channel:
                stub = operator_pb2_grpc.OperatorStub(channel)
                assert code_of(lambda s=stub: s.ListCameras(request, timeout=30)) == expected
                if expected == Code.UNAUTHENTICATED:
                    assert "no operator configured" in rpc_error(lambda s=stub: s.ListCameras(request)).details()
        finally:
            server.stop(grace=1)


def test_health_and_reflection_can_require_operators(tmp_path: Path, tiny_weights: Path, shared_dir: Path) -> None:
    for name, reflection, expected in (("protected", "operators", Code.UNAUTHENTICATED), ("off", "off",
                                                                                        Code.UNIMPLEMENTED)):
        server = start_cloud(tmp_path / name, tiny_weights, shared_dir, {"cam-x": "x-token"}, open_health=False,
                             reflection=reflection)
        try:
            with open_channel(f"127.0.0.1:{server.port}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                assert code_of(lambda c=check: c(health_pb2.HealthCheckRequest(), timeout=30)) == Code.UNAUTHENTICATED
                reply = check(health_pb2.HealthCheckRequest(), timeout=30, metadata=bearer_metadata(OPERATOR_TOKEN))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
                request = reflection_pb2.ServerReflectionRequest(list_services="")
                assert code_of(lambda i=info, r=request: i(iter([r]), timeout=30)) == expected
                if reflection == "operators":
                    names = next(iter(info(iter([request]), timeout=30, metadata=bearer_metadata(OPERATOR_TOKEN))))
                    assert "icmh.v1.Operator" in {s.name for s in names.list_services_response.service}
        finally:
            server.stop(grace=1)


def settings(**kwargs: object) -> CloudSettings:
    return CloudSettings(**{"cameras": CameraRegistry.load(None, ["cam-a=cam-a-token"]), "data_dir": Path("unused"),
                            "detector": Path("unused"), **kwargs})


def test_settings_keep_camera_and_operator_credentials_apart(tmp_path: Path) -> None:
    assert settings().listen == "127.0.0.1:50051"  # safe default bind address
    with pytest.raises(ValueError, match="camera tokens are not operator credentials"):
        settings(operators=OperatorRegistry.load(None, ["eve=cam-a-token:viewer"]))
    with pytest.raises(ValueError, match="camera certificates are not operator credentials"):
        settings(operators=OperatorRegistry.load(_write(tmp_path, {"eve": {"cert_names": ["cam-a"], "role": "admin"}})))
    with pytest.raises(ValueError, match="loopback"):
        settings(open_operator_access=True, listen="0.0.0.0:50051")
    with pytest.raises(ValueError, match="exclude each other"):
        settings(open_operator_access=True, operators=OperatorRegistry.load(None, ["a=t:admin"]))
    assert settings(open_operator_access=True, listen="[::1]:0").open_operator_access


def _write(folder: Path, operators: object) -> Path:
    path = folder / "operators.json"
    path.write_text(json.dumps({"operators": operators}))
    return path


def test_operator_registry_files_and_flags(tmp_path: Path) -> None:
    registry = OperatorRegistry.load(_write(tmp_path, {
        "alice": {"token_sha256": hashlib.sha256(b"a-secret").hexdigest(), "role": "inspector",
                  "cameras": ["cam-a"]},
        "console": {"cert_names": ["ops-console"], "role": "admin"},
    }), ["bob=with:colon:viewer", "alice=replaced:admin"])
    assert registry.names() == ["alice", "bob", "console"]
    bob = registry.by_token("with:colon")
    assert bob is not None and bob.role == Role.VIEWER and bob.cameras is None
    assert registry.by_token("a-secret") is None  # the flag replaced alice's file entry
    assert registry.by_token("replaced").role == Role.ADMIN
    console = registry.by_certificate(["someone", "ops-console"])
    assert console.name == "console" and console.via == "certificate"
    for bad, message in (({"x": {"token": "t"}}, "no 'role'"), ({"x": {"token": "t", "role": "root"}}, "unknown role"),
                         ({"x": {"role": "admin"}}, "no credential"), ({"x": {"token_sha256": "zz", "role": "admin"}},
                                                                      "not hex"),
                         ({"x": {"token": "t", "role": "admin", "cameras": []}}, "lists no camera"),
                         ({"x": {"token": "t", "role": "admin"}, "y": {"token": "t", "role": "viewer"}}, "share one"),
                         ([{"token": "t", "role": "admin"}], "operator name"), ("nope", "must map")):
        with pytest.raises(ValueError, match=message):
            OperatorRegistry.load(_write(tmp_path, bad))
    with pytest.raises(ValueError, match="NAME=TOKEN:ROLE"):
        OperatorRegistry.load(None, ["no-role=token"])
    example = OperatorRegistry.load(ROOT / "deploy" / "operators.example.json")
    assert example.by_token("change-me-wall").role == Role.VIEWER


def test_client_certificates_map_to_operators_but_camera_certificates_do_not(tmp_path: Path, tiny_weights: Path,
                                                                             shared_dir: Path) -> None:
    pytest.importorskip("cryptography", reason="cryptography (dev extra) makes the test certificates")
    tls = make_tls_files(tmp_path / "tls")
    operators = OperatorRegistry.load(_write(tmp_path, {"console": {"cert_names": ["ops-console"], "role": "viewer"}}),
                                      [f"test-admin={OPERATOR_TOKEN}:admin"])
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-tls": "t"}, operators=operators,
                         tls_cert=tls["server_cert"], tls_key=tls["server_key"], tls_client_ca=tls["ca"])
    target, request = f"127.0.0.1:{server.port}", operator_pb2.ListCamerasRequest()
    try:
        for cert, token, expected in (("client", None, Code.UNAUTHENTICATED),  # the edge's certificate
                                      ("operator", None, Code.OK), ("client", OPERATOR_TOKEN, Code.OK)):
            with open_channel(target, ca=tls["ca"], cert=tls[f"{cert}_cert"], key=tls[f"{cert}_key"],
                              token=token) as channel:
                stub = operator_pb2_grpc.OperatorStub(channel)
                assert code_of(lambda s=stub: s.ListCameras(request, timeout=30)) == expected, (cert, token)
                if cert == "operator":  # viewer by its certificate: no human quality
                    assert code_of(get_frame(channel, (), "cam-tls", 1, Q.QUALITY_HUMAN)) == Code.PERMISSION_DENIED
    finally:
        server.stop(grace=1)


def test_edge_refuses_a_cloud_whose_certificate_does_not_verify(tmp_path: Path, tiny_weights: Path,
                                                                shared_dir: Path) -> None:
    pytest.importorskip("cryptography", reason="cryptography (dev extra) makes the test certificates")
    tls, other = make_tls_files(tmp_path / "tls"), make_tls_files(tmp_path / "other")
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-tls": "t"}, tls_cert=tls["server_cert"],
                         tls_key=tls["server_key"])
    target = f"127.0.0.1:{server.port}"
    try:
        for name, link in (("other-ca", LinkSettings(target, other["ca"], backoff_min_s=0.1)),
                           ("wrong-name", LinkSettings(target, tls["ca"], tls_server_name="cloud.example.net",
                                                       backoff_min_s=0.1))):
            node = start_edge(edge_settings(tmp_path / name, "cam-tls", "t", server.port, shared_dir, tiny_weights,
                                            link=link, max_frames=1))
            try:
                assert node.wait(120), f"{name}: the edge kept retrying"
                assert isinstance(node.error, LinkRefused) and "certificate does not verify" in str(node.error)
                assert node.link.sessions == 0 and not frame_ids(server.settings.detections_jsonl, "cam-tls")
            finally:
                node.close()
        link = LinkSettings(target, tls["ca"], tls_server_name="localhost", backoff_min_s=0.1)
        node = start_edge(edge_settings(tmp_path / "right", "cam-tls", "t", server.port, shared_dir, tiny_weights,
                                        link=link, max_frames=1))
        try:
            wait_for(lambda: frame_ids(server.settings.detections_jsonl, "cam-tls") == [1], what="the frame over TLS")
        finally:
            node.close()
    finally:
        server.stop(grace=1)
    with pytest.raises(ValueError, match="needs TLS"):
        LinkSettings(target, tls_server_name="localhost")


def busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.slow
def test_metrics_port_in_use_is_a_one_line_error(tmp_path: Path, tiny_weights: Path, shared_dir: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    with busy_port() as sock:
        port = str(sock.getsockname()[1])
        common = ["--metrics-port", port, "--metrics-addr", "127.0.0.1", "--weights", str(tiny_weights),
                  "--threads", "1"]
        assert cloud_cli.main(["--listen", "127.0.0.1:0", "--camera", "c=t", "--data-dir", str(tmp_path / "cloud"),
                               "--detector", str(shared_dir / "models" / "yolov8n.pt"), *common]) == 2
        err = capsys.readouterr().err.strip()
        assert re.fullmatch(rf"icmh-cloud: error: metrics endpoint 127\.0\.0\.1:{port}: .+", err), err
        edge = subprocess.run(
            [sys.executable, "-m", "icmh.edge.cli", "--camera-id", "c", "--cloud", "127.0.0.1:9", "--source",
             str(shared_dir / VIDEO), "--width", "320", "--height", "192", "--data-dir", str(tmp_path / "edge"),
             *common], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "ICMH_EDGE_TOKEN": "t"},
            capture_output=True, text=True, timeout=300)
        assert edge.returncode == 2, edge.stderr
        assert "Traceback" not in edge.stderr
        assert re.search(rf"^icmh-edge: error: metrics endpoint 127\.0\.0\.1:{port}: .+$", edge.stderr, re.M)


def test_systemd_edge_unit_takes_its_metrics_port_from_the_camera_env_file() -> None:
    unit = (ROOT / "deploy" / "systemd" / "icmh-edge@.service").read_text()
    assert re.search(r"--metrics-port \$\{ICMH_METRICS_PORT\}", unit)
    used = set(re.findall(r"\$\{(\w+)\}", unit))
    defaults = set(re.findall(r"^Environment=(\w+)=", unit, re.M))
    example = set(re.findall(r"^(\w+)=", (ROOT / "deploy" / "edge.env.example").read_text(), re.M))
    assert used <= example | defaults, used - example - defaults


@pytest.mark.skipif(not all((SHIPPED_DIR / LAYER_FILES[k]).exists() for k in ("base", "pr")),
                    reason="no shipped weights")
def test_weights_load_tensors_only(tmp_path: Path) -> None:
    for layer in ("base", "pr", "fr"):  # the shipped files are plain tensors: they load as before
        manifest = json.loads((SHIPPED_DIR / LAYER_FILES[layer]).with_suffix(".json").read_text())
        assert load_layer(SHIPPED_DIR / LAYER_FILES[layer]).weights_hash.hex() == manifest["weights_hash"]
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):  # unpickling this would call os.system
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pt"
    torch.save({"architecture": "sa-icm-tiny", "state_dict": {}, "extra": Payload()}, evil)
    with pytest.raises(ValueError, match="refused, nothing executed"):
        load_state(evil)
    with pytest.raises(ValueError, match="refused"):
        load_layer(evil)
    assert not marker.exists()
