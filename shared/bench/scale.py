"""Scale benchmark: 1, 4, 16 ... simulated cameras against one ``cloud-server`` process on this machine.

Each configuration gets a fresh cloud on 127.0.0.1 and one process per camera, each sending ``fps`` frames/s
for ``seconds`` s. By default a camera is a :mod:`~icmh.bench.replay_edge` process: pre-encoded base and
residual layers of the video replayed through the edge node's real link code (``CloudLink`` + ``EdgeStore``)
without torch, because 16 ``edge-node`` processes each coding 640x360 frames would need far more than two
cores and would measure edge coding instead of the cloud. ``--edge node`` runs real ``edge-node`` processes.
Replayed frames are stamped when they are numbered, so their latency has no encoding time in it.

Per configuration: frames sent (numbered by the edges) / detected / dropped / duplicated, detected frames/s in
the steady window (from the last camera's first capture to the first camera's last capture), capture ->
published latency, and the cloud's CPU (% of one core) and RSS over that window. Each configuration is bounded
in time (start-up + ``seconds`` + drain); every process is stopped when it ends, also on an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from icmh.rpc import operator_pb2, operator_pb2_grpc
from icmh.service.grpc_setup import open_channel
from icmh.service.local import LOOPBACK, LocalServices, ServiceProcess

from .delivery import Delivery
from .procmon import ProcessMonitor
from .replay_edge import write_clip
from .report import figure, save_figure, write_json
from .streaming import StreamOptions, cloud_with_feed, load_codec, token, wait_detected, workspace

EDGE_KINDS = ("replay", "node")
CLIP_FRAMES = 8  # distinct frames the replayed cameras cycle through


def start_s(kind: str, cameras: int) -> float:
    """Time allowed for the cameras' processes to start and connect."""
    return 30 + 2 * cameras if kind == "replay" else 120 + 20 * cameras


def _launch_edges(services: LocalServices, options: StreamOptions, kind: str, cameras: list[str], port: int,
                  frames: int, clip: Path) -> list[ServiceProcess]:
    edges = []
    for camera in cameras:
        if kind == "replay":
            name = f"edge-{camera}"
            edges.append(services.launch(name, "icmh.bench.replay_edge", [
                "--camera-id", camera, "--cloud", f"{LOOPBACK}:{port}", "--clip", str(clip), "--fps", str(options.fps),
                "--frames", str(frames), "--data-dir", str(services.workdir / name),
            ], env={"ICMH_EDGE_TOKEN": token(camera)}))
        else:
            edges.append(services.start_edge(camera, token(camera), port, options.source, options.weights, threads=1,
                                             extra=["--loop", "--max-frames", str(frames), *options.edge_args()]))
    return edges


def steady_window(port: int, cameras: Sequence[str]) -> tuple[int, int] | None:
    """(last camera's first capture, first camera's last capture) in ns, from the cloud's frame index (which holds
    frames not detected yet); None when the cameras did not all send at the same time."""
    channel = open_channel(f"{LOOPBACK}:{port}")
    stub = operator_pb2_grpc.OperatorStub(channel)
    firsts, lasts = [], []
    try:
        for camera in cameras:
            first = stub.ListFrames(operator_pb2.ListFramesRequest(camera_id=camera, max_frame_id=1), timeout=30)
            last = stub.ListFrames(operator_pb2.ListFramesRequest(camera_id=camera, limit=1), timeout=30)
            if not first.frames or not last.frames:
                return None
            firsts.append(first.frames[0].capture_time.ToNanoseconds())
            lasts.append(last.frames[0].capture_time.ToNanoseconds())
    finally:
        channel.close()
    start, end = max(firsts), min(lasts)
    return (start, end) if end > start else None


def run_configuration(options: StreamOptions, kind: str, count: int, seconds: float, clip: Path,
                      workdir: Path) -> dict:
    """One cloud and ``count`` cameras for ``seconds``; what was delivered and what it cost the cloud."""
    cameras = [f"cam{i:02d}" for i in range(1, count + 1)]
    frames = max(1, round(seconds * options.fps))
    monitor = ProcessMonitor()
    with LocalServices(workdir) as services:
        jsonl = workdir / "detections.jsonl"
        with cloud_with_feed(services, options, cameras, jsonl) as (cloud, port, feed):
            monitor.watch("cloud", cloud.pid)
            edges = _launch_edges(services, options, kind, cameras, port, frames, clip)
            for edge in edges:
                monitor.watch(edge.name, edge.pid)
            monitor.start()
            bound = start_s(kind, count) + frames / options.fps + max(10.0, seconds)
            complete = wait_detected(services, jsonl, dict.fromkeys(cameras, frames), bound)
            monitor.stop()
            window = steady_window(port, cameras)
            services.stop(edges)
            services.stop([cloud])
            delivery = Delivery.collect({camera: workdir / f"edge-{camera}" for camera in cameras}, jsonl, feed)
    detected_fps = None
    if window is not None:
        start, end = window
        in_window = sum(1 for r in delivery.sink if start <= r["detect_ns"] <= end)
        detected_fps = round(in_window / ((end - start) / 1e9), 3)
    start_ns, end_ns = window or (None, None)
    return {
        "cameras": count, "frames_per_camera": frames, "offered_fps": round(count * options.fps, 3),
        "all_detected_in_time": complete, "time_bound_s": round(bound, 1),
        "steady_window_s": round((end_ns - start_ns) / 1e9, 3) if window else None,
        "detected_fps": detected_fps,
        "frames": delivery.counts(),
        "latency": delivery.latency(),
        "cloud": monitor.summary(["cloud"], start_ns, end_ns),
        "edges_total": monitor.summary([e.name for e in edges], start_ns, end_ns),
    }


def _values(configs: list[dict], *keys: str) -> list[float]:
    """``config[k1][k2]...`` of each configuration, NaN where missing (a gap in the plot)."""
    out = []
    for config in configs:
        value = config
        for key in keys:
            value = value[key]
        out.append(math.nan if value is None else value)
    return out


def growth(configs: list[dict]) -> dict[str, float | None]:
    """Least-squares slope per added camera of the cloud's CPU and RSS and of the latency percentiles."""
    series = {
        "cloud_cpu_percent": _values(configs, "cloud", "cpu_percent_mean"),
        "cloud_rss_mb": _values(configs, "cloud", "rss_mb_mean"),
        "latency_p50_ms": _values(configs, "latency", "capture_to_published_ms", "p50"),
        "latency_p95_ms": _values(configs, "latency", "capture_to_published_ms", "p95"),
    }
    cameras = [c["cameras"] for c in configs]
    out = {}
    for name, values in series.items():
        points = [(x, y) for x, y in zip(cameras, values, strict=True) if math.isfinite(y)]
        ok = len({x for x, _ in points}) >= 2
        out[f"{name}_per_camera"] = round(float(np.polyfit(*zip(*points, strict=True), 1)[0]), 3) if ok else None
    return out


def run_scale(options: StreamOptions, cameras: Sequence[int] = (1, 4, 16), seconds: float = 30.0,
              edge: str = "replay") -> list[Path]:
    """Every camera count in turn; returns the JSON and PNG files written."""
    options.check()
    if edge not in EDGE_KINDS:
        raise ValueError(f"--edge must be one of {EDGE_KINDS}, got {edge!r}")
    if not cameras or min(cameras) < 1 or seconds <= 0:
        raise ValueError(f"--cameras must be positive counts and --seconds > 0, got {cameras} and {seconds}")
    codec, weights = load_codec(options)
    configs = []
    with workspace(options, "scale") as workdir:
        clip = workdir / "clip"
        write_clip(clip, codec, options.source, options.size, CLIP_FRAMES, options.rate, options.residual_rate)
        for count in cameras:
            configs.append(run_configuration(options, edge, count, seconds, clip, workdir / f"{count}-cameras"))
            print(f"[scale] {count} cameras: {configs[-1]['frames']['detected']}/{configs[-1]['frames']['sent']} "
                  f"detected, cloud {configs[-1]['cloud']['cpu_percent_mean']} % CPU")
    payload = {
        "benchmark": "scale",
        "meta": options.metadata(sum(c["frames"]["sent"] for c in configs), weights, {
            "cameras": list(cameras), "seconds": seconds, "edge": edge,
            "clip_frames": CLIP_FRAMES if edge == "replay" else None}),
        "protocol": f"one cloud-server per configuration on {LOOPBACK} (fresh index, torch threads {options.threads}), "
                    f"one {'replay_edge' if edge == 'replay' else 'edge-node'} process per camera at "
                    f"{options.fps:g} fps for {seconds:g} s; detected_fps and resources over the steady window "
                    "(all cameras sending); latency = capture -> arrival on a Detections.Subscribe stream; "
                    "CPU in % of one core",
        "configurations": configs,
        "growth": growth(configs),
    }
    written = [write_json(options.out, "scale", payload)]
    written.append(save_figure(_plot(payload), options.out, "scale"))
    return written


def _plot(payload: dict):
    configs, meta = payload["configurations"], payload["meta"]
    fig, (cpu, rss, lat, fps) = figure(4, f"one cloud, N cameras at {meta['fps']:g} fps ({meta['edge']} edges, "
                                          f"{meta['frame_size']}, {meta['seconds']:g} s each)")
    x = [c["cameras"] for c in configs]
    cpu.plot(x, _values(configs, "cloud", "cpu_percent_mean"), marker="o", label="mean")
    cpu.plot(x, _values(configs, "cloud", "cpu_percent_max"), marker=".", linestyle=":", label="max (0.5 s samples)")
    cpu.set(ylabel="% of one core", title="cloud CPU")
    rss.plot(x, _values(configs, "cloud", "rss_mb_mean"), marker="o", label="mean")
    rss.plot(x, _values(configs, "cloud", "rss_mb_peak"), marker=".", linestyle=":", label="peak")
    rss.set(ylabel="MiB", title="cloud RSS")
    for key in ("p50", "p95"):
        lat.plot(x, _values(configs, "latency", "capture_to_published_ms", key), marker="o", label=key)
    lat.set(ylabel="ms (log)", title="capture -> published", yscale="log")
    fps.plot(x, [c["offered_fps"] for c in configs], linestyle="--", color="black", label="offered")
    fps.plot(x, _values(configs, "detected_fps"), marker="o", label="detected (steady window)")
    fps.set(ylabel="frames / s", title="throughput")
    for ax in (cpu, rss, lat, fps):
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel("cameras")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig
