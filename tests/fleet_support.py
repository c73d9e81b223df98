"""Helpers of the fleet tests (tests/test_index_postgres.py, tests/test_publishers.py, tests/test_replicas.py): the
real PostgreSQL, Mosquitto and nats-server that .ci/services.sh starts on loopback (``$ICMH_TEST_POSTGRES``,
``$ICMH_TEST_MQTT``, ``$ICMH_TEST_NATS``), private broker instances a test can stop and start, and cloud processes.
Readers of what the brokers got: :mod:`icmh.bench.broker_capture`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import DETECTOR_IMGSZ

from icmh.service.local import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
SERVICES = "start them with `source .ci/services.sh` (CI does)"


def service_url(variable: str) -> str:
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"${variable} is not set: {SERVICES}")
    return url


def binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.skip(f"{name} is not installed: {SERVICES}")
    return found


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL server, dropped afterwards."""
    import psycopg

    server = service_url("ICMH_TEST_POSTGRES")
    name = f"icmh_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class BrokerProcess:
    """A private Mosquitto or nats-server on a free loopback port, its data in ``folder``: stop and start it
    again at will (same port, same data: a broker restart)."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder, self.port = kind, folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        if kind == "mosquitto":
            service_url("ICMH_TEST_MQTT")
            (folder / "mosquitto.conf").write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {folder}/\nuser root\n")
            self.command = [binary("mosquitto"), "-c", str(folder / "mosquitto.conf")]
            self.url = f"mqtt://127.0.0.1:{self.port}"
        else:
            service_url("ICMH_TEST_NATS")
            self.command = [binary("nats-server"), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                            "-sd", str(folder / "store")]
            self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.folder / "broker.log").open("a")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._listening, timeout=30, what=f"{self.kind} on port {self.port}",
                 check=self._alive)

    def _alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.kind} exited: {(self.folder / 'broker.log').read_text()[-2000:]}")

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """A graceful stop (SIGTERM: Mosquitto saves its sessions and retained messages)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None


def cloud_process(tmp: Path, port: int, weights: Path, shared_dir: Path, cameras: dict[str, str],
                  *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The ``cloud-server`` CLI in its own process (so that it can be killed like a crashed host), results also
    in ``tmp/detections.jsonl``; ``extra``: more flags (--index, --publish ...), ``env``: more variables."""
    tmp.mkdir(parents=True, exist_ok=True)
    ready = tmp / "ready"
    ready.unlink(missing_ok=True)
    log = (tmp / "cloud.log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "icmh.cloud.cli", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "cloud"),
         *(f"--camera={c}={t}" for c, t in cameras.items()), "--weights", str(weights),
         "--detector", str(shared_dir / "models/yolov8n.pt"), "--detector-imgsz", str(DETECTOR_IMGSZ),
         "--detections-jsonl", str(tmp / "detections.jsonl"), "--metrics-port", "0", "--threads", "1",
         "--ready-file", str(ready), *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    wait_for(lambda: ready.exists() or process.poll() is not None, timeout=180, what="the cloud process to serve")
    assert process.poll() is None, (tmp / "cloud.log").read_text()
    return process
