"""Process plumbing of the service daemons: logging, the metrics endpoint, termination signals."""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


def add_process_arguments(parser: argparse.ArgumentParser, metrics_port: int, metrics_addr: str) -> None:
    """``--metrics-port``, ``--metrics-addr`` and ``--log-level`` of a long-running service command."""
    parser.add_argument("--metrics-port", type=int, default=metrics_port, help="Prometheus port (0: disabled)")
    parser.add_argument("--metrics-addr", default=metrics_addr,
                        help="address the metrics endpoint binds (e.g. 127.0.0.1)")
    parser.add_argument("--log-level", default="INFO")


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
