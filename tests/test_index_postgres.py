"""The frame index on SQLite and on a real PostgreSQL server: one contract (admission, duplicates, per-sink
deliveries, retention), versioned migrations, concurrent admission, and a cloud killed mid-stream whose
PostgreSQL index still publishes every frame once."""

from __future__ import annotations

import signal
import sqlite3
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from fleet_support import cloud_process, postgres_url, service_url  # noqa: F401 - fixture
from service_support import edge_settings, frame_ids, free_port, start_edge, wait_for

from icmh.bench.broker_capture import MqttCollector, stream_records
from icmh.cloud.frame_index import Admission, FrameIndex, FrameState
from icmh.cloud.index_migrations import LATEST, MIGRATIONS
from icmh.cloud.results import FrameResult


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/frames.db"
    return request.getfixturevalue("postgres_url")


def add(index: FrameIndex, camera: str, frame_id: int, base: bytes) -> Admission:
    return index.add_frame(camera, frame_id, 10**18 + frame_id, 0.5, base, 320, 192, 100)


def detected(index: FrameIndex, *keys: tuple[str, int]) -> None:
    index.record_results([FrameResult(camera, frame, 10**18 + frame, 2 * 10**18, 320, 192) for camera, frame in keys])


def test_index_contract_on_both_stores(location: str) -> None:
    index = FrameIndex(location)
    assert index.migrations_applied == [m.version for m in MIGRATIONS] and index.schema_version() == LATEST
    index.register_camera("c", 320, 192, "pr")
    assert [add(index, "c", i, b"layer%d" % i) for i in (1, 2, 3)] == [Admission.ACCEPTED] * 3
    assert add(index, "c", 2, b"layer2") is Admission.DUPLICATE
    assert add(index, "c", 2, b"other") is Admission.CONFLICT
    assert add(index, "d", 2, b"layer2") is Admission.ACCEPTED  # ids are per camera
    assert [r.key for r, _ in index.pending(10)] == [("c", 1), ("c", 2), ("c", 3), ("d", 2)]
    assert index.pending(1)[0][1] == b"layer1" and index.base_layer("d", 2) == b"layer2"

    # each sink has its own cursor: a frame is published once every configured sink has it
    assert index.configure_sinks(["jsonl", "mqtt:site"]) == 0
    detected(index, ("c", 1), ("c", 2))
    detected(index, ("c", 1))  # stored again: no second delivery
    assert index.backlog() == {"jsonl": 2, "mqtt:site": 2}
    assert [r.key for r in index.deliveries("mqtt:site", 10)] == [("c", 1), ("c", 2)]
    index.delivered("jsonl", [("c", 1), ("c", 2)])
    assert index.deliveries("jsonl", 10) == [] and index.frame("c", 1).state is FrameState.DETECTED
    index.delivered("mqtt:site", [("c", 1)])
    assert index.frame("c", 1).state is FrameState.PUBLISHED and index.frame("c", 2).state is FrameState.DETECTED
    assert [r.key for r in index.unpublished()] == [("c", 2)]
    assert index.prune(max_bytes=1) == 1  # only the published frame may go
    assert index.frame("c", 1) is None and index.camera("c").last_frame_id == 3
    assert add(index, "c", 1, b"layer1") is Admission.DUPLICATE  # removed, but known as received

    # a sink dropped from the configuration owes nothing any more
    assert index.configure_sinks(["jsonl"]) == 1
    assert index.frame("c", 2).state is FrameState.PUBLISHED and index.backlog() == {"jsonl": 0}
    index.configure_sinks([])
    detected(index, ("c", 3))  # no sink: published at once
    assert index.frame("c", 3).state is FrameState.PUBLISHED and index.frame("c", 3).result.detect_ns == 2 * 10**18
    assert index.set_camera_config("c", {"base_rate": 0.3}) == {"base_rate": 0.3}
    index.close()

    reopened = FrameIndex(location)
    assert reopened.migrations_applied == []
    assert reopened.frame("d", 2).state is FrameState.RECEIVED and reopened.usage() == (3, 18, 1)
    [camera] = reopened.cameras("c")
    assert (camera.last_frame_id, camera.frames_stored, camera.config) == (3, 2, {"base_rate": 0.3})
    assert [r.frame_id for r in reopened.frames("c", 0, 0, 10)] == [3, 2]
    assert reopened.prune(max_age_s=1e-9) == 2 and reopened.usage() == (1, 6, 1)
    reopened.close()


def test_sqlite_index_from_before_versioning_is_adopted(tmp_path: Path) -> None:
    """A frames.db written before migrations existed becomes version 1 unchanged; its results detected but not
    written out are owed to the JSON Lines file (the only sink there was)."""
    path = tmp_path / "frames.db"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0].sql["sqlite"])
        db.execute("INSERT INTO frames (camera_id, frame_id, capture_ns, receive_ns, width, height, rate, base,"
                   " base_digest, base_bytes, residual_bytes, state, detections, detect_ns) VALUES"
                   " ('c', 1, 1, 1, 8, 8, 0.5, x'00', x'00', 1, 0, 1, '[]', 2)")
    index = FrameIndex(path)
    assert index.migrations_applied == [m.version for m in MIGRATIONS]
    index.configure_sinks(["jsonl"])
    assert [r.key for r in index.deliveries("jsonl", 10)] == [("c", 1)]
    index.close()


def test_migrations_are_versioned_and_serialised(postgres_url: str) -> None:  # noqa: F811 - fixture
    opened: list[FrameIndex] = []
    threads = [threading.Thread(target=lambda: opened.append(FrameIndex(postgres_url))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(len(i.migrations_applied) for i in opened) == [0, 0, len(MIGRATIONS)]  # applied once
    with opened[0]._db.transaction() as db:
        rows = db.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert [tuple(r) for r in rows] == [(m.version, m.name) for m in MIGRATIONS]
        db.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (LATEST + 1,))
    for index in opened:
        index.close()
    with pytest.raises(ValueError, match="newer than this cloud-server"):
        FrameIndex(postgres_url)


def test_concurrent_admission_on_postgres(postgres_url: str) -> None:  # noqa: F811 - fixture
    """Many connections admitting at once: each (camera, frame) is accepted exactly once."""
    index = FrameIndex(postgres_url, pool_size=6)
    outcomes: list[Admission] = []
    lock = threading.Lock()

    def admit(camera: str) -> None:
        for frame_id in range(1, 6):
            admission = add(index, camera, frame_id, b"same layer %d" % frame_id)
            with lock:
                outcomes.append(admission)

    threads = [threading.Thread(target=admit, args=(camera,)) for camera in ("a", "a", "a", "b", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert Counter(outcomes) == {Admission.ACCEPTED: 15, Admission.DUPLICATE: 15}
    assert sorted(r.key for r, _ in index.pending(100)) == [(c, i) for c in "abc" for i in range(1, 6)]
    assert {c.camera_id: c.last_frame_id for c in index.cameras()} == {"a": 5, "b": 5, "c": 5}
    index.close()


def test_unusable_index_locations_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot reach the frame index at postgresql://icmh:\\*\\*\\*@127.0.0.1"):
        FrameIndex(f"postgresql://icmh:secret@127.0.0.1:{free_port()}/nowhere", timeout_s=2)
    for bad in ("mysql://host/db", "sqlite://relative.db", "sqlite:///"):
        with pytest.raises(ValueError, match="index"):
            FrameIndex(bad)


@pytest.mark.slow
def test_cloud_killed_mid_stream_with_postgres_index_publishes_every_frame_once(
        tmp_path: Path, tiny_weights: Path, shared_dir: Path, postgres_url: str) -> None:  # noqa: F811
    """The cloud runs on a PostgreSQL index and publishes to the JSON Lines file, NATS and MQTT; SIGKILL in the
    middle of the stream and a restart: every frame is in the file and the NATS stream exactly once and reached
    the MQTT broker (QoS 1: at least once), and the index owes nothing."""
    nats_url, mqtt_url = service_url("ICMH_TEST_NATS"), service_url("ICMH_TEST_MQTT")
    run = uuid.uuid4().hex[:8]
    subject, prefix, frames = f"icmh.crash.{run}", f"icmh-crash/{run}", 12
    collector = MqttCollector(mqtt_url, prefix)
    port, jsonl = free_port(), tmp_path / "detections.jsonl"
    flags = ("--index", postgres_url, "--publish", f"{nats_url}/{subject}", "--publish", f"{mqtt_url}/{prefix}")
    cloud = cloud_process(tmp_path, port, tiny_weights, shared_dir, {"cam-p": "token-p"}, *flags)
    node = start_edge(edge_settings(tmp_path / "edge", "cam-p", "token-p", port, shared_dir, tiny_weights,
                                    max_frames=frames, fps=4.0))
    try:
        wait_for(lambda: len(frame_ids(jsonl, "cam-p")) >= 2, timeout=120, what="the first results")
        cloud.send_signal(signal.SIGKILL)
        cloud.wait(timeout=30)
        assert len(frame_ids(jsonl, "cam-p")) < frames, "the stream ended before the kill: nothing was tested"
        cloud = cloud_process(tmp_path, port, tiny_weights, shared_dir, {"cam-p": "token-p"}, *flags)
        stream = subject.upper().replace(".", "_")
        wait_for(lambda: len(stream_records(nats_url, stream)) >= frames and len(frame_ids(jsonl, "cam-p")) >= frames
                 and len({r["frame_id"] for r in collector.results("cam-p")}) >= frames,
                 timeout=180, poll=0.5, what="every frame in every sink after the restart")
        expected = list(range(1, frames + 1))
        assert sorted(frame_ids(jsonl, "cam-p")) == expected
        records = stream_records(nats_url, stream)
        assert sorted(r["frame_id"] for r, _ in records) == expected
        assert sorted(msg_id for _, msg_id in records) == sorted(f"cam-p:{i}" for i in expected)
        received = collector.results("cam-p")
        assert {r["frame_id"] for r in received} == set(expected)
        by_frame = {r["frame_id"]: r for r in received}
        assert all(r == by_frame[r["frame_id"]] for r in received)  # a re-sent result is the same result
        cloud.send_signal(signal.SIGTERM)
        assert cloud.wait(timeout=60) == 0
        index = FrameIndex(postgres_url)
        assert index.configure_sinks(["jsonl", f"nats:{subject}", f"mqtt:{prefix}"]) == 0
        assert index.unpublished() == [] and sum(index.backlog().values()) == 0
        assert index.camera("cam-p").last_frame_id == frames
        index.close()
    finally:
        node.close()
        collector.close()
        if cloud.poll() is None:
            cloud.send_signal(signal.SIGTERM)
            cloud.wait(timeout=60)
