"""Prometheus metrics of an edge node (one registry per node)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BPP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames_captured = Counter("icmh_edge_frames_captured", "Frames read from the source", registry=r)
        self.frames_encoded = Counter("icmh_edge_frames_encoded", "Frames coded and stored", registry=r)
        self.frames_sent = Counter("icmh_edge_frames_sent", "Base packets sent (resends included)", registry=r)
        self.frames_acked = Counter("icmh_edge_frames_acked", "Cloud acknowledgements", ["status"], registry=r)
        self.frames_dropped = Counter("icmh_edge_frames_dropped", "Frames not delivered", ["reason"], registry=r)
        self.layer_bytes = Counter("icmh_edge_layer_bytes", "Coded bytes", ["layer"], registry=r)
        self.bpp = Histogram("icmh_edge_bits_per_pixel", "Bits per pixel", ["layer"], buckets=BPP_BUCKETS, registry=r)
        self.encode_seconds = Histogram(
            "icmh_edge_encode_seconds", "Encode latency", ["layer"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.outbox_frames = Gauge("icmh_edge_outbox_frames", "Base layers awaiting the cloud's ack", registry=r)
        self.outbox_bytes = Gauge("icmh_edge_outbox_bytes", "Bytes awaiting the cloud's ack", registry=r)
        self.residual_frames = Gauge("icmh_edge_residual_store_frames", "Residual layers kept", registry=r)
        self.residual_bytes = Gauge("icmh_edge_residual_store_bytes", "Bytes of residual layers kept", registry=r)
        self.residual_requests = Counter(
            "icmh_edge_residual_requests", "Residual requests from the cloud", ["result"], registry=r
        )
        self.lossless_requests = Counter(
            "icmh_edge_lossless_requests", "Lossless-layer requests from the cloud", ["result"], registry=r
        )
        self.kept_frames = Gauge("icmh_edge_frame_store_frames", "Captured frames kept for inspection", registry=r)
        self.kept_frame_bytes = Gauge("icmh_edge_frame_store_bytes", "Bytes of captured frames kept", registry=r)
        self.reconnects = Counter("icmh_edge_reconnects", "Connection attempts after the first", registry=r)
        self.connected = Gauge("icmh_edge_connected", "1 while the cloud link is up", registry=r)
        self.base_rate = Gauge("icmh_edge_base_rate", "Current base-layer rate R", registry=r)
