"""``cloud-server``: receive base layers from edges, detect objects, serve operators and subscribers."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from icmh.allocator import reexec_with_fast_allocator
from icmh.codec.bitstream import BitstreamError
from icmh.defaults import field_default
from icmh.paths import default_detector
from icmh.service.process import add_process_arguments

from .auth import CameraRegistry, OperatorRegistry
from .settings import REFLECTION_MODES, CloudSettings

MIB = 1024 * 1024
DAY = 86400.0


def cloud_default(name: str) -> Any:
    return field_default(CloudSettings, name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icmh-cloud", description=__doc__)
    p.add_argument("--listen", default=cloud_default("listen"),
                   help="host:port to serve on (port 0: any free port; 0.0.0.0:PORT for every interface)")
    p.add_argument("--data-dir", type=Path, default=Path("cloud-data"), help="folder of frames.db (frame index)")
    cams = p.add_argument_group("cameras")
    cams.add_argument("--cameras-file", type=Path, help="JSON file of cameras and tokens (see deploy/cameras.json)")
    cams.add_argument("--camera", action="append", default=[], metavar="ID=TOKEN",
                      help="allow a camera (repeatable; overrides the file's token)")
    ops = p.add_argument_group("operators (access to Operator and Detections)")
    ops.add_argument("--operators-file", type=Path,
                     help="JSON file of operators: token or token_sha256, role, optional cameras, cert_names "
                          "(see deploy/operators.example.json)")
    ops.add_argument("--operator", action="append", default=[], metavar="NAME=TOKEN:ROLE",
                     help="allow an operator, role viewer|inspector|admin (repeatable; overrides the file's entry)")
    ops.add_argument("--insecure-open-operators", action="store_true",
                     help="local experiments only: every operator call allowed without credentials "
                          "(needs a loopback --listen address)")
    ops.add_argument("--auth-health", action="store_true", help="require operator credentials for health checks")
    ops.add_argument("--reflection", choices=REFLECTION_MODES, default=cloud_default("reflection"),
                     help="server reflection: open, only for operators, or off")
    ops.add_argument("--audit-retention-days", type=float, default=cloud_default("audit_retention_s") / DAY,
                     help="keep the inspection audit log this long (0: forever)")
    det = p.add_argument_group("codec and detector")
    det.add_argument("--weights", type=Path, help="codec weights folder (default: shipped)")
    det.add_argument("--detector", type=Path, default=default_detector(), help="YOLO checkpoint")
    det.add_argument("--detector-imgsz", type=int, default=cloud_default("detector_imgsz"), help="detector input size")
    det.add_argument("--detector-conf", type=float, default=cloud_default("detector_confidence"),
                     help="detector confidence threshold")
    det.add_argument("--max-batch", type=int, default=cloud_default("max_batch"),
                     help="frames per detector call when frames queue up")
    det.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    out = p.add_argument_group("outputs and storage")
    out.add_argument("--detections-jsonl", type=Path, help="append every detection result to this JSON Lines file")
    out.add_argument("--publish", action="append", default=os.environ.get("ICMH_PUBLISH", "").split(),
                     metavar="URL",
                     help="also publish every result to a broker (repeatable; added to $ICMH_PUBLISH): "
                          "mqtt://host:1883/topic/prefix (QoS 1, per-camera topics) or nats://host:4222/subject "
                          "(JetStream, de-duplicated by message id)")
    out.add_argument("--publish-timeout", type=float, default=cloud_default("publish_timeout_s"),
                     help="seconds to wait for a broker's acknowledgement before the batch is retried")
    out.add_argument("--index", default=os.environ.get("ICMH_INDEX") or None, metavar="URL",
                     help="frame index: postgresql://user@host/db (needs the fleet extra) or sqlite:///path "
                          "(default $ICMH_INDEX, else DATA_DIR/frames.db)")
    out.add_argument("--index-pool-size", type=int, default=cloud_default("index_pool_size"),
                     help="PostgreSQL connections of the index")
    out.add_argument("--retention-days", type=float, default=cloud_default("retention_age_s") / DAY,
                     help="keep frames this long (0: forever)")
    out.add_argument("--retention-gb", type=float, default=cloud_default("retention_bytes") / 1024**3,
                     help="base-layer bytes kept at most (0: no limit)")
    out.add_argument("--exact-views", action="store_true",
                     help="decode operator views (QUALITY_MACHINE / QUALITY_HUMAN) in exact integer pixels, the "
                          "same on every machine (PR human view at 1280x720 ~4x slower); default: float synthesis, "
                          "within a level or two of the exact pixels. QUALITY_ORIGINAL is always exact")
    out.add_argument("--cache-frames", type=int, default=cloud_default("cache_frames"),
                     help="decoded frames kept for repeated inspection")
    rep = p.add_argument_group("replicas (several cloud servers sharing one PostgreSQL index)")
    rep.add_argument("--replica-id", help="this server's replica id, stable across restarts (e.g. the pod name); "
                                          "cameras are spread over the replicas of one index by leases")
    rep.add_argument("--advertise-address", metavar="HOST:PORT",
                     help="where edges and the other replicas reach this replica (default: the --listen host with "
                          "the bound port; required when listening on every interface)")
    rep.add_argument("--lease-seconds", type=float, default=cloud_default("lease_s"),
                     help="camera lease: a dead replica's cameras move after this long")
    rep.add_argument("--rebalance-seconds", type=float, default=cloud_default("rebalance_s"),
                     help="when a replica holds 2+ cameras more than another for this long, cameras move to the "
                          "less loaded one (e.g. after a scale-out; 0: never)")
    rep.add_argument("--replica-token-file", type=Path,
                     help="file holding the replicas' shared credential (default: $ICMH_REPLICA_TOKEN)")
    rep.add_argument("--replica-tls-ca", type=Path, help="CA of the other replicas' certificates (with TLS)")
    tls = p.add_argument_group("TLS")
    tls.add_argument("--tls-cert", type=Path, help="server certificate (enables TLS)")
    tls.add_argument("--tls-key", type=Path, help="server key")
    tls.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-message-mb", type=float, default=cloud_default("max_message_bytes") / MIB,
                     help="largest gRPC message received")
    lim.add_argument("--max-packet-mb", type=float, default=cloud_default("max_packet_bytes") / MIB,
                     help="largest base layer accepted")
    lim.add_argument("--residual-timeout", type=float, default=cloud_default("residual_timeout_s"),
                     help="seconds to wait for an edge's residual")
    lim.add_argument("--max-workers", type=int, default=cloud_default("max_workers"),
                     help="gRPC threads (one per edge stream / subscriber)")
    p.add_argument("--ready-file", type=Path, help="write the bound port here once serving")
    add_process_arguments(p, cloud_default("metrics_port"), cloud_default("metrics_addr"))
    return p


def settings_from_args(args: argparse.Namespace) -> CloudSettings:
    replica_token = (args.replica_token_file.read_text().strip() if args.replica_token_file
                     else os.environ.get("ICMH_REPLICA_TOKEN") or None)
    return CloudSettings(
        cameras=CameraRegistry.load(args.cameras_file, args.camera), data_dir=args.data_dir,
        operators=OperatorRegistry.load(args.operators_file, args.operator),
        open_operator_access=args.insecure_open_operators, open_health=not args.auth_health,
        reflection=args.reflection, audit_retention_s=args.audit_retention_days * DAY,
        detector=args.detector, listen=args.listen, weights=args.weights, detector_imgsz=args.detector_imgsz,
        detector_confidence=args.detector_conf, max_batch=args.max_batch, detections_jsonl=args.detections_jsonl,
        index=args.index, index_pool_size=args.index_pool_size, publish=tuple(args.publish),
        publish_timeout_s=args.publish_timeout,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        max_message_bytes=int(args.max_message_mb * MIB), max_packet_bytes=int(args.max_packet_mb * MIB),
        residual_timeout_s=args.residual_timeout, retention_age_s=args.retention_days * DAY,
        retention_bytes=int(args.retention_gb * 1024**3), cache_frames=args.cache_frames,
        exact_views=args.exact_views,
        max_workers=args.max_workers, metrics_port=args.metrics_port, metrics_addr=args.metrics_addr,
        replica_id=args.replica_id, advertise_address=args.advertise_address, lease_s=args.lease_seconds,
        rebalance_s=args.rebalance_seconds,
        replica_token=replica_token, replica_tls_ca=args.replica_tls_ca,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from icmh.service.process import configure_logging, on_termination

    configure_logging(args.log_level)
    try:
        reexec_with_fast_allocator(argv)
        import torch

        from .server import CloudServer

        if args.threads:
            torch.set_num_threads(args.threads)
        server = CloudServer(settings_from_args(args))
    except (ValueError, FileNotFoundError, BitstreamError, OSError) as exc:
        print(f"icmh-cloud: error: {exc}", file=sys.stderr)
        return 2
    try:
        port = server.start()
    except OSError as exc:  # the metrics port, bound first
        server.stop(grace=0)
        print(f"icmh-cloud: error: metrics endpoint {args.metrics_addr}:{args.metrics_port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    on_termination(stop.set)
    if args.ready_file:
        args.ready_file.write_text(f"{port}\n")
    stop.wait()
    server.stop()
    logging.getLogger("icmh.cloud").info("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
