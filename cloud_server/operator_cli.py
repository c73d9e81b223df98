"""``icmh-operator``: list cameras and frames, inspect a frame in machine or human quality, watch detections,
change a camera's rates, read the inspection audit log. Every call sends the operator token (``--token`` or
``$ICMH_OPERATOR_TOKEN``) as ``authorization: Bearer TOKEN``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from icmh.rpc import common_pb2, detections_pb2, detections_pb2_grpc, operator_pb2, operator_pb2_grpc
from icmh.service.edge_config import CONFIG_FIELDS
from icmh.service.grpc_setup import open_channel

QUALITIES = {"machine": operator_pb2.QUALITY_MACHINE, "human": operator_pb2.QUALITY_HUMAN,
             "original": operator_pb2.QUALITY_ORIGINAL}


def format_time(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.ToNanoseconds() / 1e9, timezone.utc).isoformat(timespec="milliseconds")


def format_detections(detections: Iterable[common_pb2.Detection]) -> str:
    return ", ".join(f"{d.class_name} {d.confidence:.2f} [{d.box.x1:.0f},{d.box.y1:.0f},{d.box.x2:.0f},{d.box.y2:.0f}]"
                     for d in detections) or "no detections"


def format_result(result: common_pb2.DetectionResult) -> str:
    """One line per detection result, e.g. ``cam1 #12 @... car 0.87 [10,20,50,60]``."""
    text = f"{result.camera_id} #{result.frame_id} @{format_time(result.capture_time)}: "
    return text + (f"ERROR {result.error}" if result.error else format_detections(result.detections))


def _table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def cmd_cameras(channel: grpc.Channel, args: argparse.Namespace) -> None:
    reply = operator_pb2_grpc.OperatorStub(channel).ListCameras(operator_pb2.ListCamerasRequest(), timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(reply, indent=None))
        return
    rows = [[c.camera_id, operator_pb2.CameraState.Name(c.state).removeprefix("CAMERA_STATE_").lower(),
             c.last_frame_id, format_time(c.last_capture_time), f"{c.fps:.1f}", c.frames_stored,
             f"{c.width}x{c.height}", common_pb2.ResidualMode.Name(c.residual_mode).removeprefix("RESIDUAL_MODE_")]
            for c in reply.cameras]
    print(_table(["CAMERA", "STATE", "LAST FRAME", "LAST CAPTURE (UTC)", "FPS", "FRAMES", "SIZE", "MODE"], rows))


def cmd_frames(channel: grpc.Channel, args: argparse.Namespace) -> None:
    request = operator_pb2.ListFramesRequest(camera_id=args.camera, min_frame_id=args.first, max_frame_id=args.last,
                                             limit=args.limit)
    reply = operator_pb2_grpc.OperatorStub(channel).ListFrames(request, timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(reply, indent=None))
        return
    rows = [[f.frame_id, format_time(f.capture_time), f.base_bytes, f"{f.base_bpp:.4f}", f"{f.base_rate:.3f}",
             f.residual_bytes, f.detection_count if f.detected else "pending"] for f in reply.frames]
    print(_table(["FRAME", "CAPTURED (UTC)", "BASE B", "BASE BPP", "RATE", "RESIDUAL B", "DETECTIONS"], rows))


def cmd_inspect(channel: grpc.Channel, args: argparse.Namespace) -> None:
    request = operator_pb2.GetFrameRequest(camera_id=args.camera, frame_id=args.frame, quality=QUALITIES[args.quality],
                                           residual_rate=args.residual_rate)
    reply = operator_pb2_grpc.OperatorStub(channel).GetFrame(request, timeout=args.timeout)
    args.output.write_bytes(reply.png)
    print(f"wrote {args.output} ({reply.frame.width}x{reply.frame.height}, {args.quality}): base {reply.base_bytes} B "
          f"({reply.base_bpp:.4f} bpp), residual {reply.residual_bytes} B ({reply.residual_bpp:.4f} bpp"
          + (f", R {reply.residual_rate:.2f})" if reply.residual_bytes else ")")
          + (f", lossless {reply.lossless_bytes} B" if reply.lossless_bytes else ""))
    print(format_detections(reply.detections))


def cmd_watch(channel: grpc.Channel, args: argparse.Namespace) -> None:
    request = detections_pb2.SubscribeRequest(camera_ids=args.camera, class_names=args.class_name,
                                              min_confidence=args.min_confidence)
    for count, result in enumerate(detections_pb2_grpc.DetectionsStub(channel).Subscribe(request), start=1):
        print(json_format.MessageToJson(result, indent=None) if args.json else format_result(result), flush=True)
        if args.count and count >= args.count:
            return


def cmd_configure(channel: grpc.Channel, args: argparse.Namespace) -> None:
    fields = {name: getattr(args, name) for name in CONFIG_FIELDS if getattr(args, name) is not None}
    if not fields:
        raise ValueError("give at least one of --base-rate, --residual-rate, --target-kbps")
    request = operator_pb2.ConfigureCameraRequest(camera_id=args.camera, config=common_pb2.EdgeConfig(**fields))
    reply = operator_pb2_grpc.OperatorStub(channel).ConfigureCamera(request, timeout=args.timeout)
    where = "sent to the edge" if reply.delivered else "edge offline: applied when it connects"
    print(f"{args.camera}: {json_format.MessageToDict(reply.config)} ({where})")


def parse_time(text: str) -> Timestamp:
    """ISO 8601 date/time (UTC unless it names a zone) as a Timestamp."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def cmd_audit(channel: grpc.Channel, args: argparse.Namespace) -> None:
    request = operator_pb2.ListAuditRequest(camera_id=args.camera or "", operator=args.operator or "",
                                            limit=args.limit)
    for name in ("since", "until"):
        if getattr(args, name) is not None:
            getattr(request, name).CopyFrom(getattr(args, name))
    reply = operator_pb2_grpc.OperatorStub(channel).ListAudit(request, timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(reply, indent=None))
        return
    rows = [[format_time(r.time), r.operator or "(open)", r.role, r.via, r.camera_id, r.frame_id,
             operator_pb2.Quality.Name(r.quality).removeprefix("QUALITY_").lower()
             if r.quality in operator_pb2.Quality.values() else r.quality, r.outcome, r.peer, r.detail]
            for r in reply.records]
    print(_table(["TIME (UTC)", "OPERATOR", "ROLE", "VIA", "CAMERA", "FRAME", "QUALITY", "OUTCOME", "PEER", "DETAIL"],
                 rows))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icmh-operator", description=__doc__)
    p.add_argument("--server", default="localhost:50051", help="cloud server host:port")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (not for watch)")
    p.add_argument("--tls-ca", type=Path, help="CA certificate of the server (enables TLS)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    p.add_argument("--tls-server-name", help="expected server name in its certificate")
    p.add_argument("--token", default=os.environ.get("ICMH_OPERATOR_TOKEN"),
                   help="operator token (default: $ICMH_OPERATOR_TOKEN; prefer the environment variable)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cameras", help="cameras, online state, last frame, fps")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cameras)

    f = sub.add_parser("frames", help="frames of a camera in the cloud's index, newest first")
    f.add_argument("--camera", required=True)
    f.add_argument("--from", dest="first", type=int, default=0, help="lowest frame id")
    f.add_argument("--to", dest="last", type=int, default=0, help="highest frame id")
    f.add_argument("--limit", type=int, default=20)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_frames)

    i = sub.add_parser("inspect", help="save a frame as PNG (machine: base layer; human: + edge residual; "
                                       "original: lossless from the edge)")
    i.add_argument("--camera", required=True)
    i.add_argument("--frame", type=int, required=True)
    i.add_argument("--quality", choices=sorted(QUALITIES), default="human")
    i.add_argument("--residual-rate", type=float, metavar="R",
                   help="human quality: the residual at rate R in [0, 1] (1: sharpest), coded for this inspection by "
                        "an edge that kept the captured frame; default: the residual coded at capture")
    i.add_argument("-o", "--output", type=Path, required=True)
    i.set_defaults(func=cmd_inspect)

    w = sub.add_parser("watch", help="print detections live")
    w.add_argument("--camera", action="append", default=[], help="only this camera (repeatable)")
    w.add_argument("--class", dest="class_name", action="append", default=[], help="only this class (repeatable)")
    w.add_argument("--min-confidence", type=float, default=0.0)
    w.add_argument("--count", type=int, default=0, help="stop after N results (0: run until interrupted)")
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.set_defaults(func=cmd_watch)

    g = sub.add_parser("configure", help="change a camera's coding rates (pushed to its edge)")
    g.add_argument("--camera", required=True)
    g.add_argument("--base-rate", type=float, help="base-layer rate R in [0,1]")
    g.add_argument("--residual-rate", type=float, help="residual-layer rate R in [0,1]")
    g.add_argument("--target-kbps", type=float, help="base-layer bandwidth target (0: fixed rate)")
    g.set_defaults(func=cmd_configure)

    a = sub.add_parser("audit", help="human / original inspections, allowed and refused, newest first (admin)")
    a.add_argument("--camera", help="only this camera")
    a.add_argument("--operator", help="only this operator")
    a.add_argument("--since", type=parse_time, help="from this time (ISO 8601, UTC unless a zone is given)")
    a.add_argument("--until", type=parse_time, help="before this time (ISO 8601)")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_audit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with open_channel(args.server, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                          server_name=args.tls_server_name, token=args.token) as channel:
            args.func(channel, args)
    except grpc.RpcError as exc:
        hint = " (give --token or set $ICMH_OPERATOR_TOKEN)" if exc.code() == grpc.StatusCode.UNAUTHENTICATED \
            and not args.token else ""
        print(f"icmh-operator: error: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"icmh-operator: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
