"""What the streaming service delivered: frames each edge numbered (its ``edge.db``) against the results in the
cloud's JSON Lines sink and on the live ``Detections.Subscribe`` feed; drops, duplicates, latency percentiles.

Latencies are in ms from the edge's capture time: ``published`` to the arrival on the feed (this machine's clock,
the same as the edges' on loopback), ``detected`` to the cloud's ``detect_ns`` (after YOLO, before the sink
write and the publication).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from icmh.edge.store import EdgeStore
from icmh.service.feed import DetectionFeed


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSON Lines file (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stats(values: Iterable[float], percentiles: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | int | None]:
    """count, mean, max and the given percentiles (linear interpolation); None when there are no values."""
    array = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    out: dict[str, float | int | None] = {"count": int(array.size)}
    for name, fn in (("mean", np.mean), *((f"p{p}", lambda a, p=p: np.percentile(a, p)) for p in percentiles),
                     ("max", np.max)):
        out[name] = round(float(fn(array)), 3) if array.size else None
    return out


def edge_frames(edge_data_dir: Path) -> tuple[int, int]:
    """(frames the edge gave an id to, so had to deliver; those still unacknowledged in its outbox), from its
    store, read after the edge stopped."""
    store = EdgeStore(edge_data_dir / "edge.db")
    try:
        return store.next_frame_id() - 1, store.outbox_usage().frames
    finally:
        store.close()


@dataclass
class Delivery:
    """Frames of fresh edges (ids 1..n) and a fresh cloud, matched by (camera, frame id)."""

    edges: Mapping[str, tuple[int, int]]  # camera -> (frames numbered, unacknowledged) by its edge
    sink: list[dict]  # JSON Lines records
    feed: list[tuple[Any, int]]  # (DetectionResult, arrival ns)

    @classmethod
    def collect(cls, edge_dirs: Mapping[str, Path], jsonl: Path, feed: DetectionFeed) -> Delivery:
        """From the stores of stopped edges (camera -> data folder), the sink and the feed."""
        edges = {camera: edge_frames(folder) for camera, folder in edge_dirs.items()}
        return cls(edges, read_jsonl(jsonl), list(zip(feed.results, feed.arrivals_ns, strict=False)))

    def detected_keys(self) -> set[tuple[str, int]]:
        return {(r["camera_id"], r["frame_id"]) for r in self.sink}

    def published_ms(self) -> list[float]:
        return [(arrival - r.capture_time.ToNanoseconds()) / 1e6 for r, arrival in self.feed]

    def detected_ms(self) -> list[float]:
        return [(r["detect_ns"] - r["capture_ns"]) / 1e6 for r in self.sink]

    def counts(self) -> dict[str, int]:
        expected = {(camera, i) for camera, (n, _) in self.edges.items() for i in range(1, n + 1)}
        detected = self.detected_keys()
        return {
            "sent": len(expected),
            "acked_by_cloud": len(expected) - sum(unacked for _, unacked in self.edges.values()),
            "detected": len(detected & expected),
            "published_on_feed": len({(r.camera_id, r.frame_id) for r, _ in self.feed}),
            "dropped": len(expected - detected),  # not detected when the run ended
            "unexpected": len(detected - expected),
            "duplicated_in_sink": _repeats((r["camera_id"], r["frame_id"]) for r in self.sink),
            "duplicated_on_feed": _repeats((r.camera_id, r.frame_id) for r, _ in self.feed),
            "errors": sum(1 for r in self.sink if r.get("error")),
        }

    def latency(self) -> dict[str, dict]:
        return {"capture_to_published_ms": stats(self.published_ms()),
                "capture_to_detected_ms": stats(self.detected_ms())}


def _repeats(keys: Iterable[tuple[str, int]]) -> int:
    """How many results repeat a (camera, frame) already seen."""
    return sum(n - 1 for n in Counter(keys).values())
