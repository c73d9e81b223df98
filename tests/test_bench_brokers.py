"""``bench scale --publish``: each configuration publishes to its own MQTT prefix / NATS subject on the real
brokers of .ci/services.sh, the JSON reports what reached them, and the run leaves no stream or retained status."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import psutil
import pytest
from fleet_support import service_url

from icmh.bench.broker_capture import MqttCollector, scoped_url, stream_count
from icmh.bench.cli import main

FAST = ["--size", "320x192", "--detector-imgsz", "320", "--threads", "1", "--fps", "4"]  # as test_bench_service_smoke


def test_scoped_urls_keep_the_output_and_add_the_token() -> None:
    assert scoped_url("mqtt://h:1883", "t-1") == "mqtt://h:1883/icmh/t-1"
    assert scoped_url("mqtts://u:p@h/site/a?client_id=x", "t-1") == "mqtts://u:p@h/site/a/t-1?client_id=x"
    assert scoped_url("nats://h", "t-1") == "nats://h/icmh.detections.t-1"
    assert (scoped_url("nats://h:4222/site/a?stream=S&duplicate_window=60", "t-1")
            == "nats://h:4222/site.a.t-1?stream=S_t-1&duplicate_window=60")
    for url, message in (("kafka://h/t", "unknown output"), ("nats://h/a b", "tokens"), ("mqtt:///p", "mqtt://")):
        with pytest.raises(ValueError, match=message):
            scoped_url(url, "t")


@pytest.mark.slow
def test_scale_with_mqtt_and_nats_outputs(tiny_weights: Path, shared_dir: Path, tmp_path: Path) -> None:
    mqtt, nats = service_url("ICMH_TEST_MQTT"), service_url("ICMH_TEST_NATS")
    run = uuid.uuid4().hex[:8]
    mqtt_url, nats_url = f"{mqtt}/icmh-test-bench/{run}", f"{nats}/icmh_test_bench.{run}"
    argv = ["scale", "--weights", str(tiny_weights), "--shared", str(shared_dir), "--out", str(tmp_path),
            "--cameras", "2", "--seconds", "1.5", *FAST, "--publish", mqtt_url, "--publish", nats_url]
    assert main(argv) == 0
    assert psutil.Process().children(recursive=True) == []
    data = json.loads((tmp_path / "scale.json").read_text())
    assert data["meta"]["publish"] == [mqtt_url, nats_url] and "JetStream" in data["protocol"]
    (config,) = data["configurations"]
    frames = config["frames"]
    assert config["all_detected_in_time"] and frames["detected"] == frames["sent"] == 12
    brokers = config["brokers"]
    assert set(brokers) == {mqtt_url, nats_url}
    for url, kind in ((mqtt_url, "mqtt"), (nats_url, "nats")):
        got = brokers[url]
        assert got["kind"] == kind and got["caught_up_in_time"]
        assert got["distinct"] == frames["detected"] and got["missing"] == got["unexpected"] == 0
        latency = got["capture_to_broker_ms"]
        assert latency["count"] == got["messages"] and 0 < latency["p50"] <= latency["p95"]
    assert brokers[nats_url]["duplicates"] == 0 and brokers[nats_url]["messages"] == frames["detected"]
    prefix, stream = brokers[mqtt_url]["topic_prefix"], brokers[nats_url]["stream"]
    assert prefix.startswith(f"icmh-test-bench/{run}/bench-1r-2c-")
    assert brokers[nats_url]["subject"].startswith(f"icmh_test_bench.{run}.bench-1r-2c-")

    # cleaned up: the stream is gone, no retained status is left under the configuration's prefix
    assert stream_count(nats_url, stream) == 0
    late = MqttCollector(mqtt, prefix)
    try:
        time.sleep(0.5)  # retained messages come right after the subscription
        assert late.messages == []
    finally:
        late.close()
