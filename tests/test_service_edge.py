"""Edge node parts on their own: the durable store, frame sources, rate control, reconnect backoff, CLI errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from service_support import FRAME_SIZE, VIDEO, wait_for

from icmh.edge import cli
from icmh.edge.link import Backoff
from icmh.edge.rate_control import RateControl
from icmh.edge.source import FrameSource, SourceError
from icmh.edge.store import EdgeStore, OutboxFull, StoreLimits


def test_store_numbers_frames_and_survives_reopening(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge.db")
    ids = [store.add_frame(1000 + i, 0.5, b"base%d" % i, b"res%d" % i) for i in range(3)]
    assert ids == [1, 2, 3]
    store.acknowledge(1)
    store.close()
    store = EdgeStore(tmp_path / "edge.db")
    assert store.next_pending(0).frame_id == 2 and store.next_pending(2).frame_id == 3
    assert store.next_pending(3) is None
    pending = store.next_pending(0)
    assert (pending.capture_ns, pending.base, pending.residual_bytes) == (1001, b"base1", 4)
    assert store.residual(1) == b"res0"  # residuals stay after the base layer's ack
    assert store.add_frame(2000, 0.5, b"b", None) == 4 and store.residual(4) is None
    store.close()


def test_outbox_is_bounded_and_nothing_leaves_it_without_an_ack(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge.db", StoreLimits(outbox_frames=2))
    store.add_frame(1, 0.5, b"a", b"r")
    store.add_frame(2, 0.5, b"b", b"r")
    assert not store.has_room()
    with pytest.raises(OutboxFull):
        store.add_frame(3, 0.5, b"c", b"r")
    assert store.outbox_usage().frames == 2 and store.next_frame_id() == 3  # the refused frame took no id
    store.acknowledge(1)
    assert store.add_frame(3, 0.5, b"c", b"r") == 3
    bytes_limited = EdgeStore(tmp_path / "b.db", StoreLimits(outbox_bytes=10))
    bytes_limited.add_frame(1, 0.5, b"x" * 8, None)
    assert not bytes_limited.has_room(3) and bytes_limited.has_room(2)


def test_residual_store_evicts_oldest_by_size_and_by_age(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge.db", StoreLimits(residual_bytes=25))
    for i in range(4):
        store.add_frame(i, 0.5, b"b", bytes([i]) * 10)
    assert [store.residual(i) is not None for i in (1, 2, 3, 4)] == [False, False, True, True]
    assert store.residual_usage().bytes == 20
    aged = EdgeStore(tmp_path / "aged.db", StoreLimits(residual_age_s=0.5))
    aged.add_frame(0, 0.5, b"b", b"r")
    assert aged.residual(1) == b"r"
    wait_for(lambda: aged.residual(1) is None, timeout=10, what="the residual to age out")


def test_sequence_continues_after_the_clouds_last_frame_only_for_an_empty_outbox(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge.db")
    assert store.align_sequence(41) and store.next_frame_id() == 42
    assert not store.align_sequence(10) and store.next_frame_id() == 42  # never backwards
    store.add_frame(1, 0.5, b"b", None)
    assert not store.align_sequence(100) and store.next_frame_id() == 43  # pending frames keep their ids


def test_image_folder_source_gives_rgb_frames_of_one_size_and_loops(tmp_path: Path) -> None:
    blue = np.zeros((40, 60, 3), np.uint8)
    blue[..., 0] = 255  # BGR on disk
    cv2.imwrite(str(tmp_path / "a.png"), blue)
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((30, 20, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    source = FrameSource(str(tmp_path), loop=True, max_frames=5)
    assert source.kind == "folder" and source.open() == (60, 40)
    frames = list(source.frames(threading.Event()))
    assert len(frames) == 5 and all(f.image.shape == (40, 60, 3) for f in frames)
    assert tuple(frames[0].image[0, 0]) == (0, 0, 255) and tuple(frames[2].image[0, 0]) == (0, 0, 255)
    assert [f.capture_ns for f in frames] == sorted(f.capture_ns for f in frames)


def test_video_source_resizes_ends_and_caps_the_frame_rate(shared_dir: Path) -> None:
    source = FrameSource(str(shared_dir / VIDEO), size=FRAME_SIZE, fps=25.0, max_frames=6)
    start = time.monotonic()
    frames = list(source.frames(threading.Event()))
    elapsed = time.monotonic() - start
    source.close()
    assert len(frames) == 6 and frames[0].image.shape == (FRAME_SIZE[1], FRAME_SIZE[0], 3)
    assert elapsed >= 5 / 25.0 * 0.9, f"6 frames at 25 fps took only {elapsed:.3f}s"
    stop = threading.Event()
    stop.set()
    assert list(FrameSource(str(shared_dir / VIDEO)).frames(stop)) == []


def test_bad_sources_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither"):
        FrameSource(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="no images"):
        FrameSource(str(tmp_path)).open()
    (tmp_path / "fake.mp4").write_bytes(b"not a video")
    with pytest.raises(SourceError):
        FrameSource(str(tmp_path / "fake.mp4")).open()


def test_rate_control_follows_a_bandwidth_target() -> None:
    rates = RateControl(base_rate=0.9, target_kbps=20.0)
    now = 0
    for _ in range(200):  # synthetic codec: 10 fps, base bytes grow with the rate
        base = rates.current.base
        rates.observe(int(100 + 900 * base), now)
        now += 100_000_000
    measured = rates.measured_kbps()
    assert measured == pytest.approx(20.0, rel=0.1), (measured, rates.current)
    assert rates.current.base == pytest.approx((20_000 / 8 / 10 - 100) / 900, abs=0.05)


def test_rate_control_validates_and_applies_partial_changes() -> None:
    rates = RateControl(0.5, 0.4)
    assert rates.apply(base_rate=0.2).residual == 0.4
    with pytest.raises(ValueError):
        rates.apply(base_rate=0.1, residual_rate=2.0)
    assert rates.current.base == 0.2  # nothing applied from the rejected change
    fixed = RateControl(0.5)
    fixed.observe(10_000, 0)
    fixed.observe(10_000, 10**8)
    assert fixed.current.base == 0.5  # no target: the rate stays


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.next() for _ in range(6)]
    assert 0.4 <= delays[0] <= 0.6 and 0.8 <= delays[1] <= 1.2 and all(3.2 <= d <= 4.8 for d in delays[3:])
    backoff.reset()
    assert backoff.next() <= 0.6


def test_cli_reports_bad_input(capsys: pytest.CaptureFixture, tmp_path: Path, tiny_weights: Path,
                               shared_dir: Path) -> None:
    base = ["--camera-id", "c", "--token", "t", "--cloud", "127.0.0.1:1", "--data-dir", str(tmp_path),
            "--weights", str(tiny_weights)]
    video = str(shared_dir / VIDEO)
    assert cli.main([*base, "--source", str(tmp_path / "nope.mp4")]) == 2
    assert "neither a device index" in capsys.readouterr().err
    assert cli.main([*base, "--source", video, "--width", "320"]) == 2
    assert "--height" in capsys.readouterr().err
    assert cli.main([*base, "--source", video, "--rate", "1.5"]) == 2
    assert "base rate must be in [0, 1]" in capsys.readouterr().err
    assert cli.main([*base, "--source", video, "--weights", str(tmp_path)]) == 2
    assert "weights not found" in capsys.readouterr().err
