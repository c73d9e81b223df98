"""Camera frames through OpenCV: a video file (optionally looped), an RTSP/HTTP URL, a device index
or a folder of images. Frames come out as RGB at one fixed size, paced to an fps cap."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("icmh.edge.source")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class SourceError(RuntimeError):
    """The source cannot be opened or gives no frames."""


@dataclass(frozen=True)
class CapturedFrame:
    image: np.ndarray  # uint8 RGB HxWx3
    capture_ns: int  # wall clock at capture, ns since the epoch


def source_kind(spec: str) -> str:
    """'device' (an integer), 'stream' (a URL), 'folder' (a directory) or 'file'."""
    if spec.isdigit():
        return "device"
    if "://" in spec:
        return "stream"
    path = Path(spec)
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "file"
    raise SourceError(f"source {spec!r} is neither a device index, a URL, a folder nor an existing file")


class FrameSource:
    """Frames of one camera. Live sources (device, stream) are reopened after a failure;
    files and folders end, or start over with ``loop``."""

    def __init__(self, spec: str, *, loop: bool = False, fps: float = 0.0, size: tuple[int, int] | None = None,
                 max_frames: int = 0, reopen_s: float = 2.0) -> None:
        if fps < 0 or max_frames < 0:
            raise ValueError("fps and max frames must be >= 0")
        if size is not None and min(size) <= 0:
            raise ValueError(f"frame size must be positive, got {size}")
        self.spec, self.kind = spec, source_kind(spec)
        self.loop, self.fps, self.max_frames, self.reopen_s = loop, fps, max_frames, reopen_s
        self.size = size  # (width, height); the first frame's when not given
        self._capture: cv2.VideoCapture | None = None
        self._files: list[Path] = []
        self._position = 0
        self._first: np.ndarray | None = None

    @property
    def live(self) -> bool:
        return self.kind in ("device", "stream")

    def open(self) -> tuple[int, int]:
        """Open the source and read its first frame; returns the output (width, height)."""
        if self.kind == "folder":
            self._files = sorted(p for p in Path(self.spec).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {self.spec}")
        else:
            self._open_capture()
        first = self._read_raw()
        if first is None:
            raise SourceError(f"source {self.spec!r} gives no frame")
        if self.size is None:
            self.size = (first.shape[1], first.shape[0])
        self._first = first
        return self.size

    def _open_capture(self) -> None:
        target: int | str = int(self.spec) if self.kind == "device" else self.spec
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            raise SourceError(f"OpenCV cannot open {self.kind} {self.spec!r}")

    def _read_raw(self) -> np.ndarray | None:
        """Next BGR frame, or None at the end of a file or folder (or a failed live read)."""
        if self.kind == "folder":
            while self._position < len(self._files):
                path = self._files[self._position]
                self._position += 1
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is not None:
                    return image
                log.warning("skipping unreadable image %s", path)
            return None
        assert self._capture is not None
        ok, image = self._capture.read()
        return image if ok else None

    def _rewind(self) -> bool:
        """Start a file or folder over (with ``loop``); returns False when the source has ended."""
        if not self.loop:
            return False
        if self.kind == "folder":
            self._position = 0
        else:
            assert self._capture is not None
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        return True

    def _to_rgb(self, image: np.ndarray) -> np.ndarray:
        assert self.size is not None
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        """Frames until the source ends, ``max_frames`` is reached or ``stop`` is set."""
        if self._first is None:
            self.open()
        interval = 1.0 / self.fps if self.fps else 0.0
        next_slot = time.monotonic()
        count = 0
        while not stop.is_set() and (not self.max_frames or count < self.max_frames):
            if self._first is not None:
                image, self._first = self._first, None
            else:
                image = self._read_raw()
            if image is None:
                if self.live:
                    log.warning("%s %s gave no frame; reopening in %.1fs", self.kind, self.spec, self.reopen_s)
                    if stop.wait(self.reopen_s):
                        return
                    self._reopen_live()
                    continue
                if self._rewind():
                    continue
                return
            now = time.monotonic()
            if interval and now < next_slot:
                if self.live:
                    continue  # a live camera runs at its own pace: drop frames above the cap
                if stop.wait(next_slot - now):
                    return
            next_slot = max(next_slot, time.monotonic()) + interval  # no burst after falling behind
            count += 1
            yield CapturedFrame(self._to_rgb(image), time.time_ns())

    def _reopen_live(self) -> None:
        self.close()
        try:
            self._open_capture()
        except SourceError as exc:
            log.warning("%s", exc)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
