"""Prometheus metrics of the cloud server (one registry per server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BPP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class CloudMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.packets = Counter("icmh_cloud_packets", "Base packets by outcome", ["camera", "result"], registry=r)
        self.camera_fps = Gauge("icmh_cloud_camera_fps", "Accepted frames per second", ["camera"], registry=r)
        self.layer_bytes = Counter("icmh_cloud_layer_bytes", "Layer bytes received", ["camera", "layer"],
                                   registry=r)
        self.bpp = Histogram("icmh_cloud_bits_per_pixel", "Bits per pixel", ["camera", "layer"],
                             buckets=BPP_BUCKETS, registry=r)
        self.decode_seconds = Histogram("icmh_cloud_decode_seconds", "Decode latency", ["quality"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.detect_seconds = Histogram("icmh_cloud_detect_seconds", "Detector latency per batch",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("icmh_cloud_detect_batch_size", "Frames per detector batch",
                                    buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.end_to_end_seconds = Histogram("icmh_cloud_end_to_end_seconds", "Capture to published detections",
                                            ["camera"], buckets=E2E_BUCKETS, registry=r)
        self.residual_fetch_seconds = Histogram("icmh_cloud_residual_fetch_seconds", "Residual round trip to edge",
                                                buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("icmh_cloud_errors", "Errors by kind", ["kind"], registry=r)
        self.edges_connected = Gauge("icmh_cloud_edges_connected", "Open edge streams", registry=r)
        self.subscribers = Gauge("icmh_cloud_subscribers", "Open detection subscriptions", registry=r)
        self.index_frames = Gauge("icmh_cloud_index_frames", "Frames in the frame index", registry=r)
        self.index_bytes = Gauge("icmh_cloud_index_bytes", "Base-layer bytes in the frame index", registry=r)
        self.pending_frames = Gauge("icmh_cloud_pending_frames", "Frames waiting for the detector", registry=r)
        self.inspections = Counter("icmh_cloud_inspections", "GetFrame requests by quality and outcome",
                                   ["quality", "outcome"], registry=r)
        self.auth_refusals = Counter("icmh_cloud_auth_refusals", "Operator-facing calls refused by access control",
                                     ["code"], registry=r)
        self.audit_records = Gauge("icmh_cloud_audit_records", "Rows in the inspection audit log", registry=r)
        # publication to the sinks (JSON Lines, MQTT, NATS): one cursor per sink in the frame index
        self.sink_up = Gauge("icmh_cloud_sink_up", "1 while a sink takes results, 0 during an outage", ["sink"],
                             registry=r)
        self.sink_pending = Gauge("icmh_cloud_sink_pending", "Results due to a sink, not yet delivered", ["sink"],
                                  registry=r)
        self.sink_outages = Counter("icmh_cloud_sink_outages", "Outages of a sink (results held back)", ["sink"],
                                    registry=r)
        self.sink_outage_seconds = Counter("icmh_cloud_sink_outage_seconds", "Time sinks spent in outages",
                                           ["sink"], registry=r)
        self.published = Counter("icmh_cloud_published", "Results delivered to a sink", ["sink"], registry=r)
        self.publish_duplicates = Counter("icmh_cloud_publish_duplicates",
                                          "Results re-sent after a restart or failure that the sink already had "
                                          "(not stored twice)", ["sink"], registry=r)
        self.publish_failures = Counter("icmh_cloud_publish_failures", "Failed delivery attempts", ["sink"],
                                        registry=r)
        self.publish_seconds = Histogram("icmh_cloud_publish_seconds", "Delivery of one batch to a sink", ["sink"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        # several replicas on one index (icmh.cloud.replicas): camera leases and calls routed between replicas
        self.owned_cameras = Gauge("icmh_cloud_owned_cameras", "Cameras whose lease this replica holds", registry=r)
        self.live_replicas = Gauge("icmh_cloud_replicas", "Live replicas sharing the frame index", registry=r)
        self.lease_takeovers = Counter("icmh_cloud_lease_takeovers",
                                       "Camera leases taken over after their holder let them expire", registry=r)
        self.lease_handovers = Counter("icmh_cloud_lease_handovers",
                                       "Camera leases handed to a less loaded replica (rebalancing)", registry=r)
        self.edge_redirects = Counter("icmh_cloud_edge_redirects",
                                      "Edge streams refused and sent to the replica holding the camera", registry=r)
        self.replica_calls = Counter("icmh_cloud_replica_calls", "Calls to the replica holding a camera's edge",
                                     ["call", "outcome"], registry=r)
