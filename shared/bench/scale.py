"""Scale benchmark: 1, 4, 16 ... simulated cameras against 1, 2, 4 ... ``icmh-cloud`` replicas on this machine.

Each configuration (replica count x camera count) gets fresh clouds on 127.0.0.1 and one process per camera,
each sending ``fps`` frames/s for ``seconds`` s. By default a camera is a :mod:`~icmh.bench.replay_edge`
process: pre-encoded base and residual layers of the video replayed through the edge node's real link code
(``CloudLink`` + ``EdgeStore``) without torch, because 16 ``icmh-edge`` processes each coding 640x360 frames
would need far more than two cores and would measure edge coding instead of the cloud. ``--edge node`` runs real
``icmh-edge`` processes. Replayed frames are stamped when they are numbered, so their latency has no encoding
time in it.

Replicas (``replicas`` other than ``(1,)``, or a ``postgres`` server given): every configuration gets a fresh
database on that PostgreSQL server (its user must be allowed to create databases), N cloud processes sharing it
as replicas (``--replica-id``), and every camera the list of all replica addresses, rotated so that camera i
starts at replica i mod N (the edges follow the replicas' redirects from there). Without a PostgreSQL server a
single cloud uses its SQLite index, as before replicas existed.

Per configuration: frames sent (numbered by the edges) / detected / dropped / duplicated (across every replica's
JSON Lines file, and on the live feed of the first replica, which relays the others' results), detected frames/s
in the steady window (from the last camera's first capture to
the first camera's last capture), capture -> published latency, the clouds' CPU (% of one core) and RSS over that
window, in total and per replica, the detected frames/s per core of cloud CPU and, on PostgreSQL, the index
database's transactions and rows written per detected frame. Each configuration is bounded
in time (start-up + ``seconds`` + drain); every process is stopped when it ends, also on an error.

Brokers (``publish``: ``--publish`` URLs of running MQTT / NATS servers, as icmh-cloud takes them): every
configuration publishes under its own ``PREFIX/bench-<N>r-<C>c-<hex>`` / ``SUBJECT.bench-<N>r-<C>c-<hex>`` (its
own JetStream stream), so configurations never mix (:mod:`~icmh.bench.broker_capture`). An MQTT QoS 1
persistent-session subscriber on ``PREFIX/#`` runs from before the clouds start; once every frame is detected the
bench waits (at most ``BROKER_DRAIN_S``) until the brokers hold the detected frames, stops the clouds and reads the
streams. Reported per URL: messages, distinct (camera, frame), missing (in the JSON Lines files, not at the
broker), duplicates (extra copies), capture -> broker latency. The streams are deleted and the retained MQTT
statuses cleared afterwards.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from icmh.cloud.index_postgres import redact
from icmh.edge.link import addresses_starting_at
from icmh.rpc import operator_pb2, operator_pb2_grpc
from icmh.service.feed import DetectionFeed
from icmh.service.grpc_setup import open_channel
from icmh.service.local import LOOPBACK, LocalServices, ServiceProcess

from .broker_capture import BrokerCapture, scoped_url
from .delivery import Delivery, edge_frames, read_jsonl
from .procmon import ProcessMonitor
from .replay_edge import write_clip
from .report import figure, save_figure, write_json
from .streaming import StreamOptions, load_codec, token, wait_detected, workspace

EDGE_KINDS = ("replay", "node")
CLIP_FRAMES = 8  # distinct frames the replayed cameras cycle through
LEASE_S = 10.0  # camera leases of the benchmark's replicas
BROKER_DRAIN_S = 60.0  # after the last detection: time the clouds get to publish every result to the brokers


def start_s(kind: str, cameras: int) -> float:
    """Time allowed for the cameras' processes to start and connect."""
    return 30 + 2 * cameras if kind == "replay" else 120 + 20 * cameras


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of ``server_url`` (dropped afterwards): its URL."""
    import psycopg

    name = f"icmh_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def database_activity(server_url: str, database_url: str, frames: int) -> dict:
    """What the clouds asked of their index database (PostgreSQL's cumulative statistics, read once they have
    stopped): committed transactions and rows written, in total and per detected frame."""
    import psycopg

    name = urlsplit(database_url).path.strip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        commits, inserted, updated, deleted = conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = %s",
            (name,)).fetchone()
    totals = {"transactions": commits, "rows_inserted": inserted, "rows_updated": updated, "rows_deleted": deleted}
    return {**totals, "per_detected_frame": {k: round(v / frames, 2) for k, v in totals.items()} if frames else None}


def _start_clouds(services: LocalServices, options: StreamOptions, cameras: list[str], replicas: int,
                  index_url: str | None, workdir: Path,
                  publish: Sequence[str] = ()) -> list[tuple[ServiceProcess, int, Path]]:
    """``replicas`` clouds (one on SQLite without ``index_url``), each also publishing to the ``publish`` URLs:
    (process, port, JSON Lines file) each."""
    clouds = []
    outputs = [a for url in publish for a in ("--publish", url)]
    for k in range(1, replicas + 1):
        name = f"cloud-r{k}" if index_url else "cloud"
        jsonl = workdir / f"{name}.jsonl"
        replica = ["--index", index_url, "--replica-id", f"r{k}", "--lease-seconds", str(LEASE_S)] if index_url else []
        cloud, port = services.start_cloud({c: token(c) for c in cameras}, options.weights, options.detector,
                                           name=name, detections_jsonl=jsonl, threads=options.threads,
                                           extra=["--detector-imgsz", str(options.detector_imgsz),
                                                  "--insecure-open-operators", *replica,  # loopback: no tokens
                                                  *outputs])
        clouds.append((cloud, port, jsonl))
    return clouds


def _launch_edges(services: LocalServices, options: StreamOptions, kind: str, targets: dict[str, str],
                  frames: int, clip: Path) -> list[ServiceProcess]:
    """One edge per camera of ``targets`` (camera -> ``--cloud`` address list)."""
    edges = []
    for camera, cloud in targets.items():
        if kind == "replay":
            name = f"edge-{camera}"
            edges.append(services.launch(name, "icmh.bench.replay_edge", [
                "--camera-id", camera, "--cloud", cloud, "--clip", str(clip), "--fps", str(options.fps),
                "--frames", str(frames), "--data-dir", str(services.workdir / name),
            ], env={"ICMH_EDGE_TOKEN": token(camera)}))
        else:  # the later --cloud of extra replaces the single address start_edge gives
            edges.append(services.start_edge(camera, token(camera), 0, options.source, options.weights, threads=1,
                                             extra=["--loop", "--max-frames", str(frames), "--cloud", cloud,
                                                    *options.edge_args()]))
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


def _wait_published(services: LocalServices, brokers: BrokerCapture, files: Sequence[Path], timeout: float) -> bool:
    """Wait until every broker holds every result the clouds' JSON Lines files hold; False on timeout."""

    def done() -> bool:
        return brokers.caught_up({(r["camera_id"], r["frame_id"]) for path in files for r in read_jsonl(path)})

    try:
        services.wait_for(done, timeout, "the brokers to hold every detected frame", poll=0.5)
        return True
    except TimeoutError:
        return False


def run_configuration(options: StreamOptions, kind: str, count: int, seconds: float, clip: Path,
                      workdir: Path, replicas: int = 1, index_url: str | None = None,
                      publish: Sequence[str] = ()) -> dict:
    """``replicas`` clouds and ``count`` cameras for ``seconds``; what was delivered (also to the brokers of
    ``publish``, under this configuration's own prefix / subject) and what it cost the clouds."""
    cameras = [f"cam{i:02d}" for i in range(1, count + 1)]
    frames = max(1, round(seconds * options.fps))
    monitor = ProcessMonitor()
    env = {"ICMH_REPLICA_TOKEN": secrets.token_hex(16)} if index_url else {}
    with BrokerCapture(publish, f"bench-{replicas}r-{count}c-{secrets.token_hex(3)}") as brokers:
        with LocalServices(workdir, env) as services:
            clouds = _start_clouds(services, options, cameras, replicas, index_url, workdir, brokers.publish_urls)
            feed = DetectionFeed(clouds[0][1])  # one operator's feed: a replica relays the others' results
            try:
                for cloud, _, _ in clouds:
                    monitor.watch(cloud.name, cloud.pid)
                addresses = [f"{LOOPBACK}:{port}" for _, port, _ in clouds]
                targets = {c: addresses_starting_at(c, addresses, addresses[i % replicas])
                           for i, c in enumerate(cameras)}
                edges = _launch_edges(services, options, kind, targets, frames, clip)
                for edge in edges:
                    monitor.watch(edge.name, edge.pid)
                monitor.start()
                bound = start_s(kind, count) + frames / options.fps + max(10.0, seconds)
                complete = wait_detected(services, [j for _, _, j in clouds], dict.fromkeys(cameras, frames), bound)
                monitor.stop()
                window = steady_window(clouds[0][1], cameras)
                services.stop(edges)
                published = _wait_published(services, brokers, [j for _, _, j in clouds], BROKER_DRAIN_S)
                services.stop([cloud for cloud, _, _ in clouds])
            finally:
                feed.close()
        results = {name: read_jsonl(jsonl) for (name, jsonl) in ((c.name, j) for c, _, j in clouds)}
        delivery = Delivery({camera: edge_frames(workdir / f"edge-{camera}") for camera in cameras},
                            [r for rows in results.values() for r in rows],
                            list(zip(feed.results, feed.arrivals_ns, strict=False)))
        outputs = brokers.report(delivery.detected_keys(), published) if publish else None
    detected_fps = None
    if window is not None:
        start, end = window
        in_window = sum(1 for r in delivery.sink if start <= r["detect_ns"] <= end)
        detected_fps = round(in_window / ((end - start) / 1e9), 3)
    start_ns, end_ns = window or (None, None)
    cloud_names = [c.name for c, _, _ in clouds]
    cloud = monitor.summary(cloud_names, start_ns, end_ns)
    cores = (cloud["cpu_percent_mean"] or 0) / 100
    return {
        "replicas": replicas, "index": "postgresql" if index_url else "sqlite",
        "cameras": count, "frames_per_camera": frames, "offered_fps": round(count * options.fps, 3),
        "all_detected_in_time": complete, "time_bound_s": round(bound, 1),
        "steady_window_s": round((end_ns - start_ns) / 1e9, 3) if window else None,
        "detected_fps": detected_fps,
        "detected_fps_per_core": round(detected_fps / cores, 3) if detected_fps and cores else None,
        "frames": delivery.counts(),
        "latency": delivery.latency(),
        "cloud": cloud,
        "per_replica": [{"name": name, "frames_detected": len(rows),
                         "cameras": sorted({r["camera_id"] for r in rows}),
                         **monitor.summary([name], start_ns, end_ns)} for name, rows in results.items()],
        "edges_total": monitor.summary([e.name for e in edges], start_ns, end_ns),
        "brokers": outputs,
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
    """Least-squares slope per added camera of the clouds' CPU and RSS and of the latency percentiles."""
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
              edge: str = "replay", replicas: Sequence[int] = (1,), postgres: str | None = None,
              publish: Sequence[str] = ()) -> list[Path]:
    """Every replica count and camera count in turn (the clouds also publishing to the brokers of ``publish``);
    returns the JSON and PNG files written."""
    options.check()
    if edge not in EDGE_KINDS:
        raise ValueError(f"--edge must be one of {EDGE_KINDS}, got {edge!r}")
    if not cameras or min(cameras) < 1 or seconds <= 0:
        raise ValueError(f"--cameras must be positive counts and --seconds > 0, got {cameras} and {seconds}")
    if not replicas or min(replicas) < 1:
        raise ValueError(f"--replicas must be positive counts, got {replicas}")
    if tuple(replicas) != (1,) and not postgres:
        raise ValueError("replicas share a PostgreSQL index: give --postgres postgresql://USER@HOST:PORT/DB "
                         "(or $ICMH_BENCH_POSTGRES), a user that may create databases")
    for url in publish:
        scoped_url(url, "bench")  # an MQTT or NATS output URL, before anything starts
    codec, weights = load_codec(options)
    configs = []
    with workspace(options, "scale") as workdir:
        clip = workdir / "clip"
        write_clip(clip, codec, options.source, options.size, CLIP_FRAMES, options.rate, options.residual_rate)
        for n in replicas:
            for count in cameras:
                folder = workdir / f"{n}-replicas-{count}-cameras"
                if postgres:
                    with fresh_database(postgres) as index_url:
                        configs.append(run_configuration(options, edge, count, seconds, clip, folder, n, index_url,
                                                         publish))
                        configs[-1]["index_activity"] = database_activity(postgres, index_url,
                                                                          configs[-1]["frames"]["detected"])
                else:
                    configs.append(run_configuration(options, edge, count, seconds, clip, folder, publish=publish))
                c = configs[-1]
                at = "".join(f", {b['kind']} {b['distinct']} (missing {b['missing']}, duplicates {b['duplicates']})"
                             for b in (c["brokers"] or {}).values())
                print(f"[scale] {n} replica(s), {count} cameras: {c['frames']['detected']}/{c['frames']['sent']} "
                      f"detected, {c['detected_fps']} frames/s, clouds {c['cloud']['cpu_percent_mean']} % CPU{at}")
    by_replicas = {n: [c for c in configs if c["replicas"] == n] for n in replicas}
    payload = {
        "benchmark": "scale",
        "meta": options.metadata(sum(c["frames"]["sent"] for c in configs), weights, {
            "cameras": list(cameras), "replicas": list(replicas), "seconds": seconds, "edge": edge,
            "index": "postgresql" if postgres else "sqlite", "lease_seconds": LEASE_S if postgres else None,
            "clip_frames": CLIP_FRAMES if edge == "replay" else None, "publish": [redact(u) for u in publish]}),
        "protocol": f"per configuration: N cloud-server replicas on {LOOPBACK} ("
                    + ("sharing a fresh PostgreSQL database, " if postgres else "one, fresh SQLite index, ")
                    + f"torch threads {options.threads} each), one "
                    f"{'replay_edge' if edge == 'replay' else 'edge-node'} process per camera at {options.fps:g} fps "
                    f"for {seconds:g} s, camera i starting at replica i mod N; detected_fps and resources over the "
                    "steady window (all cameras sending); latency = capture -> arrival on a Detections.Subscribe "
                    "stream of replica 1 (which relays the other replicas' results); CPU in % of one core, summed "
                    "over the replicas"
                    + ("; brokers: each configuration publishes to its own MQTT topic prefix PREFIX/bench-<N>r-<C>c-"
                       "<hex> and NATS subject SUBJECT.bench-<N>r-<C>c-<hex> (its own JetStream stream, deleted "
                       "afterwards); an MQTT QoS 1 persistent-session subscriber on PREFIX/# from before the clouds "
                       f"start; after the last detection the bench waits up to {BROKER_DRAIN_S:g} s for the brokers "
                       "to hold every detected frame, stops the clouds, then reads the streams; missing = in the "
                       "JSON Lines files but not at the broker, duplicates = extra copies of a (camera, frame); "
                       "capture_to_broker_ms = capture -> arrival at the MQTT subscriber / JetStream's storage time"
                       if publish else ""),
        "configurations": configs,
        "growth": growth(by_replicas[replicas[0]]) if len(replicas) == 1 else None,
        "growth_per_replicas": {str(n): growth(group) for n, group in by_replicas.items()},
    }
    written = [write_json(options.out, "scale", payload)]
    written.append(save_figure(_plot(payload), options.out, "scale"))
    return written


def _plot(payload: dict):
    configs, meta = payload["configurations"], payload["meta"]
    fig, (cpu, rss, lat, fps) = figure(4, f"N replicas, cameras at {meta['fps']:g} fps ({meta['edge']} edges, "
                                          f"{meta['frame_size']}, {meta['seconds']:g} s each)")
    counts = sorted({c["cameras"] for c in configs})
    for n in meta.get("replicas", [1]):
        group = [c for c in configs if c.get("replicas", 1) == n]
        x, tag = [c["cameras"] for c in group], f"{n} repl."
        (line,) = cpu.plot(x, _values(group, "cloud", "cpu_percent_mean"), marker="o", label=f"{tag} mean")
        color = line.get_color()
        rss.plot(x, _values(group, "cloud", "rss_mb_mean"), marker="o", color=color, label=f"{tag} mean")
        lat.plot(x, _values(group, "latency", "capture_to_published_ms", "p95"), marker="o", color=color,
                 label=f"{tag} p95")
        lat.plot(x, _values(group, "latency", "capture_to_published_ms", "p50"), marker=".", linestyle=":",
                 color=color, label=f"{tag} p50")
        fps.plot(x, _values(group, "detected_fps"), marker="o", color=color, label=f"{tag} detected")
    fps.plot(counts, [n * meta["fps"] for n in counts], linestyle="--", color="black", label="offered")
    cpu.set(ylabel="% of one core (all replicas)", title="cloud CPU")
    rss.set(ylabel="MiB (all replicas)", title="cloud RSS")
    lat.set(ylabel="ms (log)", title="capture -> published", yscale="log")
    fps.set(ylabel="frames / s", title="throughput (steady window)")
    for ax in (cpu, rss, lat, fps):
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(v) for v in counts])
        ax.set_xlabel("cameras")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig
