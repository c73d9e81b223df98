"""Service benchmark: one camera through the real gRPC service on 127.0.0.1, end to end.

An ``icmh-cloud`` and an ``icmh-edge`` process are started as ``deploy/demo.py`` starts them (fresh data
folders, metrics endpoints off). The edge codes ``frames`` frames of the video at ``fps``; the benchmark waits
until the cloud's JSON Lines sink holds every one (or a time bound passes), then asks the Operator API for
K of them, spread over the run, in MACHINE and then HUMAN quality (each request decodes: the cloud's PNG cache
is keyed by quality and these are first requests). Reported: capture -> published latency, GetFrame latencies,
bytes per frame and layer (payload and protobuf message on the wire), frames sent / detected / duplicated, and
the CPU and memory of both processes.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from icmh.rpc import edge_pb2, operator_pb2, operator_pb2_grpc
from icmh.service.grpc_setup import open_channel
from icmh.service.local import LOOPBACK, LocalServices

from .delivery import Delivery, stats
from .procmon import ProcessMonitor
from .report import figure, save_figure, write_json
from .streaming import StreamOptions, cloud_with_feed, load_codec, token, wait_detected, workspace

CAMERA = "bench-cam"
GRPC_PREFIX_BYTES = 5  # compressed flag + length before every gRPC message
EDGE_START_S = 120.0  # torch import and codec load on a busy machine
DRAIN_S = 60.0
MAX_FRAMES = 10_000  # one ListFrames page
QUALITIES = {"machine": operator_pb2.QUALITY_MACHINE, "human": operator_pb2.QUALITY_HUMAN}


def message_bytes(message: edge_pb2.EdgeMessage | edge_pb2.CloudMessage) -> int:
    """Bytes of a message in a gRPC stream: protobuf encoding + the 5-byte prefix (HTTP/2 and TCP not counted)."""
    return message.ByteSize() + GRPC_PREFIX_BYTES


def wire_bytes(info: operator_pb2.FrameInfo) -> dict[str, int]:
    """Stream messages of one frame, rebuilt from its index entry (sizes only depend on field lengths)."""
    base = edge_pb2.BasePacket(frame_id=info.frame_id, capture_time=info.capture_time,
                               base_layer=bytes(info.base_bytes), rate=info.base_rate,
                               residual_bytes=info.residual_bytes)
    residual = edge_pb2.ResidualResponse(request_id=info.frame_id, frame_id=info.frame_id,
                                         status=edge_pb2.ResidualResponse.STATUS_OK,
                                         residual_layer=bytes(info.residual_bytes))
    return {
        "base_packet": message_bytes(edge_pb2.EdgeMessage(base=base)),
        "ack": message_bytes(edge_pb2.CloudMessage(ack=edge_pb2.Ack(frame_id=info.frame_id,
                                                                    status=edge_pb2.Ack.STATUS_ACCEPTED))),
        "residual_request": message_bytes(edge_pb2.CloudMessage(residual_request=edge_pb2.ResidualRequest(
            request_id=info.frame_id, frame_id=info.frame_id))),
        "residual_response": message_bytes(edge_pb2.EdgeMessage(residual=residual)),
    }


def spread(ids: list[int], count: int) -> list[int]:
    """``count`` of ``ids`` evenly spaced from the first to the last."""
    if count <= 0 or not ids:
        return []
    return sorted({ids[int(i)] for i in np.linspace(0, len(ids) - 1, min(count, len(ids))).round()})


def get_frame(stub: operator_pb2_grpc.OperatorStub, frame_id: int, quality: str) -> dict:
    """One GetFrame request: latency, status and the sizes the reply reports."""
    request = operator_pb2.GetFrameRequest(camera_id=CAMERA, frame_id=frame_id, quality=QUALITIES[quality])
    start = time.perf_counter()
    try:
        reply = stub.GetFrame(request, timeout=60)
        status, sizes = "OK", {"png_bytes": len(reply.png), "base_bytes": reply.base_bytes,
                               "residual_bytes": reply.residual_bytes}
    except grpc.RpcError as exc:
        status, sizes = exc.code().name, {}
    return {"frame_id": frame_id, "quality": quality, "ms": 1000 * (time.perf_counter() - start), "status": status,
            **sizes}


def inspect_frames(stub: operator_pb2_grpc.OperatorStub, detected: list[int], count: int) -> list[dict]:
    """GetFrame MACHINE then HUMAN for ``count`` of the ``detected`` frames, after one untimed request of each
    quality on another frame when there is one (first use of the decoders)."""
    chosen = spread(detected, count)
    warm = next((i for i in detected if i not in chosen), None)
    if warm is not None and chosen:
        for quality in QUALITIES:
            get_frame(stub, warm, quality)
    return [get_frame(stub, frame_id, quality) for frame_id in chosen for quality in QUALITIES]


def _get_frame_summary(timings: list[dict]) -> dict:
    out = {}
    for name in QUALITIES:
        mine = [t for t in timings if t["quality"] == name]
        ok = [t for t in mine if t["status"] == "OK"]
        out[name] = {"ms": stats((t["ms"] for t in ok), (50, 95)), "ok": len(ok),
                     "failed": dict(Counter(t["status"] for t in mine if t["status"] != "OK"))}
    machine, human = out["machine"]["ms"]["p50"], out["human"]["ms"]["p50"]
    out["human_minus_machine_p50_ms"] = round(human - machine, 3) if human is not None and machine is not None else None
    return out


def _bytes_summary(frames: list[operator_pb2.FrameInfo], timings: list[dict]) -> dict:
    if not frames:
        return {}
    pixels = frames[0].width * frames[0].height
    wire = [wire_bytes(f) for f in frames]
    layers = {"base": [f.base_bytes for f in frames], "residual": [f.residual_bytes for f in frames],
              "total": [f.base_bytes + f.residual_bytes for f in frames]}
    out: dict = {"pixels": pixels}
    for layer, sizes in layers.items():
        out[layer] = {"bytes": stats(sizes, (50,)), "bpp_mean": round(8 * float(np.mean(sizes)) / pixels, 5)}
    out["residual_fetched"] = stats((t["residual_bytes"] for t in timings if t["quality"] == "human"
                                     and t["status"] == "OK"), (50,))
    out["wire_message_bytes"] = {k: stats((w[k] for w in wire), (50,)) for k in wire[0]}
    return out


def _capture_span(frames: list[operator_pb2.FrameInfo]) -> tuple[int | None, int | None]:
    """First and last capture time (ns) of the streamed frames: the window the resources are averaged over."""
    if not frames:
        return None, None
    return frames[0].capture_time.ToNanoseconds(), frames[-1].capture_time.ToNanoseconds()


def run_service(options: StreamOptions, frames: int = 60, inspect: int = 10) -> list[Path]:
    """Stream ``frames`` frames through the service and inspect ``inspect`` of them; returns the files written."""
    options.check()
    if not 1 <= frames <= MAX_FRAMES or inspect < 0:
        raise ValueError(f"--frames must be in 1..{MAX_FRAMES} and --inspect >= 0, got {frames} and {inspect}")
    _, weights = load_codec(options)
    monitor = ProcessMonitor()
    with workspace(options, "service") as workdir, LocalServices(workdir) as services:
        jsonl = workdir / "detections.jsonl"
        with cloud_with_feed(services, options, [CAMERA], jsonl) as (cloud, port, feed):
            monitor.watch("cloud", cloud.pid)
            edge = services.start_edge(CAMERA, token(CAMERA), port, options.source, options.weights,
                                       threads=options.threads,
                                       extra=["--max-frames", str(frames), *options.edge_args()])
            monitor.watch("edge", edge.pid)
            monitor.start()
            complete = wait_detected(services, jsonl, {CAMERA: frames}, EDGE_START_S + frames / options.fps + DRAIN_S)
            monitor.stop()
            channel = open_channel(f"{LOOPBACK}:{port}")
            stub = operator_pb2_grpc.OperatorStub(channel)
            stored = list(stub.ListFrames(operator_pb2.ListFramesRequest(camera_id=CAMERA, limit=MAX_FRAMES),
                                          timeout=60).frames)[::-1]
            timings = inspect_frames(stub, [f.frame_id for f in stored if f.detected], inspect)
            channel.close()
            services.stop([edge])
            services.stop([cloud])
            delivery = Delivery.collect({CAMERA: workdir / edge.name}, jsonl, feed)

    published = dict(zip((r.frame_id for r, _ in delivery.feed), delivery.published_ms(), strict=True))
    payload = {
        "benchmark": "service",
        "meta": options.metadata(frames, weights, {"frames": frames, "inspect": inspect, "camera": CAMERA}),
        "protocol": f"icmh-cloud and icmh-edge processes on {LOOPBACK}, fresh data folders; {frames} frames at "
                    f"{options.fps:g} fps; latency from the edge's capture time (before encoding) to the arrival "
                    "on a Detections.Subscribe stream (published) or to the cloud's detect time (JSONL sink); "
                    "GetFrame timed from this client after streaming, MACHINE then HUMAN per inspected frame, after "
                    "one untimed request of each quality on another frame; "
                    "wire bytes = protobuf message + 5-byte gRPC prefix (HTTP/2 and TCP headers not counted); "
                    "CPU in % of one core and RSS over the streaming window (first to last capture)",
        "frames": {"requested": frames, "received_by_cloud": len(stored), "all_detected_in_time": complete,
                   **delivery.counts()},
        "latency": delivery.latency(),
        "get_frame": {"frames": sorted({t["frame_id"] for t in timings}), **_get_frame_summary(timings)},
        "bytes_per_frame": _bytes_summary(stored, timings),
        "resources": {name: monitor.summary([name], *_capture_span(stored)) for name in ("cloud", "edge")},
        "per_frame": [{"frame_id": f.frame_id, "base_bytes": f.base_bytes, "residual_bytes": f.residual_bytes,
                       "capture_to_published_ms": round(published[f.frame_id], 3) if f.frame_id in published else None}
                      for f in stored],
        "get_frame_requests": [{k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()} for t in timings],
    }
    written = [write_json(options.out, "service", payload)]
    written.append(save_figure(_plot(payload), options.out, "service"))
    return written


def _plot(payload: dict):
    fig, (lat, get, size) = figure(3, f"service on loopback: {payload['meta']['frame_size']}, "
                                      f"{payload['meta']['fps']:g} fps, {payload['frames']['detected']}/"
                                      f"{payload['frames']['sent']} frames detected")
    rows = [r for r in payload["per_frame"] if r["capture_to_published_ms"] is not None]
    lat.plot([r["frame_id"] for r in rows], [r["capture_to_published_ms"] for r in rows], marker=".")
    for key, style in (("p50", "--"), ("p95", ":")):
        value = payload["latency"]["capture_to_published_ms"][key]
        if value is not None:
            lat.axhline(value, linestyle=style, color="black", linewidth=1, label=f"{key} {value:.0f} ms")
    lat.set(xlabel="frame id", ylabel="ms", title="capture -> published")
    lat.legend(fontsize=7)
    names = list(QUALITIES)
    for offset, key in ((-0.2, "p50"), (0.2, "p95")):
        values = [payload["get_frame"][n]["ms"][key] or 0 for n in names]
        get.bar(np.arange(len(names)) + offset, values, width=0.4, label=key)
    get.set_xticks(range(len(names)), [f"GetFrame {n.upper()}" for n in names])
    get.set(ylabel="ms", title=f"operator requests ({len(payload['get_frame']['frames'])} frames)")
    get.legend(fontsize=7)
    ids = [r["frame_id"] for r in payload["per_frame"]]
    base = [r["base_bytes"] for r in payload["per_frame"]]
    size.bar(ids, base, label="base (sent)")
    size.bar(ids, [r["residual_bytes"] for r in payload["per_frame"]], bottom=base, label="residual (kept on edge)")
    size.set(xlabel="frame id", ylabel="bytes", title="layer bytes per frame")
    size.legend(fontsize=7)
    return fig
