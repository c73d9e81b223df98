"""``bench service`` and ``bench scale`` end to end on loopback: tiny random codecs, one camera, a few frames."""

from __future__ import annotations

import json
import math
from pathlib import Path

import psutil
import pytest

from icmh.bench.cli import main
from icmh.bench.delivery import Delivery
from icmh.bench.service import spread
from icmh.rpc import common_pb2

FAST = ["--size", "320x192", "--detector-imgsz", "320", "--threads", "1", "--fps", "4"]


def _finite(*values: object) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _load(path: Path, image_count: int) -> dict:
    assert path.with_suffix(".png").stat().st_size > 0
    data = json.loads(path.read_text())
    meta = data["meta"]
    assert meta["command"].startswith("python -m icmh.bench.cli") and meta["image_count"] == image_count
    assert meta["git_commit"] and meta["machine"]["cores"] >= 1 and "torch" in meta["versions"]
    assert set(meta["weights"]) == {"base", "pr"} and meta["frame_size"] == "320x192"
    return data


def _delivered_once(frames: dict, count: int) -> None:
    assert frames["sent"] == frames["acked_by_cloud"] == frames["detected"] == frames["published_on_feed"] == count
    assert frames["dropped"] == frames["unexpected"] == frames["errors"] == 0
    assert frames["duplicated_in_sink"] == frames["duplicated_on_feed"] == 0


def _no_children_left() -> None:
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.slow
def test_service(tiny_weights: Path, shared_dir: Path, tmp_path: Path) -> None:
    argv = ["service", "--weights", str(tiny_weights), "--shared", str(shared_dir), "--out", str(tmp_path),
            "--frames", "4", "--inspect", "2", *FAST]
    assert main(argv) == 0
    _no_children_left()
    data = _load(tmp_path / "service.json", 4)
    _delivered_once(data["frames"], 4)
    assert data["frames"]["received_by_cloud"] == 4 and data["frames"]["all_detected_in_time"]
    for name in ("capture_to_published_ms", "capture_to_detected_ms"):
        latency = data["latency"][name]
        assert latency["count"] == 4 and _finite(latency["p50"], latency["p95"], latency["p99"])
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    get = data["get_frame"]
    assert get["frames"] == [1, 4]
    for quality in ("machine", "human"):
        assert get[quality]["ok"] == 2 and not get[quality]["failed"]
        assert _finite(get[quality]["ms"]["p50"], get[quality]["ms"]["p95"])
    sizes = data["bytes_per_frame"]
    for layer in ("base", "residual", "total"):
        assert sizes[layer]["bytes"]["mean"] > 0 and _finite(sizes[layer]["bpp_mean"])
    assert sizes["residual_fetched"]["mean"] == sizes["residual"]["bytes"]["mean"]
    assert sizes["wire_message_bytes"]["base_packet"]["mean"] > sizes["base"]["bytes"]["mean"]
    for process in ("cloud", "edge"):
        assert _finite(data["resources"][process]["cpu_percent_mean"], data["resources"][process]["rss_mb_peak"])


@pytest.mark.slow
def test_scale(tiny_weights: Path, shared_dir: Path, tmp_path: Path) -> None:
    argv = ["scale", "--weights", str(tiny_weights), "--shared", str(shared_dir), "--out", str(tmp_path),
            "--cameras", "1", "--seconds", "1.5", *FAST]
    assert main(argv) == 0
    _no_children_left()
    data = _load(tmp_path / "scale.json", 6)
    assert data["meta"]["edge"] == "replay" and data["meta"]["cameras"] == [1]
    (config,) = data["configurations"]
    assert config["cameras"] == 1 and config["frames_per_camera"] == 6 and config["all_detected_in_time"]
    _delivered_once(config["frames"], 6)
    latency = config["latency"]["capture_to_published_ms"]
    assert latency["count"] == 6 and _finite(latency["p50"], latency["p95"])
    assert _finite(config["detected_fps"], config["steady_window_s"], config["cloud"]["cpu_percent_mean"],
                   config["cloud"]["rss_mb_peak"], config["edges_total"]["rss_mb_peak"])
    assert config["cloud"]["rss_mb_peak"] > 100  # torch + YOLO: the real process was measured
    assert set(data["growth"]) >= {"cloud_cpu_percent_per_camera", "latency_p95_ms_per_camera"}


def test_duplicates_and_drops_are_counted() -> None:
    def result(frame_id: int) -> common_pb2.DetectionResult:
        out = common_pb2.DetectionResult(camera_id="c", frame_id=frame_id)
        out.capture_time.FromNanoseconds(1_000_000)
        return out

    sink = [{"camera_id": "c", "frame_id": i, "capture_ns": 1_000_000, "detect_ns": 3_000_000} for i in (1, 2, 2)]
    delivery = Delivery({"c": (3, 1)}, sink, [(result(1), 2_000_000), (result(1), 4_000_000)])
    counts = delivery.counts()
    assert (counts["sent"], counts["acked_by_cloud"], counts["detected"], counts["dropped"]) == (3, 2, 2, 1)
    assert (counts["duplicated_in_sink"], counts["duplicated_on_feed"], counts["published_on_feed"]) == (1, 1, 1)
    assert delivery.latency()["capture_to_published_ms"]["p50"] == pytest.approx(2.0)
    assert delivery.latency()["capture_to_detected_ms"]["max"] == pytest.approx(2.0)


def test_inspected_frames_are_spread_over_the_run() -> None:
    assert spread(list(range(1, 11)), 3) == [1, 5, 10]  # positions 0, 4.5 -> 4 (half to even), 9
    assert spread([1, 2], 5) == [1, 2] and spread([], 3) == [] and spread([4], 0) == []


def test_parser_defaults() -> None:
    import argparse

    from icmh.bench.cli import _stream_options, add_bench_parser
    from icmh.paths import data_root

    parser = argparse.ArgumentParser(prog="icmh")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "scale", "--cameras", "2,8"])
    assert (args.cameras, args.seconds, args.fps, args.edge, args.size) == ((2, 8), 30.0, 1.0, "replay", (640, 360))
    args = parser.parse_args(["bench", "service", "--inspect", "3"])
    assert (args.frames, args.inspect, args.fps) == (60, 3, 5.0)
    options = _stream_options(args)
    assert options.source == data_root() / "data" / "traffic" / "cvtrafficcam_street.mp4"
    assert options.detector == data_root() / "models" / "yolov8n.pt" and options.workdir is None
