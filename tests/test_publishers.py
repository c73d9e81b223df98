"""Detection results to real brokers on loopback (Mosquitto, nats-server with JetStream): per-camera topics and
retained status, JetStream de-duplication of re-publications, per-sink cursors across a crash, and broker
outages and restarts in the middle of a stream that lose and duplicate nothing."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from fleet_support import BrokerProcess, service_url
from service_support import edge_settings, frame_ids, start_cloud, start_edge, wait_for

from icmh.bench.broker_capture import MqttCollector, stream_records
from icmh.bench.delivery import read_jsonl
from icmh.cloud.frame_index import FrameIndex, FrameState
from icmh.cloud.jsonl_sink import JsonlSink
from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.publishers import open_publisher, payload, topic_token
from icmh.cloud.publishers.delivery import Delivery
from icmh.cloud.publishers.nats_publisher import NatsPublisher
from icmh.cloud.results import Detection, FrameResult


def results(camera: str, *frame_ids: int) -> list[FrameResult]:
    car = Detection("car", 2, 0.87, (1.0, 2.0, 30.0, 40.0))
    return [FrameResult(camera, i, 10**18 + i, 2 * 10**18 + i, 320, 192, (car,) if i % 2 else ()) for i in frame_ids]


def unique(kind: str) -> str:
    return f"icmh-test-{kind}-{uuid.uuid4().hex[:8]}"


def test_topic_tokens_and_output_urls() -> None:
    assert topic_token("cam-1_north") == "cam-1_north"
    assert topic_token("a/b.c d+#") == "a%2Fb%2Ec%20d%2B%23" and topic_token("café") == "caf%C3%A9"
    for url, message in (("kafka://host/topic", "unknown output"), ("mqtt:///prefix", "mqtt://host"),
                         ("mqtt://host/a/+/b", "wildcard"), ("nats://host/bad subject", "tokens"),
                         ("nats://host/s?duplicate_window=soon", "seconds")):
        with pytest.raises(ValueError, match=message):
            open_publisher(url)
    nats = NatsPublisher("nats://127.0.0.1:9/site.north/detections?duplicate_window=60", timeout_s=1)
    try:
        assert (nats.name, nats.stream, nats.duplicate_window_s) == ("nats:site.north.detections",
                                                                     "SITE_NORTH_DETECTIONS", 60.0)
        assert not nats.available()  # nothing listens there: an outage, not an error
    finally:
        nats.close()


def test_mqtt_results_per_camera_topics_and_retained_status() -> None:
    url, prefix = service_url("ICMH_TEST_MQTT"), unique("mqtt")
    collector = MqttCollector(url, prefix)
    publisher = open_publisher(f"{url}/{prefix}", timeout_s=10)
    try:
        sent = results("north", 1, 2) + results("south/2", 1)
        assert publisher.publish(sent) == 0 and publisher.name == f"mqtt:{prefix}"
        publisher.publish_status({"north": True, "south/2": False})
        wait_for(lambda: len(collector.results("north")) == 2 and collector.results("south%2F2")
                 and collector.last(f"{prefix}/south%2F2/status"), what="the results and statuses on the broker")
        assert collector.results("north") == [r.to_json() for r in sent[:2]]
        assert collector.results("south%2F2") == [sent[2].to_json()]
        late = MqttCollector(url, prefix)  # a consumer that connects later gets the retained status
        try:
            wait_for(lambda: late.last(f"{prefix}/south%2F2/status"), what="the retained camera status")
            assert late.last(f"{prefix}/status") == b"online"
            assert json.loads(late.last(f"{prefix}/north/status"))["online"] is True
            assert json.loads(late.last(f"{prefix}/south%2F2/status"))["online"] is False
            assert all(m.retained for m in late.messages)  # and no result: those are not retained
        finally:
            late.close()
        publisher.close()
        wait_for(lambda: collector.last(f"{prefix}/status") == b"offline", what="the offline status on close")

        # a replica of a fleet: its own availability topic, and camera statuses that name it
        replica = open_publisher(f"{url}/{prefix}", timeout_s=10, replica_id="cloud-1")
        try:
            wait_for(lambda: collector.last(f"{prefix}/replicas/cloud-1/status") == b"online", what="replica online")
            replica.publish_status({"north": True})
            wait_for(lambda: json.loads(collector.last(f"{prefix}/north/status")).get("replica") == "cloud-1",
                     what="the camera status naming its replica")
        finally:
            replica.close()
        wait_for(lambda: collector.last(f"{prefix}/replicas/cloud-1/status") == b"offline", what="replica offline")
        assert collector.last(f"{prefix}/status") == b"offline"  # the fleet topic was not touched by the replica
    finally:
        collector.close()


def test_nats_republication_is_stored_once() -> None:
    """A restarted cloud re-sending results (recovering: the stream's last frame per camera) or a retry (the
    JetStream message id) never stores a result twice."""
    url, subject = service_url("ICMH_TEST_NATS"), unique("nats").replace("-", "_")
    first = open_publisher(f"{url}/{subject}", timeout_s=10)
    try:
        assert first.publish(results("a", 1, 2) + results("b", 1)) == 0
    finally:
        first.close()
    restarted = open_publisher(f"{url}/{subject}", timeout_s=10)  # a new connection, as after a cloud restart
    try:
        assert restarted.publish(results("a", 1, 2) + results("b", 1), recovering=True) == 3
        assert restarted.publish(results("a", 2, 3), recovering=False) == 1  # a/2 dropped by its message id
    finally:
        restarted.close()
    records = stream_records(url, subject.upper())
    assert [(r["camera_id"], r["frame_id"]) for r, _ in records] == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]
    assert [msg_id for _, msg_id in records] == ["a:1", "a:2", "b:1", "a:3"]
    assert records[0][0] == json.loads(payload(results("a", 1)[0]))


def test_each_sink_resumes_from_its_own_cursor_after_a_crash(tmp_path: Path) -> None:
    """A crash after the sinks got a batch but before the index recorded it: the restart delivers the batch in
    recovery, and neither the file nor the stream holds a result twice."""
    url, subject = service_url("ICMH_TEST_NATS"), unique("cursor").replace("-", "_")
    index, jsonl = FrameIndex(tmp_path / "frames.db"), tmp_path / "d.jsonl"
    for frame_id in (1, 2, 3):
        index.add_frame("cam", frame_id, 10**18, 0.5, b"base%d" % frame_id, 320, 192, 0)
    sinks = [JsonlSink(jsonl), open_publisher(f"{url}/{subject}", timeout_s=10)]
    delivery = Delivery(index, sinks, CloudMetrics())
    index.record_results(results("cam", 1, 2, 3))
    for sink in sinks:  # what the crashed process had already sent ...
        sink.publish(results("cam", 1, 2))
    delivery.close()  # ... before it died, the cursors not advanced

    metrics = CloudMetrics()
    restarted = Delivery(index, [JsonlSink(jsonl), open_publisher(f"{url}/{subject}", timeout_s=10)], metrics)
    restarted.start()
    try:
        wait_for(lambda: index.frame("cam", 3).state is FrameState.PUBLISHED, what="the restart's deliveries")
    finally:
        restarted.stop()
        restarted.close()
    assert [r["frame_id"] for r in read_jsonl(jsonl)] == [1, 2, 3]
    assert [r["frame_id"] for r, _ in stream_records(url, subject.upper())] == [1, 2, 3]
    for sink in ("jsonl", f"nats:{subject}"):
        assert metrics.registry.get_sample_value("icmh_cloud_publish_duplicates_total", {"sink": sink}) == 2
        assert metrics.registry.get_sample_value("icmh_cloud_published_total", {"sink": sink}) == 3
    assert index.backlog() == {"jsonl": 0, f"nats:{subject}": 0}
    index.close()


@pytest.mark.slow
def test_broker_outages_mid_stream_lose_and_duplicate_nothing(tmp_path: Path, tiny_weights: Path,
                                                              shared_dir: Path) -> None:
    """NATS is down when the cloud starts, Mosquitto restarts in the middle of the stream, then NATS does: the
    results of a broker that is down wait in the index (counted as an outage) while the JSON Lines file keeps
    getting them; in the end every frame is in the file and the stream exactly once and reached the MQTT
    consumer (QoS 1: a re-sent copy is the same result)."""
    mosquitto, nats = BrokerProcess("mosquitto", tmp_path / "mosquitto"), BrokerProcess("nats", tmp_path / "nats")
    mosquitto.start()
    prefix, subject, camera = "site", "icmh.site", "cam-b"
    mqtt_sink, nats_sink = f"mqtt:{prefix}", f"nats:{subject}"
    collector = MqttCollector(mosquitto.url, prefix)
    cloud = start_cloud(tmp_path, tiny_weights, shared_dir, {camera: "token-b"},
                        publish=(f"{mosquitto.url}/{prefix}", f"{nats.url}/{subject}"), publish_timeout_s=3.0)
    jsonl, registry = cloud.settings.detections_jsonl, cloud.metrics.registry
    node = start_edge(edge_settings(tmp_path / "edge", camera, "token-b", cloud.port, shared_dir, tiny_weights,
                                    max_frames=1000, fps=3.0))  # streams until closed

    def up(sink: str) -> float | None:
        return registry.get_sample_value("icmh_cloud_sink_up", {"sink": sink})

    def outage(sink: str, broker: BrokerProcess, stopped: bool = True) -> None:
        """With the broker down: results pile up for that sink only, then the broker comes back."""
        if stopped:
            broker.stop()
        written = len(frame_ids(jsonl, camera))
        wait_for(lambda: cloud.index.backlog()[sink] >= 2 and up(sink) == 0, timeout=60, what=f"{sink} to wait")
        assert len(frame_ids(jsonl, camera)) > written, "the JSON Lines file stopped with the broker"
        other = mqtt_sink if sink == nats_sink else nats_sink
        if up(other) == 1:
            assert cloud.index.backlog()[other] <= 8  # the other broker's sink goes on
        broker.start()

    try:
        outage(nats_sink, nats, stopped=False)  # never started yet
        wait_for(lambda: len(frame_ids(jsonl, camera)) >= 6, timeout=60, what="6 results")
        outage(mqtt_sink, mosquitto)
        wait_for(lambda: cloud.index.backlog()[mqtt_sink] == 0, timeout=60, what="the MQTT backlog to drain")
        outage(nats_sink, nats)
        written = len(frame_ids(jsonl, camera))
        wait_for(lambda: len(frame_ids(jsonl, camera)) >= written + 2, timeout=60, what="results after the outages")
        node.close()  # what it had not sent yet stays in its outbox: the frames are those the cloud accepted
        frames = cloud.index.camera(camera).last_frame_id
        wait_for(lambda: cloud.index.usage()[2] == 0 and sum(cloud.index.backlog().values()) == 0, timeout=120,
                 what="every result in every sink")
        expected = list(range(1, frames + 1))
        assert frame_ids(jsonl, camera) == expected
        records = stream_records(nats.url, "ICMH_SITE")
        assert [r["frame_id"] for r, _ in records] == expected
        assert [msg_id for _, msg_id in records] == [f"{camera}:{i}" for i in expected]
        wait_for(lambda: {r["frame_id"] for r in collector.results(camera)} == set(expected), timeout=30,
                 what="every result at the MQTT consumer")
        received = collector.results(camera)
        by_frame = {r["frame_id"]: r for r in read_jsonl(jsonl)}
        assert all(r == by_frame[r["frame_id"]] for r in received)
        for sink, outages in ((mqtt_sink, 1), (nats_sink, 2)):
            assert registry.get_sample_value("icmh_cloud_sink_outages_total", {"sink": sink}) == outages
            assert registry.get_sample_value("icmh_cloud_sink_outage_seconds_total", {"sink": sink}) > 0
            assert registry.get_sample_value("icmh_cloud_published_total", {"sink": sink}) == frames
            assert up(sink) == 1
        assert registry.get_sample_value("icmh_cloud_sink_outages_total", {"sink": "jsonl"}) == 0
        time.sleep(1.5)  # one more delivery round: the retained camera status after the reconnection
        status = json.loads(collector.last(f"{prefix}/{camera}/status"))
        assert status["camera_id"] == camera and status["online"] is (cloud.sessions.get(camera) is not None)
    finally:
        node.close()
        cloud.stop(grace=1)
        collector.close()
        mosquitto.stop()
        nats.stop()
