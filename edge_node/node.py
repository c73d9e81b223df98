"""An edge node: source, codec, store and cloud link wired together, with start / stop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from icmh.allocator import allocator_in_use
from icmh.codec.api import ScalableCodec
from icmh.codec.exact import kernel_description
from icmh.rpc import edge_pb2
from icmh.service.process import MetricsEndpoint
from icmh.service.residual_modes import PROTO_OF_MODE

from .capture import CaptureLoop
from .layers import InspectionLayers
from .link import CloudLink, LinkRefused
from .metrics import EdgeMetrics
from .rate_control import RateControl
from .settings import EdgeSettings
from .source import FrameSource
from .store import EdgeStore

log = logging.getLogger("icmh.edge")
VERSION = "icmh-edge/0.1.0"


def make_hello(camera_id: str, token: str, codec: ScalableCodec, width: int, height: int) -> edge_pb2.Hello:
    """The first message of a stream: who this edge is and how it codes."""
    residual_model_id, residual_weights_hash = codec.residual_identity  # ValueError without a residual model
    return edge_pb2.Hello(
        camera_id=camera_id, token=token, frame_width=width, frame_height=height,
        residual_mode=PROTO_OF_MODE[codec.mode], software_version=VERSION,
        codec=edge_pb2.CodecInfo(
            base_model_id=codec.base.model_id, base_weights_hash=codec.base.weights_hash,
            residual_model_id=residual_model_id, residual_weights_hash=residual_weights_hash,
        ),
    )


class EdgeNode:
    """Runs the capture loop and the cloud link in two threads until stopped (or refused by the cloud)."""

    def __init__(self, settings: EdgeSettings, codec: ScalableCodec | None = None) -> None:
        if not settings.camera_id:
            raise ValueError("a camera id is required")
        self.settings = settings
        self.rates = RateControl(settings.base_rate, settings.residual_rate, settings.target_kbps)
        self.source = FrameSource(settings.source, loop=settings.loop, fps=settings.fps, size=settings.size,
                                  max_frames=settings.max_frames)
        width, height = self.source.open()
        self.codec = codec or ScalableCodec.from_weights(settings.weights, mode=settings.mode)
        if self.codec.mode != settings.mode:
            raise ValueError(f"codec mode {self.codec.mode} differs from the configured mode {settings.mode}")
        self.metrics = EdgeMetrics()
        self.store = EdgeStore(settings.data_dir / "edge.db", settings.limits)
        hello = make_hello(settings.camera_id, settings.token, self.codec, width, height)
        self.layers = InspectionLayers(self.codec, self.store, self.metrics)
        self.link = CloudLink(settings.link, hello, self.store, self.rates, self.metrics, self.layers)
        self.capture = CaptureLoop(self.source, self.codec, self.store, self.rates, self.metrics, self.link.notify,
                                   settings.residual_policy)
        self._watch_store()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._metrics_endpoint: MetricsEndpoint | None = None
        log.info("camera %s: %s %s at %dx%d, %s residual (%s); exact entropy-model kernel: %s; memory allocator: %s",
                 settings.camera_id, self.source.kind, settings.source, width, height, settings.mode,
                 settings.residual_policy, kernel_description(), allocator_in_use())

    def _watch_store(self) -> None:
        m, store = self.metrics, self.store
        m.outbox_frames.set_function(lambda: store.outbox_usage().frames)
        m.outbox_bytes.set_function(lambda: store.outbox_usage().bytes)
        m.residual_frames.set_function(lambda: store.residual_usage().frames)
        m.residual_bytes.set_function(lambda: store.residual_usage().bytes)
        m.kept_frames.set_function(lambda: store.frame_usage().frames)
        m.kept_frame_bytes.set_function(lambda: store.frame_usage().bytes)
        m.base_rate.set_function(lambda: self.rates.current.base)

    def start(self) -> None:
        self._metrics_endpoint = MetricsEndpoint(
            self.metrics.registry, self.settings.metrics_port, self.settings.metrics_addr
        )
        for name, body in (("capture", self.capture.run), ("link", self._run_link)):
            thread = threading.Thread(target=self._guard(name, body), name=f"edge-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run_link(self, stop: threading.Event) -> None:
        self.link.run(stop)
        if self.link.error is not None:
            raise self.link.error

    def _guard(self, name: str, body: Callable[[threading.Event], None]) -> Callable[[], None]:
        """Thread body that stops the whole node when ``body`` fails (the failure is kept in ``.error``)."""

        def run() -> None:
            try:
                body(self._stop)
            except LinkRefused as exc:  # already logged by the link
                self.error = self.error or exc
                self.request_stop()
            except Exception as exc:
                log.exception("edge %s thread failed", name)
                self.error = self.error or exc
                self.request_stop()

        return run

    def request_stop(self) -> None:
        self._stop.set()
        self.link.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (signal, refusal, failure); False on timeout."""
        return self._stop.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop both threads and release the source, the store and the metrics endpoint."""
        self.request_stop()
        for thread in self._threads:
            thread.join(timeout)
        self.source.close()
        self.store.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
