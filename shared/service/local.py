"""Services on this machine: ``icmh-cloud`` and ``icmh-edge`` (or any module) as child processes on loopback.

:class:`LocalServices` starts each process with its output in ``<workdir>/<name>.log``, notices when one
exits while it is being waited for (:class:`ServiceError` with the end of its log) and stops them all
with SIGTERM (then SIGKILL) when its ``with`` block ends, also on an error or when the parent itself gets SIGTERM
(in the main thread, the block turns it into ``SystemExit``). Used by ``deploy/demo.py``,
``icmh bench service`` / ``scale`` and the service tests. A child is this interpreter running ``python -m
icmh...`` in the caller's working directory (relative paths mean what they mean to the caller), installed or not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
CLOUD_START_S = 180.0  # torch + YOLO import on a busy machine
T = TypeVar("T")


class ServiceError(ChildProcessError):
    """A service process exited while it was needed (an ``OSError``, like the :class:`TimeoutError` of waits)."""


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], T], timeout: float = 60.0, what: str = "condition",
             check: Callable[[], None] | None = None, poll: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy (returned); ``check`` runs before each poll and
    may raise; :class:`TimeoutError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class LocalServices:
    """Child processes, stopped (edges first: reverse start order) on exit."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.processes: list[ServiceProcess] = []
        self.exit_codes: dict[str, int | str] = {}
        self._previous_handler: Any = None

    def __enter__(self) -> LocalServices:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, _exit_on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop(self.processes)
        finally:
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)
                self._previous_handler = None

    def launch(self, name: str, module: str, argv: Sequence[str], env: dict[str, str] | None = None) -> ServiceProcess:
        """``python -m module argv...`` with stdout and stderr in ``<workdir>/<name>.log``."""
        log = self.workdir / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=out,
                                       stderr=subprocess.STDOUT, env={**self.env, **(env or {})})
        service = ServiceProcess(name, process, log)
        self.processes.append(service)
        return service

    def start_cloud(self, cameras: dict[str, str], weights: Path | None, detector: Path, *, name: str = "cloud",
                    detections_jsonl: Path | None = None, threads: int = 0, extra: Sequence[str] = (),
                    timeout: float = CLOUD_START_S) -> tuple[ServiceProcess, int]:
        """``icmh-cloud`` on a free loopback port for ``cameras`` (id -> token), metrics off; waits until it
        serves and returns it with its port."""
        ready = self.workdir / f"{name}.port"
        ready.unlink(missing_ok=True)
        argv = ["--listen", f"{LOOPBACK}:0", "--data-dir", str(self.workdir / name), "--detector", str(detector),
                "--ready-file", str(ready), "--metrics-port", "0", "--threads", str(threads),
                *(a for camera, token in cameras.items() for a in ("--camera", f"{camera}={token}"))]
        if weights is not None:
            argv += ["--weights", str(weights)]
        if detections_jsonl is not None:
            argv += ["--detections-jsonl", str(detections_jsonl)]
        cloud = self.launch(name, "icmh.cloud.cli", [*argv, *extra])
        self.wait_for(lambda: ready.exists() and ready.read_text().endswith("\n"), timeout, f"the {name} to serve")
        return cloud, int(ready.read_text())

    def start_edge(self, camera_id: str, token: str, port: int, source: str | Path, weights: Path | None, *,
                   name: str | None = None, threads: int = 0, extra: Sequence[str] = ()) -> ServiceProcess:
        """``icmh-edge`` of ``camera_id`` streaming ``source`` to the cloud on ``port``, data in
        ``<workdir>/<name>``, metrics off, token in the environment."""
        name = name or f"edge-{camera_id}"
        argv = ["--camera-id", camera_id, "--cloud", f"{LOOPBACK}:{port}", "--source", str(source),
                "--data-dir", str(self.workdir / name), "--metrics-port", "0", "--threads", str(threads)]
        if weights is not None:
            argv += ["--weights", str(weights)]
        return self.launch(name, "icmh.edge.cli", [*argv, *extra], env={"ICMH_EDGE_TOKEN": token})

    def check(self) -> None:
        """Raise :class:`ServiceError` if a process has exited (with the end of its log)."""
        for service in self.processes:
            if service.process.poll() is not None:
                raise ServiceError(f"{service.name} exited ({service.process.returncode}); "
                                   f"end of {service.log}:\n{service.tail()}")

    def wait_for(self, condition: Callable[[], T], timeout: float, what: str, poll: float = 0.05) -> T:
        """:func:`wait_for` that fails early when a process exits."""
        return wait_for(condition, timeout, what, check=self.check, poll=poll)

    def stop(self, services: Iterable[ServiceProcess], timeout: float = 60.0) -> dict[str, int | str]:
        """SIGTERM to each still running (reverse order), then wait; SIGKILL after ``timeout`` s. Exit codes."""
        services = list(services)[::-1]
        for service in services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | str] = {}
        for service in services:
            try:
                codes[service.name] = service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
                codes[service.name] = f"killed after {timeout:g} s"
        self.processes = [s for s in self.processes if s not in services]
        self.exit_codes.update(codes)
        return codes
