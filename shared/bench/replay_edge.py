"""A simulated camera for ``icmh bench scale``: pre-encoded frames replayed through the edge node's real link.

:func:`write_clip` codes a few frames of a video once (base + residual layer, and the ``Hello`` naming the
codec). Each simulated camera is then a small process, ``python -m icmh.bench.replay_edge``, that does what
an ``icmh-edge`` does minus the camera and the codec: every 1/fps seconds the next clip frame gets a frame id
in a real :class:`~icmh.edge.store.EdgeStore` (capture time = now) and goes out through the edge's own
:class:`~icmh.edge.link.CloudLink` (Hello, window of unacked packets, acks, resends after a reconnect, residual
requests answered). It imports neither torch nor OpenCV, so many fit on one small machine. After ``--frames``
frames it keeps the link up until SIGTERM / SIGINT, like ``edge-node --max-frames``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from icmh.edge.link import CloudLink, LinkSettings
from icmh.edge.metrics import EdgeMetrics
from icmh.edge.rate_control import RateControl
from icmh.edge.store import EdgeStore, OutboxFull
from icmh.rpc import edge_pb2
from icmh.service.process import configure_logging, on_termination

if TYPE_CHECKING:
    from icmh.codec.api import ScalableCodec

log = logging.getLogger("icmh.bench.replay_edge")


@dataclass(frozen=True)
class Clip:
    hello: edge_pb2.Hello  # codec identity and frame size; camera id and token left empty
    rate: float
    residual_rate: float
    layers: list[tuple[bytes, bytes]]  # (base, residual) per frame


def write_clip(folder: Path, codec: ScalableCodec, source: str | Path, size: tuple[int, int], count: int,
               rate: float, residual_rate: float) -> Clip:
    """Code the first ``count`` frames of ``source`` at ``size`` into ``folder``; returns the clip."""
    from icmh.edge.node import make_hello
    from icmh.edge.source import FrameSource

    folder.mkdir(parents=True, exist_ok=True)
    frames = FrameSource(str(source), size=size, max_frames=count)
    try:
        layers = []
        for frame in frames.frames(threading.Event()):
            base = codec.encode_base(frame.image, rate)
            layers.append((base.data, codec.encode_residual(frame.image, base, residual_rate)))
    finally:
        frames.close()
    for i, (base, residual) in enumerate(layers):
        (folder / f"{i:04d}.base").write_bytes(base)
        (folder / f"{i:04d}.residual").write_bytes(residual)
    hello = make_hello("", "", codec, *size)
    (folder / "hello.pb").write_bytes(hello.SerializeToString())
    (folder / "clip.json").write_text(json.dumps({"frames": len(layers), "rate": rate, "residual_rate": residual_rate,
                                                  "source": str(source), "size": list(size)}, indent=2) + "\n")
    return Clip(hello, rate, residual_rate, layers)


def load_clip(folder: Path) -> Clip:
    info = json.loads((folder / "clip.json").read_text())
    layers = [((folder / f"{i:04d}.base").read_bytes(), (folder / f"{i:04d}.residual").read_bytes())
              for i in range(info["frames"])]
    if not layers:
        raise ValueError(f"clip {folder} holds no frames")
    return Clip(edge_pb2.Hello.FromString((folder / "hello.pb").read_bytes()), info["rate"], info["residual_rate"],
                layers)


def replay(clip: Clip, store: EdgeStore, link: CloudLink, fps: float, frames: int, stop: threading.Event) -> int:
    """Number ``frames`` clip frames at ``fps`` (no burst after falling behind); returns how many were stored."""
    interval, next_slot, stored = 1.0 / fps, time.monotonic(), 0
    for i in range(frames):
        if stop.wait(max(0.0, next_slot - time.monotonic())):
            break
        next_slot = max(next_slot, time.monotonic()) + interval
        base, residual = clip.layers[i % len(clip.layers)]
        try:
            store.add_frame(time.time_ns(), clip.rate, base, residual)
        except OutboxFull as exc:
            log.warning("frame skipped: %s", exc)
            continue
        stored += 1
        link.notify()
    return stored


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m icmh.bench.replay_edge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--camera-id", required=True)
    p.add_argument("--token", default=os.environ.get("ICMH_EDGE_TOKEN"), help="default: $ICMH_EDGE_TOKEN")
    p.add_argument("--cloud", required=True, help="cloud server host:port (replicas: host:port,host:port,...)")
    p.add_argument("--clip", type=Path, required=True, help="folder written by write_clip")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--frames", type=int, required=True, help="frames to number and send")
    p.add_argument("--data-dir", type=Path, required=True, help="folder of edge.db")
    p.add_argument("--window", type=int, default=32, help="base packets in flight without an ack")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    if not args.token or args.fps <= 0 or args.frames < 1:
        print("replay_edge: error: needs a token, --fps > 0 and --frames >= 1", file=sys.stderr)
        return 2
    clip = load_clip(args.clip)
    clip.hello.camera_id, clip.hello.token = args.camera_id, args.token
    store = EdgeStore(args.data_dir / "edge.db")
    link = CloudLink(LinkSettings(args.cloud, window=args.window, backoff_min_s=0.1, backoff_max_s=2.0), clip.hello,
                     store, RateControl(clip.rate, clip.residual_rate), EdgeMetrics())
    stop = threading.Event()

    def terminate() -> None:
        stop.set()
        link.cancel()

    on_termination(terminate)
    thread = threading.Thread(target=link.run, args=(stop,), name="edge-link", daemon=True)
    thread.start()
    while not link.sessions and thread.is_alive() and not stop.wait(0.05):
        pass  # capture starts once the cloud has welcomed this edge
    if link.sessions:
        log.info("camera %s: %d frames stored", args.camera_id, replay(clip, store, link, args.fps, args.frames, stop))
    while thread.is_alive() and not stop.wait(0.5):
        pass  # keep answering residual requests until told to stop
    link.cancel()
    thread.join(10)
    store.close()
    return 2 if link.error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
