"""What the service benchmarks (``service``, ``scale``) share: their options, the weights they describe, a work
folder, and an ``icmh-cloud`` on loopback with a live detections feed, waited on until every frame is detected.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icmh.service.feed import DetectionFeed
from icmh.service.local import LocalServices, ServiceProcess

from .delivery import read_jsonl
from .report import run_metadata

RESIDUAL_CODECS = {"pr": "pr-icmh", "fr": "fr-icmh"}


@dataclass(frozen=True)
class StreamOptions:
    """Flags of ``bench service`` and ``bench scale``; their defaults are the parser's (:mod:`icmh.bench.cli`)."""

    weights: Path | None
    shared: Path
    out: Path
    threads: int  # torch threads of the cloud (and of each edge-node process)
    command: str
    source: Path
    size: tuple[int, int]
    fps: float
    detector: Path
    detector_imgsz: int
    mode: str
    rate: float
    residual_rate: float
    workdir: Path | None  # None: a temporary folder, removed after a successful run

    def check(self) -> None:
        if self.fps <= 0 or self.threads < 1:
            raise ValueError(f"--fps must be > 0 and --threads >= 1, got {self.fps} and {self.threads}")
        if not (0 <= self.rate <= 1 and 0 <= self.residual_rate <= 1):
            raise ValueError("rates must be in [0, 1]")
        for path, what in ((self.source, "source video"), (self.detector, "detector checkpoint")):
            if not path.is_file():
                raise FileNotFoundError(f"{what} not found: {path}")

    def edge_args(self) -> list[str]:
        """``icmh-edge`` flags for the frame size, residual mode and rates (eager residuals: their sizes are
        reported with every base packet, which the service benchmark's per-frame figures need)."""
        return ["--width", str(self.size[0]), "--height", str(self.size[1]), "--mode", self.mode,
                "--rate", str(self.rate), "--residual-rate", str(self.residual_rate), "--fps", str(self.fps),
                "--residual-policy", "eager"]

    def metadata(self, image_count: int, weights: dict, extra: dict[str, Any]) -> dict[str, Any]:
        return run_metadata(self.command, image_count, self.threads, {
            "weights": weights, "video": str(self.source), "frame_size": f"{self.size[0]}x{self.size[1]}",
            "fps": self.fps, "mode": self.mode, "rate": self.rate, "residual_rate": self.residual_rate,
            "detector": {"checkpoint": str(self.detector), "imgsz": self.detector_imgsz}, **extra,
        })


def load_codec(options: StreamOptions):  # -> (ScalableCodec, weights description); torch imported here
    """The edge codec of ``options`` (fails early on missing weights) and its description for the metadata."""
    from .learned import load_learned
    from .lineup import set_threads

    set_threads(options.threads)
    name = RESIDUAL_CODECS[options.mode]
    learned = load_learned(options.weights, (name,))
    codec = learned.codec(name)
    if codec is None:
        raise FileNotFoundError(f"residual weights for mode {options.mode}: {learned.notes}")
    return codec, learned.describe()


def token(camera_id: str) -> str:
    return f"token-{camera_id}"


@contextmanager
def workspace(options: StreamOptions, name: str) -> Iterator[Path]:
    """``options.workdir`` (kept), or a temporary folder removed unless the run fails (then its logs stay)."""
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        yield options.workdir
        return
    folder = Path(tempfile.mkdtemp(prefix=f"icmh-bench-{name}-"))
    try:
        yield folder
    except BaseException:
        print(f"bench {name}: logs kept in {folder}", file=sys.stderr)
        raise
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def cloud_with_feed(services: LocalServices, options: StreamOptions, cameras: list[str],
                    jsonl: Path) -> Iterator[tuple[ServiceProcess, int, DetectionFeed]]:
    """An ``icmh-cloud`` for ``cameras`` writing ``jsonl``, and a feed of all its results (closed on exit)."""
    cloud, port = services.start_cloud({c: token(c) for c in cameras}, options.weights, options.detector,
                                       detections_jsonl=jsonl, threads=options.threads,
                                       extra=["--detector-imgsz", str(options.detector_imgsz),
                                              "--insecure-open-operators"])  # loopback benchmark: no tokens
    feed = DetectionFeed(port)
    try:
        yield cloud, port, feed
    finally:
        feed.close()


def wait_detected(services: LocalServices, jsonl: Path | Sequence[Path], expected: Mapping[str, int],
                  timeout: float) -> bool:
    """Wait until the sink (several replicas: their sinks together) holds frames 1..n of every camera
    (n = ``expected[camera]``); False on timeout."""
    files = [jsonl] if isinstance(jsonl, Path) else list(jsonl)

    def done() -> bool:
        seen: dict[str, set[int]] = {}
        for record in (r for path in files for r in read_jsonl(path)):
            seen.setdefault(record["camera_id"], set()).add(record["frame_id"])
        return all(seen.get(c, set()) >= set(range(1, n + 1)) for c, n in expected.items())

    try:
        services.wait_for(done, timeout, "every frame to be detected", poll=0.25)
        return True
    except TimeoutError:
        return False
