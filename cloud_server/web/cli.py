"""``icmh-web``: serve the operator web view, a gateway to the cloud's gRPC API (``--cloud HOST:PORT``).

Listens on 127.0.0.1:8080 unless ``--listen`` says otherwise; another interface needs HTTPS (``--https-cert``
and ``--https-key``), since every request carries an operator token, unless ``--allow-plain-http`` is given
(behind a TLS-terminating proxy). Port 0 picks a free port, written to ``--ready-file`` once serving.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn

from icmh.service.process import configure_logging, on_termination

from ..settings import is_loopback
from .app import CloudTarget, create_app

log = logging.getLogger("icmh.web")


def parse_listen(listen: str) -> tuple[str, int, bool]:
    """``host:port`` (``[v6]:port``) as host, port and whether only this machine can reach it."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host, int(port), is_loopback(listen)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (OSError when the address is in use or not local)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


class WebServer(uvicorn.Server):
    """uvicorn on an already bound socket; writes the port to ``ready_file`` once it serves. ``run`` blocks
    (SIGTERM / SIGINT stop it when called from the main thread); ``start`` / ``stop`` run it in a thread."""

    def __init__(self, target: CloudTarget, sock: socket.socket, *, ready_file: Path | None = None,
                 https_cert: Path | None = None, https_key: Path | None = None, log_level: str = "info") -> None:
        config = uvicorn.Config(create_app(target), log_level=log_level.lower(), ssl_certfile=https_cert,
                                ssl_keyfile=https_key, timeout_graceful_shutdown=2, server_header=False,
                                proxy_headers=False)
        super().__init__(config)
        self.sock, self.ready_file = sock, ready_file
        self.port: int = sock.getsockname()[1]
        self.url = f"{'https' if https_cert else 'http'}://{_url_host(sock.getsockname()[0])}:{self.port}/"
        self._thread: threading.Thread | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.ready_file is not None:
            self.ready_file.write_text(f"{self.port}\n")

    def serve_forever(self) -> None:
        self.run(sockets=[self.sock])

    def start(self, timeout: float = 30.0) -> WebServer:
        self._thread = threading.Thread(target=self.serve_forever, name="icmh-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.started:
            raise RuntimeError("the web view did not start (see its log)")
        return self

    def stop(self) -> None:
        self.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icmh-web", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cloud", default="localhost:50051", help="the cloud server's gRPC address (host:port)")
    p.add_argument("--listen", default="127.0.0.1:8080", help="address of the web view (port 0: a free port)")
    p.add_argument("--https-cert", type=Path, help="serve HTTPS with this certificate (with --https-key)")
    p.add_argument("--https-key", type=Path, help="key of --https-cert")
    p.add_argument("--allow-plain-http", action="store_true",
                   help="plain HTTP on a non-loopback --listen (only behind a TLS-terminating proxy)")
    p.add_argument("--tls-ca", type=Path, help="CA certificate of the cloud (enables TLS to the cloud)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for a mutual-TLS cloud (never an identity: "
                                                 "every call carries the web user's token)")
    p.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    p.add_argument("--tls-server-name", help="name expected in the cloud's certificate")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per cloud call (not the live feed)")
    p.add_argument("--ready-file", type=Path, help="write the bound port here once serving")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        if (args.https_cert is None) != (args.https_key is None):
            raise ValueError("HTTPS needs both --https-cert and --https-key")
        host, port, loopback = parse_listen(args.listen)
        if not loopback and args.https_cert is None and not args.allow_plain_http:
            raise ValueError(f"--listen {args.listen} is reachable from other machines: operator tokens would "
                             "travel in clear; give --https-cert/--https-key (or --allow-plain-http behind a "
                             "TLS-terminating proxy)")
        target = CloudTarget(args.cloud, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                             server_name=args.tls_server_name, timeout_s=args.timeout)
        for path in (args.https_cert, args.https_key, args.tls_ca, args.tls_cert, args.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"file not found: {path}")
    except ValueError as exc:
        print(f"icmh-web: error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"icmh-web: error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    server = WebServer(target, sock, ready_file=args.ready_file, https_cert=args.https_cert,
                       https_key=args.https_key, log_level=args.log_level)
    # uvicorn stops on SIGTERM / SIGINT, restores this handler and raises the signal again: exit 0, as the
    # cloud and the edge do
    on_termination(lambda: setattr(server, "should_exit", True))
    log.info("web view of the cloud at %s on %s", args.cloud, server.url)
    server.serve_forever()
    log.info("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
