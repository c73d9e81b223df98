"""Demo: a cloud server and one edge node on loopback, streaming a traffic video.

Prints detections as they arrive; after N frames it inspects one frame in MACHINE and
HUMAN quality, saves both PNGs with their PSNR against the original frame, and shuts
both services down with SIGTERM. Needs the installed package (``pip install -e .``); the video and
the detector come from the data root (``../shared`` beside the checkout, or ``$ICMH_DATA``)::

    python deploy/demo.py                      # shipped weights, the data root's video and detector
    python deploy/demo.py --weights runs/export --frames 30 --out demo-out
    python deploy/demo.py --random-weights     # no trained weights yet: tiny random codecs
    python deploy/demo.py --web --keep-running # + the operator web view; runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import secrets
import sys
import tempfile
import threading
from pathlib import Path

import grpc

from icmh.cloud.operator_cli import format_detections, format_result
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR
from icmh.edge.source import FrameSource
from icmh.metrics import psnr
from icmh.paths import data_root, default_detector
from icmh.rpc import operator_pb2, operator_pb2_grpc
from icmh.service.feed import DetectionFeed
from icmh.service.grpc_setup import with_token
from icmh.service.images import decode_png
from icmh.service.local import LOOPBACK, LocalServices, ServiceError

CAMERA, TOKEN = "demo-cam", "demo-token"
#: the demo's own operator (inspector: may see human quality), a fresh token per run
OPERATOR, OPERATOR_TOKEN = "demo-operator", secrets.token_urlsafe(24)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, default=data_root() / "data" / "traffic" / "cvtrafficcam_street.mp4")
    p.add_argument("--detector", type=Path, default=default_detector())
    p.add_argument("--weights", type=Path, help="codec weights folder (default: shipped weights)")
    p.add_argument("--random-weights", action="store_true",
                   help="use tiny randomly initialised codecs (pipeline demo only: images are noise)")
    p.add_argument("--frames", type=int, default=20, help="frames to stream before inspecting")
    p.add_argument("--inspect", type=int, help="frame id to inspect (default: the last)")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the PNGs")
    p.add_argument("--workdir", type=Path, help="data and logs of both services (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per service")
    p.add_argument("--web", action="store_true", help="also start the operator web view (icmh-web) on loopback")
    p.add_argument("--web-port", type=int, default=8080, help="port of the web view (0: a free one)")
    p.add_argument("--keep-running", action="store_true",
                   help="after the inspection, keep streaming (the video loops) until Ctrl-C or SIGTERM")
    return p.parse_args()


def weights_folder(args: argparse.Namespace, workdir: Path) -> Path:
    if args.weights:
        return args.weights
    if args.random_weights:
        from icmh.codec.weights import write_random_weights

        folder = write_random_weights(workdir / "random-weights")
        print(f"demo: tiny random codecs in {folder}: decoded images are noise, detections will be few")
        return folder
    if not all((SHIPPED_DIR / LAYER_FILES[k]).exists() for k in ("base", "pr")):
        sys.exit(f"demo: no trained weights in {SHIPPED_DIR}: pass --weights DIR or --random-weights")
    return SHIPPED_DIR


def original_frame(args: argparse.Namespace, frame_id: int):
    """The frame the edge captured as ``frame_id`` (ids count video frames from 1 in a fresh edge store)."""
    source = FrameSource(str(args.video), size=(args.width, args.height), max_frames=frame_id)
    try:
        return list(source.frames(threading.Event()))[-1].image
    finally:
        source.close()


def inspect(args: argparse.Namespace, port: int) -> None:
    """Save one frame in MACHINE and HUMAN quality, with its PSNR against the original."""
    frame_id = args.inspect or args.frames
    original = original_frame(args, frame_id)
    channel = with_token(grpc.insecure_channel(f"{LOOPBACK}:{port}"), OPERATOR_TOKEN)
    stub = operator_pb2_grpc.OperatorStub(channel)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"\ndemo: inspecting frame {frame_id} of {CAMERA}")
    for name, quality in (("machine", operator_pb2.QUALITY_MACHINE), ("human", operator_pb2.QUALITY_HUMAN)):
        reply = stub.GetFrame(operator_pb2.GetFrameRequest(camera_id=CAMERA, frame_id=frame_id, quality=quality),
                              timeout=60)
        path = args.out / f"frame{frame_id}_{name}.png"
        path.write_bytes(reply.png)
        bits = reply.base_bytes + reply.residual_bytes
        print(f"  {name:7s} {path}: PSNR {psnr(decode_png(reply.png), original):.2f} dB vs the original, "
              f"{bits} B = {reply.base_bpp + reply.residual_bpp:.4f} bpp")
    print(f"  detections: {format_detections(reply.detections)}")
    channel.close()


def operators_file(workdir: Path) -> Path:
    """The cloud's operators: the demo's own, stored as a token digest (the token never leaves this process)."""
    path = workdir / "operators.json"
    digest = hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()
    path.write_text(json.dumps({"operators": {OPERATOR: {"token_sha256": digest, "role": "inspector"}}}, indent=2))
    return path


def start_web(services: LocalServices, port: int, web_port: int) -> str:
    """``icmh-web`` in front of the cloud on ``port``; returns its address once it serves."""
    ready = services.workdir / "web.port"
    ready.unlink(missing_ok=True)
    services.launch("web", "icmh.cloud.web", ["--cloud", f"{LOOPBACK}:{port}", "--listen",
                                                f"{LOOPBACK}:{web_port}", "--ready-file", str(ready)])
    services.wait_for(lambda: ready.exists() and ready.read_text().endswith("\n"), 60, "the web view to serve")
    return f"http://{LOOPBACK}:{int(ready.read_text())}/"


def announce_web(url: str) -> None:
    print(f"\ndemo: operator web view at {url}\n      log in with the operator token {OPERATOR_TOKEN}"
          f"  ({OPERATOR}, role inspector: machine and human quality; rates need an admin token)", flush=True)


def keep_running(services: LocalServices, url: str | None) -> None:
    """Serve until Ctrl-C (SIGTERM ends the demo the same way, through LocalServices)."""
    if url:
        announce_web(url)
    print("demo: still streaming; Ctrl-C stops the demo", flush=True)
    try:
        services.wait_for(lambda: False, math.inf, "Ctrl-C", poll=1.0)
    except KeyboardInterrupt:
        print("\ndemo: stopping")


def main() -> int:
    args = parse_args()
    for path, what in ((args.video, "video"), (args.detector, "detector")):
        if not path.is_file():
            sys.exit(f"demo: {what} not found: {path}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="icmh-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    weights = weights_folder(args, workdir)
    services = LocalServices(workdir)
    try:
        with services:
            print(f"demo: starting the cloud server (log: {workdir / 'cloud.log'})")
            _, port = services.start_cloud({CAMERA: TOKEN}, weights, args.detector, threads=args.threads,
                                           detections_jsonl=workdir / "detections.jsonl",
                                           extra=["--operators-file", str(operators_file(workdir))])
            url = start_web(services, port, args.web_port) if args.web else None
            if url:
                announce_web(url)
            feed = DetectionFeed(port, on_result=lambda result: print(format_result(result), flush=True),
                                 token=OPERATOR_TOKEN)
            print(f"demo: starting the edge node (log: {workdir / f'edge-{CAMERA}.log'})")
            length = ["--loop"] if args.keep_running else ["--max-frames", str(args.frames)]
            services.start_edge(CAMERA, TOKEN, port, args.video, weights, threads=args.threads, extra=[
                *length, "--fps", str(args.fps), "--width", str(args.width), "--height", str(args.height)])
            services.wait_for(lambda: len(feed.results) >= args.frames, 60 + 10 * args.frames,
                              f"{args.frames} detection results")
            inspect(args, port)
            feed.close()
            if args.keep_running:
                keep_running(services, url)
    except (ServiceError, TimeoutError) as exc:
        sys.exit(f"demo: {exc}")
    finally:
        codes = services.exit_codes
        print(f"demo: shut down ({', '.join(f'{k} exit {v}' for k, v in codes.items())}); logs in {workdir}")
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
