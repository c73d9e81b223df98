"""Process plumbing of the service daemons: logging, the metrics endpoint, termination signals."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class MetricsEndpoint:
    """Prometheus ``/metrics`` over HTTP for one registry; port 0 disables it."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
        self._server: Any = None
        if port:
            self._server, _ = start_http_server(port, addr=addr, registry=registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def on_termination(callback: Callable[[], None]) -> None:
    """Call ``callback`` (once per signal) on SIGTERM and SIGINT instead of dying."""

    def handler(signum: int, _frame: object) -> None:
        logging.getLogger("icmh").info("received %s, shutting down", signal.Signals(signum).name)
        callback()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
