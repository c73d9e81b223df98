"""``icmh-edge``: capture a camera, code each frame in two layers, stream base layers to the cloud."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from icmh.allocator import reexec_with_fast_allocator
from icmh.codec.bitstream import BitstreamError
from icmh.defaults import field_default
from icmh.service.process import add_process_arguments

from .link import LinkRefused, LinkSettings
from .settings import EdgeSettings
from .source import SourceError
from .store import StoreLimits

MIB = 1024 * 1024


def edge_default(name: str) -> Any:
    return field_default(EdgeSettings, name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icmh-edge", description=__doc__)
    p.add_argument("--camera-id", required=True, help="camera id known to the cloud")
    p.add_argument("--token", default=os.environ.get("ICMH_EDGE_TOKEN"),
                   help="camera token (default: $ICMH_EDGE_TOKEN)")
    p.add_argument("--cloud", required=True,
                   help="cloud server host:port; several replicas: host:port,host:port,... (or one load-balanced "
                        "address): the edge follows the replica that holds its camera")
    src = p.add_argument_group("source")
    src.add_argument("--source", required=True,
                     help="video file, rtsp:// or http:// URL, device index, or image folder")
    src.add_argument("--loop", action="store_true", help="start a video file or image folder over at its end")
    src.add_argument("--fps", type=float, default=edge_default("fps"), help="frame rate cap (0: none)")
    src.add_argument("--max-frames", type=int, default=edge_default("max_frames"),
                     help="stop capturing after N frames (0: no limit)")
    src.add_argument("--width", type=int, help="resize frames to this width (with --height)")
    src.add_argument("--height", type=int, help="resize frames to this height (with --width)")
    codec = p.add_argument_group("codec")
    codec.add_argument("--weights", type=Path,
                       help="folder with sa-icm.pt / pr-icmh.pt / fr-icmh.pt (default: shipped)")
    codec.add_argument("--mode", "--residual-mode", dest="mode", choices=("pr", "fr", "avif"),
                       default=edge_default("mode"),
                       help="residual layer kind: learned PR-/FR-ICMH, or x - x̂_m coded by AVIF")
    codec.add_argument("--residual-policy", choices=("lazy", "eager"), default=edge_default("residual_policy"),
                       help="lazy: keep the frame, code the residual layer when the cloud asks; eager: at capture")
    codec.add_argument("--rate", type=float, default=edge_default("base_rate"),
                       help="base-layer rate R in [0,1] (the cloud may change it)")
    codec.add_argument("--residual-rate", type=float, default=edge_default("residual_rate"),
                       help="residual-layer rate R in [0,1]")
    codec.add_argument("--target-kbps", type=float, default=edge_default("target_kbps"),
                       help="adapt the base rate to this base-layer bandwidth (0: fixed rate)")
    codec.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    codec.add_argument("--analysis-precision", choices=("auto", "bf16", "fp32"),
                       help="arithmetic of the encoders' analysis transforms (default: $ICMH_ANALYSIS_PRECISION or "
                            "auto = bf16 where the CPU has it natively); the streams decode the same either way")
    store = p.add_argument_group("storage")
    store.add_argument("--data-dir", type=Path, default=Path("edge-data"), help="folder of edge.db")
    store.add_argument("--outbox-frames", type=int, default=StoreLimits.outbox_frames,
                       help="unacknowledged base layers kept at most")
    store.add_argument("--outbox-mb", type=float, default=StoreLimits.outbox_bytes / MIB,
                       help="MiB of unacknowledged base layers kept at most")
    store.add_argument("--residual-store-mb", type=float, default=StoreLimits.residual_bytes / MIB,
                       help="inspection store: residual layers and kept frames, at most (oldest evicted first)")
    store.add_argument("--residual-max-age-h", type=float, default=StoreLimits.residual_age_s / 3600,
                       help="residual layers and kept frames older than this are evicted (0: no age limit)")
    link = p.add_argument_group("link")
    link.add_argument("--tls-ca", type=Path,
                      help="CA certificate of the cloud (enables TLS; a cloud whose certificate does not verify "
                           "is refused, exit status 2)")
    link.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    link.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    link.add_argument("--tls-server-name",
                      help="expected server name in the cloud's certificate (default: the host of --cloud)")
    link.add_argument("--window", type=int, default=LinkSettings.window, help="base packets in flight without an ack")
    link.add_argument("--reconnect-min", type=float, default=LinkSettings.backoff_min_s,
                      help="first reconnect delay, seconds")
    link.add_argument("--reconnect-max", type=float, default=LinkSettings.backoff_max_s,
                      help="longest reconnect delay, seconds")
    add_process_arguments(p, edge_default("metrics_port"), edge_default("metrics_addr"))
    return p


def settings_from_args(args: argparse.Namespace) -> EdgeSettings:
    if not args.token:
        raise ValueError("a token is required (--token or $ICMH_EDGE_TOKEN)")
    if (args.width is None) != (args.height is None):
        raise ValueError("give both --width and --height, or neither")
    return EdgeSettings(
        camera_id=args.camera_id, token=args.token, source=args.source, data_dir=args.data_dir,
        link=LinkSettings(args.cloud, args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name, args.window,
                          args.reconnect_min, args.reconnect_max),
        weights=args.weights, mode=args.mode, residual_policy=args.residual_policy,
        loop=args.loop, fps=args.fps, max_frames=args.max_frames,
        size=(args.width, args.height) if args.width else None, base_rate=args.rate,
        residual_rate=args.residual_rate, target_kbps=args.target_kbps,
        limits=StoreLimits(args.outbox_frames, int(args.outbox_mb * MIB), int(args.residual_store_mb * MIB),
                           args.residual_max_age_h * 3600),
        metrics_port=args.metrics_port, metrics_addr=args.metrics_addr,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from icmh.service.process import configure_logging, on_termination

    configure_logging(args.log_level)
    log = logging.getLogger("icmh.edge")
    try:
        reexec_with_fast_allocator(argv)
        import torch

        from icmh.codec.precision import set_default_precision

        from .node import EdgeNode

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.analysis_precision:
            set_default_precision(args.analysis_precision)
        node = EdgeNode(settings_from_args(args))
    except (ValueError, FileNotFoundError, SourceError, BitstreamError, OSError) as exc:
        print(f"icmh-edge: error: {exc}", file=sys.stderr)
        return 2
    on_termination(node.request_stop)
    try:
        node.start()
    except OSError as exc:  # the metrics endpoint, started first
        node.close()
        print(f"icmh-edge: error: metrics endpoint {args.metrics_addr}:{args.metrics_port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    node.wait()
    node.close()
    if isinstance(node.error, LinkRefused):
        return 2
    if node.error is not None:
        log.error("stopped after a failure: %s", node.error)
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
