"""What a cloud server is configured with (:class:`CloudSettings`): the one place its defaults are set.

Free of torch and of the server itself, so that ``icmh-cloud``'s parser takes its defaults from here.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from icmh.service.grpc_setup import DEFAULT_MAX_MESSAGE_BYTES

from .auth import CameraRegistry, OperatorRegistry
from .replica_index import SQLITE_REFUSAL

REFLECTION_MODES = ("open", "operators", "off")
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def is_loopback(listen: str) -> bool:
    """Whether a ``host:port`` listen address is reachable from this machine only."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class CloudSettings:
    cameras: CameraRegistry
    data_dir: Path  # frames.db: the frame index (unless ``index`` says otherwise), audit.db
    detector: Path  # YOLO checkpoint
    listen: str = "127.0.0.1:50051"  # all interfaces only when asked: operators need credentials there
    operators: OperatorRegistry = field(default_factory=OperatorRegistry)
    open_operator_access: bool = False  # every Operator / Detections call allowed as admin (loopback only)
    open_health: bool = True  # health service needs no credentials
    reflection: str = "open"  # open, operators (needs credentials) or off
    audit_retention_s: float = 365 * 24 * 3600.0  # inspection audit log; 0: keep forever
    weights: Path | None = None  # None: weights shipped in shared/weights
    detector_imgsz: int = 640
    detector_confidence: float = 0.25
    max_batch: int = 8
    detections_jsonl: Path | None = None
    index: str | None = None  # postgresql://... or sqlite:///path; None: data_dir/frames.db
    index_pool_size: int = 8  # PostgreSQL connections
    publish: tuple[str, ...] = ()  # broker outputs: mqtt://host:1883/prefix, nats://host:4222/subject
    publish_timeout_s: float = 10.0  # a broker's acknowledgement, else the batch waits and is retried
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # require client certificates signed by it (mutual TLS)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_packet_bytes: int = 4 * 1024 * 1024
    residual_timeout_s: float = 5.0
    retention_age_s: float = 7 * 24 * 3600.0  # 0: keep forever
    retention_bytes: int = 10 * 1024**3  # base-layer bytes; 0: no limit
    maintenance_interval_s: float = 10.0
    cache_frames: int = 64
    exact_views: bool = False  # operator views in exact pixels (bit-identical everywhere, slower); else float
    max_workers: int = 64  # every edge stream and subscription holds one worker thread
    metrics_port: int = 9102  # Prometheus; 0: disabled
    metrics_addr: str = "0.0.0.0"
    # several replicas on one PostgreSQL index (None: the only server of its index)
    replica_id: str | None = None
    advertise_address: str | None = None  # host:port edges and replicas reach this one at; None: from ``listen``
    lease_s: float = 15.0  # camera leases and the replica heartbeat
    rebalance_s: float = 30.0  # an imbalance of 2+ cameras lasting this long moves cameras; 0: never
    replica_token: str | None = None  # the replicas' shared credential for ReplicaLink calls
    replica_tls_ca: Path | None = None  # CA of the other replicas' certificates (TLS)

    def __post_init__(self) -> None:
        if self.max_packet_bytes > self.max_message_bytes:
            raise ValueError("--max-packet-bytes must not exceed --max-message-bytes")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("mutual TLS (--tls-client-ca) needs --tls-cert and --tls-key")
        if self.reflection not in REFLECTION_MODES:
            raise ValueError(f"reflection must be one of {', '.join(REFLECTION_MODES)}")
        if self.open_operator_access and len(self.operators):
            raise ValueError("--insecure-open-operators and configured operators exclude each other")
        if self.open_operator_access and not is_loopback(self.listen):
            raise ValueError(f"--insecure-open-operators is for local experiments: listen on a loopback address "
                             f"(e.g. 127.0.0.1:50051), not {self.listen}")
        self.operators.check_separation(self.cameras)
        self._check_replica()

    def _check_replica(self) -> None:
        if self.replica_id is None:
            if self.advertise_address is not None:
                raise ValueError("--advertise-address is for replicas: it needs --replica-id")
            return
        if not str(self.index or "").startswith(("postgresql://", "postgres://")):
            raise ValueError(SQLITE_REFUSAL)
        if not self.replica_token:
            raise ValueError("replicas call each other with a shared credential: set $ICMH_REPLICA_TOKEN (the same "
                             "on every replica) or --replica-token-file")
        if hashlib.sha256(self.replica_token.encode()).digest() in self.cameras.token_owners() or \
                self.operators.by_token(self.replica_token) is not None:
            raise ValueError("the replica credential must differ from every camera and operator token")
        if self.tls_cert is not None and self.replica_tls_ca is None:
            raise ValueError("replicas with TLS verify each other: give --replica-tls-ca")
        if self.advertise_address is None and self.listen.rpartition(":")[0] in WILDCARD_HOSTS:
            raise ValueError(f"--listen {self.listen} is every interface: give --advertise-address HOST:PORT, the "
                             "address at which edges and the other replicas reach this replica")
