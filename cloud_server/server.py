"""The cloud server: frame index, decoders, detector loop and the gRPC services, with start / stop.

With ``replica_id`` it is one of several replicas sharing a PostgreSQL index: it takes the streams of the cameras
whose lease it holds (:mod:`icmh.cloud.replicas`), detects and publishes their frames only
(:mod:`icmh.cloud.replica_index`), writes what it detects to its own JSON Lines file (sink ``jsonl@REPLICA``) and
serves the other replicas' calls for its edges (``ReplicaLink``).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from icmh.allocator import allocator_in_use
from icmh.codec.exact import kernel_description
from icmh.detector import YoloDetector
from icmh.rpc import (
    detections_pb2,
    detections_pb2_grpc,
    edge_pb2,
    edge_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    replica_pb2_grpc,
)
from icmh.service.grpc_setup import MAX_REPLY_BYTES, server_credentials, server_options
from icmh.service.process import MetricsEndpoint

from .access import HEALTH, REFLECTION, OperatorAccess
from .audit import AuditLog
from .codecs import CloudCodecs
from .detections_service import DetectionsService
from .edge_service import EdgeLinkService
from .edge_sessions import EdgeSessions
from .frame_index import FrameIndex
from .jsonl_sink import JsonlSink
from .leases import ReplicaIdentity, is_local_sink, local_sink_name
from .metrics import CloudMetrics
from .operator_service import OperatorService
from .pipeline import DetectionPipeline
from .publishers import Publisher, open_publisher
from .replica_feed import FleetHub, PeerFeeds
from .replica_index import ReplicaFrameIndex, live_replicas_of
from .replica_routing import ReplicaRouter, ReplicaTls
from .replica_service import REPLICA_LINK, ReplicaLinkService
from .replicas import ReplicaCoordinator
from .settings import CloudSettings
from .subscribers import SubscriberHub

log = logging.getLogger("icmh.cloud")
SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in ((edge_pb2, "EdgeLink"), (operator_pb2, "Operator"), (detections_pb2, "Detections"))
)
class CloudServer:
    def __init__(self, settings: CloudSettings, detector: YoloDetector | None = None,
                 codecs: CloudCodecs | None = None) -> None:
        s = self.settings = settings
        self.metrics = CloudMetrics()
        self.codecs = codecs or CloudCodecs(s.weights)
        self.detector = detector or YoloDetector(s.detector, imgsz=s.detector_imgsz, conf=s.detector_confidence)
        self.publishers: list[Publisher] = []
        self.replicas: ReplicaCoordinator | None = None
        self.router: ReplicaRouter | None = None
        self.access = self._access()
        self._server = self._bind()  # first: a replica advertises the bound port
        self.index: FrameIndex | ReplicaFrameIndex
        try:  # a bad output URL or an unreachable index: nothing left connected
            self.publishers.extend(open_publisher(url, s.publish_timeout_s, s.replica_id) for url in s.publish)
            self.sink = JsonlSink(s.detections_jsonl) if s.detections_jsonl else None
            sinks: list[Publisher] = [*([self.sink] if self.sink else []), *self.publishers]
            if s.replica_id is None:
                self.index = FrameIndex(s.index or s.data_dir / "frames.db", s.index_pool_size)
                self._refuse_shared_index()
            else:
                self.index = self._join_replicas(sinks)
        except BaseException:
            for publisher in self.publishers:
                publisher.close()
            if hasattr(self, "index"):
                self.index.close()
            self._server.stop(0)
            raise
        shared = self.index.backend if self.index.backend.dialect == "postgresql" else None
        self.audit = AuditLog(shared or s.data_dir / "audit.db")  # one log for every replica of a fleet
        self.sessions = EdgeSessions()
        self.peer_feeds: PeerFeeds | None = None
        if isinstance(self.index, ReplicaFrameIndex):
            fleet_hub = FleetHub()  # subscribers here see every replica's results
            self.hub: SubscriberHub = fleet_hub
            self.replicas = ReplicaCoordinator(self.index, self.sessions, self.metrics, on_takeover=self._resume,
                                               rebalance_s=s.rebalance_s)
            self.router = ReplicaRouter(s.replica_token or "", self.metrics, self._replica_tls())
            self.peer_feeds = PeerFeeds(fleet_hub, self.index.leases, self.router, s.lease_s / 3)
        else:
            self.hub = SubscriberHub()
        self.pipeline = DetectionPipeline(self.index, self.codecs, self.detector, self.hub, sinks, self.metrics,
                                          s.max_batch, camera_status=self.camera_status)
        self.health = health.HealthServicer()
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._add_services()

    def camera_status(self) -> dict[str, bool]:
        """Every allowed camera (a replica: every camera it holds): whether its edge has a stream open here."""
        cameras = self.replicas.held() if self.replicas is not None else self.settings.cameras.ids()
        return {camera_id: self.sessions.get(camera_id) is not None for camera_id in sorted(cameras)}

    @property
    def advertise_address(self) -> str:
        s = self.settings
        return s.advertise_address or f"{s.listen.rpartition(':')[0]}:{self.port}"

    def _join_replicas(self, sinks: list[Publisher]) -> ReplicaFrameIndex:
        """The shared index as replica ``replica_id``: its JSON Lines file becomes its own sink, and it announces
        itself (waiting for a predecessor with its id to expire)."""
        s = self.settings
        assert s.replica_id is not None and s.index is not None
        if self.sink is not None:
            self.sink.name = local_sink_name(self.sink.name, s.replica_id)
        identity = ReplicaIdentity(s.replica_id, self.advertise_address, s.lease_s)
        index = ReplicaFrameIndex(s.index, identity, s.index_pool_size)
        try:
            waited = index.leases.register([sink.name for sink in sinks])
        except BaseException:
            index.close()
            raise
        if waited > 0.5:
            log.info("waited %.1f s for the previous process of replica %s to expire", waited, s.replica_id)
        return index

    def _refuse_shared_index(self) -> None:
        others = live_replicas_of(self.index)
        if others:
            raise ValueError(f"the frame index {self.index.description} is shared by the live replicas "
                             f"{', '.join(others)}: start this server with --replica-id too")

    def _replica_tls(self) -> ReplicaTls | None:
        s = self.settings
        if s.replica_tls_ca is None:
            return None
        mutual = s.tls_client_ca is not None  # the others ask for a client certificate: present ours
        return ReplicaTls(s.replica_tls_ca, s.tls_cert if mutual else None, s.tls_key if mutual else None)

    def _resume(self, cameras: set[str]) -> None:
        """Cameras taken on from another replica: their shared sinks' next batch is sent in recovery mode (the
        other replica may have published some of it), and the detector looks for their frames now."""
        for sink in self.pipeline.delivery.sinks:
            if not is_local_sink(sink.name):
                sink.recovering = True
        self.pipeline.notify()
        self.pipeline.delivery.wake()

    def _access(self) -> OperatorAccess:
        s = self.settings
        certificates = s.tls_client_ca is not None
        if s.operators.uses_certificates and not certificates:
            log.warning("operator certificate names are ignored: they need mutual TLS (--tls-client-ca)")
        return OperatorAccess(s.operators, self.metrics, open_access=s.open_operator_access,
                              certificates=certificates,
                              open_services=(*((HEALTH,) if s.open_health else ()),
                                             *(REFLECTION if s.reflection == "open" else ()),
                                             REPLICA_LINK))  # replicas authenticate each other themselves

    def _bind(self) -> grpc.Server:
        s = self.settings
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=s.max_workers, thread_name_prefix="grpc"),
                             interceptors=[self.access], options=server_options(s.max_message_bytes, MAX_REPLY_BYTES))
        if s.tls_cert is not None and s.tls_key is not None:
            self.port = server.add_secure_port(s.listen, server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca))
        else:
            self.port = server.add_insecure_port(s.listen)
        if not self.port:
            raise OSError(f"cannot listen on {s.listen}")
        return server

    def _add_services(self) -> None:
        s, server = self.settings, self._server
        edge_pb2_grpc.add_EdgeLinkServicer_to_server(EdgeLinkService(
            s.cameras, self.codecs, self.index, self.sessions, self.metrics, self.pipeline.notify, s.max_packet_bytes,
            self.replicas,
        ), server)
        operator_pb2_grpc.add_OperatorServicer_to_server(OperatorService(
            s.cameras, self.index, self.sessions, self.codecs, self.metrics, s.residual_timeout_s, s.cache_frames,
            access=self.access, audit=self.audit, replicas=self.replicas, router=self.router, exact_views=s.exact_views,
        ), server)
        detections_pb2_grpc.add_DetectionsServicer_to_server(DetectionsService(self.hub, self.metrics, self.access),
                                                             server)
        if isinstance(self.hub, FleetHub) and s.replica_id is not None and s.replica_token:
            replica_pb2_grpc.add_ReplicaLinkServicer_to_server(ReplicaLinkService(
                s.replica_token, s.replica_id, self.sessions, self.metrics, s.residual_timeout_s, self.hub.own),
                server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if s.reflection != "off":
            reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                                server)

    def start(self) -> int:
        """Start serving; returns the bound port (useful with a ``:0`` listen address)."""
        assert self._server is not None
        self._metrics_endpoint = MetricsEndpoint(  # first: a port in use fails the start before anything runs
            self.metrics.registry, self.settings.metrics_port, self.settings.metrics_addr
        )
        self.pipeline.start()
        self._server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._maintenance = threading.Thread(target=self._maintain, name="cloud-maintenance", daemon=True)
        self._maintenance.start()
        if self.replicas is not None:
            self.replicas.start()
        if self.peer_feeds is not None:
            self.peer_feeds.start()
        s = self.settings
        log.info("serving on port %d (%s), cameras: %s", self.port, "TLS" if s.tls_cert else "plaintext",
                 ", ".join(s.cameras.ids()))
        if self.replicas is not None:
            log.info("replica %s at %s (leases of %g s); live replicas: %s", s.replica_id, self.advertise_address,
                     s.lease_s, ", ".join(self.replicas.leases.live_replicas()))
        log.info("exact decoder kernel: %s; memory allocator: %s", kernel_description(), allocator_in_use())
        log.info("frame index %s (schema %d); outputs: %s", self.index.description, self.index.schema_version(),
                 ", ".join(self.index.sinks) or "live subscribers only")
        if s.open_operator_access:
            log.warning("OPEN OPERATOR ACCESS: every Operator / Detections call is allowed without credentials")
        elif len(s.operators):
            log.info("operators: %s", ", ".join(s.operators.names()))
        else:
            log.warning("no operator configured: every Operator / Detections call is refused (see --operator)")
        return self.port

    def _maintain(self) -> None:
        """Retention and gauges, every ``maintenance_interval_s``."""
        s = self.settings
        while True:
            try:
                removed = self.index.prune(s.retention_age_s, s.retention_bytes)
                if removed:
                    log.info("retention removed %d frames from the index", removed)
                removed = self.audit.prune(s.audit_retention_s)
                if removed:
                    log.info("audit retention removed %d records", removed)
                self.metrics.audit_records.set(self.audit.count())
                frames, size, waiting = self.index.usage()
                self.metrics.index_frames.set(frames)
                self.metrics.index_bytes.set(size)
                self.metrics.pending_frames.set(waiting)
                for sink, due in self.index.backlog().items():
                    self.metrics.sink_pending.labels(sink).set(due)
            except Exception:
                log.exception("index maintenance failed")
                self.metrics.errors.labels("maintenance").inc()
            if self._stop.wait(s.maintenance_interval_s):
                return

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, end the streams, finish the detector batch in progress, close the files."""
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.sessions.close_all()
        if self.peer_feeds is not None:
            self.peer_feeds.stop()
        self.hub.close()
        if self._server is not None:
            self._server.stop(grace).wait()
        self.pipeline.stop()
        if self._maintenance is not None:
            self._maintenance.join()
        if self.replicas is not None:  # after the detector's last batch: the others take over from here
            self.replicas.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
        self.pipeline.delivery.close()
        if self.router is not None:
            self.router.close()
        self.index.close()
        self.audit.close()
        log.info("stopped")
