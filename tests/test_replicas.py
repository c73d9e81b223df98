"""Several cloud replicas on one real PostgreSQL index: camera leases (one holder at a time, takeover after
expiry, restarts), each replica's share of the work, edges redirected to the camera's replica, operator calls
routed to it (same pixels, one audit row), and a replica killed with SIGKILL mid-stream whose cameras move to
the other replica with every frame detected and published exactly once."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest
from fleet_support import cloud_process, postgres_url, service_url  # noqa: F401 - fixture
from service_support import (
    OPERATOR_TOKEN,
    RawEdge,
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

from icmh.bench.broker_capture import stream_records
from icmh.bench.delivery import read_jsonl
from icmh.cloud.auth import CameraRegistry
from icmh.cloud.frame_index import FrameIndex, FrameState
from icmh.cloud.leases import CameraLeases, ReplicaIdentity, ReplicaInUse, local_sink_name
from icmh.cloud.replica_index import ReplicaFrameIndex, live_replicas_of
from icmh.cloud.results import FrameResult
from icmh.cloud.server import CloudSettings
from icmh.edge.link import LinkSettings, addresses_starting_at
from icmh.rpc import common_pb2, edge_pb2, operator_pb2, replica_pb2, replica_pb2_grpc
from icmh.service.grpc_setup import open_channel
from icmh.service.replica_redirect import parse_redirect

REPLICA_TOKEN = "test-replica-credential"
Quality = operator_pb2.Quality


def identity(name: str, lease_s: float = 2.0) -> ReplicaIdentity:
    return ReplicaIdentity(name, f"127.0.0.1:{free_port()}", lease_s)


def add(index: FrameIndex, camera: str, frame_id: int) -> None:
    index.add_frame(camera, frame_id, 10**18 + frame_id, 0.5, b"layer %s %d" % (camera.encode(), frame_id), 320, 192,
                    0)


def result(camera: str, frame_id: int) -> FrameResult:
    return FrameResult(camera, frame_id, 10**18 + frame_id, 2 * 10**18, 320, 192)


def test_camera_leases_have_one_holder_and_move_after_expiry(postgres_url: str) -> None:  # noqa: F811
    index = FrameIndex(postgres_url)
    backend = index._db
    r1, r2 = CameraLeases(backend, identity("r1", 1.0)), CameraLeases(backend, identity("r2", 1.0))
    for leases in (r1, r2):
        assert leases.register([]) < 0.5
    assert sorted(r1.live_replicas()) == ["r1", "r2"] and live_replicas_of(index) == ["r1", "r2"]

    claim = r1.acquire("cam")
    assert claim.acquired and not claim.takeover
    refused = r2.acquire("cam")
    assert not refused.acquired and refused.holder.replica_id == "r1"
    assert refused.holder.address == r1.identity.address and 0 < refused.holder.remaining_s <= 1.0
    assert (r2.holder("cam").replica_id, r2.holder("cam").address) == ("r1", r1.identity.address)
    assert r1.holder("cam") is None  # its own lease
    assert r1.renew({"cam": (True, 2.5)}) == {"cam"}
    assert r2.holders()["cam"].online and r2.holders()["cam"].fps == 2.5

    time.sleep(1.2)  # r1 stops renewing (it died): r2 takes the camera over
    taken = r2.acquire("cam")
    assert taken.acquired and taken.takeover
    assert r1.renew({}) is not None and "cam" not in r1.renew({})  # r1 learns it lost the camera
    assert not r1.acquire("cam").acquired  # and cannot take it back while r2's lease lives

    assert r2.release(["cam"]) == 1
    claim = r1.acquire("cam")
    assert claim.acquired and not claim.takeover  # released, not expired: no takeover

    # a restart with the same replica id waits for its predecessor's heartbeat, then inherits its leases
    with pytest.raises(ReplicaInUse, match="in use by a live cloud-server"):
        CameraLeases(backend, r1.identity).register([], wait_s=0.3)
    successor = CameraLeases(backend, r1.identity)
    waited = successor.register([])
    assert waited > 0.3 and successor.renew({}) == {"cam"}
    assert r1.renew({}) is None  # the old process is fenced out
    successor.unregister()
    r2.unregister()
    assert live_replicas_of(index) == [] and r2.holder("cam") is None
    index.close()


def test_each_replica_detects_and_publishes_its_cameras_only(postgres_url: str) -> None:  # noqa: F811
    a = ReplicaFrameIndex(postgres_url, identity("a", 60.0))
    b = ReplicaFrameIndex(postgres_url, identity("b", 60.0))
    a.leases.register(["nats:site", "jsonl@a"])
    b.leases.register(["nats:site", "jsonl@b"])
    assert a.configure_sinks(["nats:site", "jsonl@a"]) == 0 and b.configure_sinks(["nats:site", "jsonl@b"]) == 0
    assert a.leases.acquire("ca").acquired and b.leases.acquire("cb").acquired
    for frame_id in (1, 2):
        add(a, "ca", frame_id)
        add(b, "cb", frame_id)  # admission works through any replica; the holder detects
    add(b, "ca", 3)
    assert [r.key for r, _ in a.pending(10)] == [("ca", 1), ("ca", 2), ("ca", 3)]
    assert [r.key for r, _ in b.pending(10)] == [("cb", 1), ("cb", 2)]
    assert a.usage()[2] == 3 and b.usage()[2] == 2

    # two replicas racing for the same frames (a lease moved mid-batch): one result each, owed once per sink
    stored_a = a.record_results([result("ca", 1), result("ca", 2)])
    stored_b = b.record_results([result("ca", 2), result("ca", 3)])
    assert [r.key for r in stored_a] == [("ca", 1), ("ca", 2)] and [r.key for r in stored_b] == [("ca", 3)]
    b.record_results([result("cb", 1)])
    assert [r.key for r in a.deliveries("nats:site", 10)] == [("ca", 1), ("ca", 2), ("ca", 3)]  # its camera
    assert [r.key for r in b.deliveries("nats:site", 10)] == [("cb", 1)]
    assert [r.key for r in b.deliveries("jsonl@b", 10)] == [("cb", 1), ("ca", 3)]  # what b detected
    assert a.backlog() == {"nats:site": 3, "jsonl@a": 2} and b.backlog() == {"nats:site": 1, "jsonl@b": 2}

    # b's cameras move to a: a delivers their shared results; b's own file keeps b's cursor
    b.leases.release()
    assert a.leases.with_work(unleased=True) == {"cb"} and a.leases.acquire("cb").acquired
    assert [r.key for r in a.deliveries("nats:site", 10)] == [("ca", 1), ("cb", 1), ("ca", 2), ("ca", 3)]
    assert [r.key for r, _ in a.pending(10)] == [("cb", 2)] and b.pending(10) == []
    a.delivered("nats:site", [("ca", 1), ("ca", 2), ("ca", 3), ("cb", 1)])
    # a's file leaves its configuration: its cursor goes, the other replica's file keeps its own
    assert a.configure_sinks(["nats:site"]) == 2
    assert a.frame("ca", 1).state is FrameState.PUBLISHED and a.frame("ca", 3).state is FrameState.DETECTED
    assert b.backlog()["jsonl@b"] == 2
    a.record_results([result("cb", 2)])
    assert a.backlog() == {"nats:site": 1}
    # a shared sink no live replica configures any more owes nothing; b's file cursor still waits for b
    assert b.configure_sinks(["jsonl@b"]) == 0  # a still has nats:site
    b.leases.unregister()
    assert a.configure_sinks([]) == 1
    assert [r.key for r in b.deliveries("jsonl@b", 10)] == [("cb", 1), ("ca", 3)]
    a.leases.unregister()
    a.close()
    b.close()


def test_replicas_need_a_shared_postgres_index_and_their_own_credential(tmp_path: Path) -> None:
    base = {"cameras": CameraRegistry.load(None, ["cam=camera-token"]), "data_dir": tmp_path,
            "detector": tmp_path / "yolo.pt", "replica_id": "r1", "replica_token": REPLICA_TOKEN}
    for index in (None, f"sqlite:///{tmp_path}/frames.db"):
        with pytest.raises(ValueError, match="shared PostgreSQL frame index.*leave out --replica-id"):
            CloudSettings(**base, index=index)
    pg = "postgresql://icmh@127.0.0.1/icmh"
    with pytest.raises(ValueError, match="ICMH_REPLICA_TOKEN"):
        CloudSettings(**{**base, "replica_token": None}, index=pg)
    with pytest.raises(ValueError, match="differ from every camera and operator token"):
        CloudSettings(**{**base, "replica_token": "camera-token"}, index=pg)
    with pytest.raises(ValueError, match="--advertise-address"):
        CloudSettings(**base, index=pg, listen="0.0.0.0:50051")
    with pytest.raises(ValueError, match="needs --replica-id"):
        CloudSettings(**{**base, "replica_id": None}, index=pg, advertise_address="cloud-0:50051")
    with pytest.raises(ValueError, match="replica-id"):
        ReplicaIdentity("a@b", "host:1")
    with pytest.raises(ValueError, match="host:port"):
        LinkSettings("cloud-a:50051,cloud-b")


def replica(tmp: Path, name: str, weights: Path, shared_dir: Path, cameras: dict[str, str], index: str,
            **overrides: object):  # -> CloudServer
    return start_cloud(tmp / name, weights, shared_dir, cameras, index=index, replica_id=name,
                       replica_token=REPLICA_TOKEN, lease_s=2.0, **overrides)


def test_replicas_spread_cameras_redirect_edges_and_route_inspections(
        tmp_path: Path, tiny_weights: Path, shared_dir: Path, postgres_url: str) -> None:  # noqa: F811
    """Two in-process replicas: each camera's edge lands on its replica (a list of both addresses), a stream
    opened at the other replica is redirected there, and operator calls through the other replica are served
    with the camera's edge behind the first (same pixels, audited once, where the operator called)."""
    cameras = {"cam-a": "token-a", "cam-b": "token-b"}
    r1 = replica(tmp_path, "r1", tiny_weights, shared_dir, cameras, postgres_url)
    r2 = replica(tmp_path, "r2", tiny_weights, shared_dir, cameras, postgres_url)
    servers = {"r1": r1, "r2": r2}
    addresses = [f"127.0.0.1:{r1.port}", f"127.0.0.1:{r2.port}"]
    nodes = []
    try:
        for camera, home in (("cam-a", "r1"), ("cam-b", "r2")):
            target = addresses_starting_at(camera, addresses, addresses[list(servers).index(home)])
            nodes.append(start_edge(edge_settings(
                tmp_path / f"edge-{camera}", camera, cameras[camera], 0, shared_dir, tiny_weights, max_frames=3,
                fps=4.0, link=LinkSettings(target, backoff_min_s=0.1, backoff_max_s=0.5))))
        wait_for(lambda: all(len(frame_ids(s.settings.detections_jsonl, c)) == 3
                             for s, c in ((r1, "cam-a"), (r2, "cam-b"))), timeout=120, what="both cameras' frames")
        assert r1.replicas.held() == {"cam-a"} and r2.replicas.held() == {"cam-b"}
        assert frame_ids(r1.settings.detections_jsonl, "cam-b") == [] == frame_ids(r2.settings.detections_jsonl,
                                                                                      "cam-a")

        # a stream for cam-a opened at r2 is sent to r1
        hello = edge_pb2.Hello()
        hello.CopyFrom(nodes[0].link.hello)
        raw = RawEdge(r2.port, hello)
        error = rpc_error(raw.next)
        raw.close()
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "streams to replica r1" in error.details()
        redirect = parse_redirect(error.trailing_metadata())
        assert (redirect.address, redirect.replica_id) == (addresses[0], "r1") and redirect.remaining_s > 0
        assert r2.metrics.registry.get_sample_value("icmh_cloud_edge_redirects_total") == 1

        # a subscriber on r2 gets every camera's results: r2 relays r1's while someone subscribes
        subscriber = Subscriber(r2.port)
        wait_for(lambda: r1.hub.own.count == 1, timeout=30, what="r2's relay stream from r1")

        # cam-a's edge restarts with r2 first in its list: it follows the redirect to r1
        nodes[0].close()
        nodes[0] = start_edge(dataclasses.replace(nodes[0].settings, max_frames=1, link=LinkSettings(
            addresses_starting_at("cam-a", addresses, addresses[1]), backoff_min_s=0.1, backoff_max_s=0.5)))
        wait_for(lambda: r1.sessions.get("cam-a") is not None and nodes[0].link.sessions, timeout=60,
                 what="cam-a back on r1")
        assert nodes[0].link.target == addresses[0] and r2.sessions.get("cam-a") is None
        wait_for(lambda: subscriber.ids("cam-a") == [4], timeout=60, what="cam-a's frame 4 at r2's subscriber")
        subscriber.close()
        assert frame_ids(r1.settings.detections_jsonl, "cam-a") == [1, 2, 3, 4]  # detected by r1 only
        assert frame_ids(r2.settings.detections_jsonl, "cam-a") == []

        # HUMAN and ORIGINAL through the replica without the edge: the same pixels as through its replica
        for quality in (Quality.QUALITY_HUMAN, Quality.QUALITY_ORIGINAL):
            direct = get_frame(r1.port, "cam-a", 2, quality)
            routed = get_frame(r2.port, "cam-a", 2, quality)
            assert routed.png == direct.png and routed.residual_bytes == direct.residual_bytes
            assert routed.lossless_bytes == direct.lossless_bytes
            assert (direct.residual_bytes if quality == Quality.QUALITY_HUMAN else direct.lossless_bytes) > 0
        # an operator's residual rate goes through the relay too
        direct, routed = (get_frame(r.port, "cam-a", 2, Quality.QUALITY_HUMAN, residual_rate=1.0) for r in (r1, r2))
        assert routed.png == direct.png and routed.residual_rate == direct.residual_rate == 1.0
        assert r2.metrics.registry.get_sample_value("icmh_cloud_replica_calls_total",
                                                    {"call": "fetch_layer", "outcome": "ok"}) >= 3
        # one audit log for the fleet (in the index): each call recorded once, by the replica it reached
        audits = {name: [(r.camera_id, r.frame_id, r.quality, r.peer) for r in server.audit.query()]
                  for name, server in servers.items()}
        assert audits["r1"] == audits["r2"] and len(audits["r1"]) == 6
        assert sorted(row[2] for row in audits["r1"]) == sorted([*4 * [Quality.QUALITY_HUMAN], *2 * [
            Quality.QUALITY_ORIGINAL]])
        assert not (tmp_path / "r1" / "cloud" / "audit.db").exists()

        # the camera list of either replica shows both cameras online; config goes through to the edge
        r2.replicas.beat()
        r1.replicas.beat()
        states = {c.camera_id: c.state for c in operator(r2.port).ListCameras(
            operator_pb2.ListCamerasRequest(), timeout=10).cameras}
        assert states == {"cam-a": operator_pb2.CAMERA_STATE_ONLINE, "cam-b": operator_pb2.CAMERA_STATE_ONLINE}
        reply = operator(r2.port).ConfigureCamera(operator_pb2.ConfigureCameraRequest(
            camera_id="cam-a", config=common_pb2.EdgeConfig(residual_rate=0.25)), timeout=10)
        assert reply.delivered
        wait_for(lambda: nodes[0].rates.current.residual == 0.25, timeout=10, what="the config at cam-a's edge")

        # ReplicaLink takes the replicas' credential only
        for token in (None, OPERATOR_TOKEN, "token-a"):
            stub = replica_pb2_grpc.ReplicaLinkStub(open_channel(addresses[0], token=token))
            error = rpc_error(lambda stub=stub: stub.FetchLayer(replica_pb2.FetchLayerRequest(
                camera_id="cam-a", frame_id=2), timeout=10))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED

        # r1 loses cam-a's lease (as when its heartbeats miss the index and r2 takes the camera over): r1 ends
        # the stream with a redirect and the edge follows it to r2
        with r2.index._db.transaction() as db:
            db.execute("UPDATE camera_leases SET replica_id = 'r2', incarnation = ?, address = ?,"
                       " expires_ns = expires_ns + 60000000000 WHERE camera_id = 'cam-a'",
                       (r2.index.incarnation, addresses[1]))
        r1.replicas.beat()
        wait_for(lambda: r2.sessions.get("cam-a") is not None, timeout=30, what="cam-a's edge on r2")
        assert r1.sessions.get("cam-a") is None and nodes[0].link.target == addresses[1]
        assert r1.replicas.held() == set() and "cam-a" in r2.replicas.held()
    finally:
        for node in nodes:
            node.close()
        r2.stop(grace=1)
        r1.stop(grace=1)
    index = FrameIndex(postgres_url)
    with index._db.transaction() as db:  # clean stops: no lease left behind
        assert db.execute("SELECT COUNT(*) FROM camera_leases WHERE incarnation <> ''").fetchone()[0] == 0
    assert live_replicas_of(index) == []
    index.close()


def test_a_joining_replica_takes_its_share_of_the_cameras_and_no_frame_is_lost_or_repeated(
        tmp_path: Path, tiny_weights: Path, shared_dir: Path, postgres_url: str) -> None:  # noqa: F811
    """Four cameras stream to r1 alone; r2 joins mid-stream (a scale-out): once the imbalance has lasted
    ``rebalance_s`` r1 hands two leases over, ends those streams with a redirect and their edges follow it to r2;
    every frame of every camera is detected once over the two replicas' files."""
    cameras = {f"cam-{i}": f"token-{i}" for i in range(4)}
    frames = 24
    r1 = replica(tmp_path, "r1", tiny_weights, shared_dir, cameras, postgres_url, rebalance_s=1.0)
    servers, nodes = [r1], []
    try:
        for camera, token in cameras.items():
            nodes.append(start_edge(edge_settings(tmp_path / f"edge-{camera}", camera, token, r1.port, shared_dir,
                                                  tiny_weights, max_frames=frames, fps=3.0)))
        wait_for(lambda: r1.replicas.held() == set(cameras), timeout=60, what="every camera on r1")
        r2 = replica(tmp_path, "r2", tiny_weights, shared_dir, cameras, postgres_url, rebalance_s=1.0)
        servers.append(r2)
        wait_for(lambda: len(r1.replicas.held()) == 2 == len(r2.replicas.held()), timeout=60,
                 what="two cameras on each replica")
        moved = r2.replicas.held()
        assert r1.metrics.registry.get_sample_value("icmh_cloud_lease_handovers_total") == 2
        wait_for(lambda: all(r2.sessions.get(c) is not None for c in moved), timeout=60, what="moved edges on r2")
        assert {node.settings.camera_id for node in nodes if node.link.target == f"127.0.0.1:{r2.port}"} == moved

        def detected() -> Counter:
            return Counter((r["camera_id"], r["frame_id"]) for server in servers
                           for r in read_jsonl(server.settings.detections_jsonl))

        expected = {(camera, i) for camera in cameras for i in range(1, frames + 1)}
        wait_for(lambda: set(detected()) >= expected, timeout=180, poll=0.5, what="every frame detected")
        assert set(detected()) == expected and set(detected().values()) == {1}, "a frame detected twice or never"
        assert any(frame_ids(r1.settings.detections_jsonl, c) for c in moved)  # they did start on r1
        assert all(frame_ids(r2.settings.detections_jsonl, c) for c in moved)
    finally:
        for node in nodes:
            node.close()
        for server in reversed(servers):
            server.stop(grace=1)


@pytest.mark.slow
def test_replica_killed_mid_stream_its_cameras_move_and_every_frame_is_detected_once(
        tmp_path: Path, tiny_weights: Path, shared_dir: Path, postgres_url: str) -> None:  # noqa: F811
    """Two cloud processes on one PostgreSQL index publishing to NATS, a camera streaming to each; SIGKILL one
    in the middle of its camera's stream: the camera's edge moves to the other replica once the lease expires
    and resends what was not acked, the survivor detects and publishes the rest; every frame of both cameras
    is in the NATS stream exactly once, and with the killed replica restarted (same id: it writes what it owed
    its own file) in the union of the two JSON Lines files exactly once; the index owes nothing."""
    nats_url = service_url("ICMH_TEST_NATS")
    subject, frames, lease_s = f"icmh.replicas.{uuid.uuid4().hex[:8]}", 16, 3
    stream = subject.upper().replace(".", "_")
    cameras = {"cam-1": "token-1", "cam-2": "token-2"}
    ports = {"r1": free_port(), "r2": free_port()}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}

    def start(name: str):  # -> subprocess.Popen
        return cloud_process(tmp_path / name, ports[name], tiny_weights, shared_dir, cameras, "--index", postgres_url,
                             "--publish", f"{nats_url}/{subject}", "--replica-id", name, "--lease-seconds",
                             str(lease_s), env={"ICMH_REPLICA_TOKEN": REPLICA_TOKEN})

    clouds = {name: start(name) for name in ports}
    jsonl = {name: tmp_path / name / "detections.jsonl" for name in ports}
    nodes = []
    try:
        for camera, home in (("cam-1", "r1"), ("cam-2", "r2")):
            target = addresses_starting_at(camera, list(addresses.values()), addresses[home])
            nodes.append(start_edge(edge_settings(
                tmp_path / f"edge-{camera}", camera, cameras[camera], 0, shared_dir, tiny_weights,
                max_frames=frames, fps=3.0, link=LinkSettings(target, backoff_min_s=0.1, backoff_max_s=1.0))))
        wait_for(lambda: len(frame_ids(jsonl["r1"], "cam-1")) >= 3, timeout=180, what="cam-1's first results on r1")
        clouds["r1"].send_signal(signal.SIGKILL)
        clouds["r1"].wait(timeout=30)
        assert len(frame_ids(jsonl["r1"], "cam-1")) < frames, "the stream ended before the kill: nothing tested"
        assert frame_ids(jsonl["r1"], "cam-2") == []

        def published() -> Counter:
            return Counter((r["camera_id"], r["frame_id"]) for r, _ in stream_records(nats_url, stream))

        expected = {(camera, i) for camera in cameras for i in range(1, frames + 1)}
        wait_for(lambda: set(published()) >= expected, timeout=240, poll=0.5,
                 what="every frame of both cameras in the NATS stream")
        assert nodes[0].link.target == addresses["r2"]  # cam-1's edge moved to the survivor
        index = FrameIndex(postgres_url)
        with index._db.transaction() as db:
            holders = dict(db.execute("SELECT camera_id, replica_id FROM camera_leases").fetchall())
        assert holders == {"cam-1": "r2", "cam-2": "r2"}
        counts = published()
        assert set(counts) == expected and set(counts.values()) == {1}, "a frame published twice or never"
        records = stream_records(nats_url, stream)
        assert sorted(msg_id for _, msg_id in records) == sorted(f"{c}:{i}" for c, i in expected)

        # the killed replica comes back (same id, same data folder): it writes what it owed its own file
        clouds["r1"] = start("r1")

        def owed() -> int:
            with index._db.transaction() as db:
                return db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]

        wait_for(lambda: owed() == 0 and not index.unpublished(), timeout=120, what="nothing owed to any sink",
                 poll=0.5)
        in_files = Counter((r["camera_id"], r["frame_id"]) for name in ports for r in read_jsonl(jsonl[name]))
        assert set(in_files) == expected and set(in_files.values()) == {1}, "a frame in the files twice or never"
        assert all(f.state is FrameState.PUBLISHED for c in cameras for f in index.frames(c, limit=100))
        assert {c.camera_id: c.last_frame_id for c in index.cameras()} == dict.fromkeys(cameras, frames)
        index.close()
    finally:
        for node in nodes:
            node.close()
        for process in clouds.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)


def test_unreplicated_server_refuses_an_index_shared_by_replicas(
        tmp_path: Path, tiny_weights: Path, shared_dir: Path, postgres_url: str) -> None:  # noqa: F811
    leases = ReplicaFrameIndex(postgres_url, identity("r9", 30.0))
    leases.leases.register([local_sink_name("jsonl", "r9")])
    try:
        with pytest.raises(ValueError, match="shared by the live replicas r9: start this server with --replica-id"):
            start_cloud(tmp_path, tiny_weights, shared_dir, {"cam": "t"}, index=postgres_url)
    finally:
        leases.leases.unregister()
        leases.close()


def test_concurrent_claims_give_one_holder(postgres_url: str) -> None:  # noqa: F811
    indexes = [ReplicaFrameIndex(postgres_url, identity(f"r{i}", 60.0), pool_size=2) for i in range(4)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def claim(index: ReplicaFrameIndex) -> None:
        index.leases.register([])
        for camera in ("x", "y", "z"):
            won = index.leases.acquire(camera).acquired
            with lock:
                outcomes.append(f"{camera}:{index.leases.identity.replica_id}" if won else "refused")

    threads = [threading.Thread(target=claim, args=(index,)) for index in indexes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert Counter(o.split(":")[0] for o in outcomes) == {"refused": 9, "x": 1, "y": 1, "z": 1}
    for index in indexes:
        index.leases.unregister()
        index.close()
