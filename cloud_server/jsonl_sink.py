"""Detection results appended to a JSON Lines file, each (camera, frame) exactly once.

Writes are flushed and fsynced before the frame index advances the file's delivery cursor.
After a crash between the two (or a failed write), :meth:`JsonlSink.reconcile` finds which of
the results still due already reached the file (they can only be among its last lines)
and writes the others; a torn last line is cut off first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .publishers.base import Publisher
from .results import FrameResult

TAIL_BYTES = 4 * 1024 * 1024  # results in doubt are at most one delivery batch (64): far less than this


class JsonlSink(Publisher):
    name = "jsonl"  # one file per server: its cursor keeps this name when the path changes
    inline = True  # written by the detector thread, before live subscribers get the results

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_line()
        self._file = self.path.open("a", encoding="utf-8")

    def _cut_torn_line(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_BYTES)
            f.seek(start)
            tail = f.read()
            f.truncate(start + tail.rfind(b"\n") + 1)

    def write(self, results: list[FrameResult]) -> None:
        if not results:
            return
        self._file.write("".join(json.dumps(r.to_json(), separators=(",", ":")) + "\n" for r in results))
        self._file.flush()
        os.fsync(self._file.fileno())

    def publish(self, results: list[FrameResult], recovering: bool = False) -> int:
        if not recovering:
            self.write(results)
            return 0
        return len(results) - len(self.reconcile(results))

    def written_keys(self) -> set[tuple[str, int]]:
        """(camera, frame) keys among the last lines of the file."""
        with self.path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().split(b"\n")
        if size > TAIL_BYTES:
            lines = lines[1:]  # probably cut in the middle
        keys = set()
        for line in lines:
            try:
                record = json.loads(line)
                keys.add((record["camera_id"], int(record["frame_id"])))
            except (ValueError, KeyError, TypeError):
                continue
        return keys

    def reconcile(self, unpublished: list[FrameResult]) -> list[FrameResult]:
        """Write those of ``unpublished`` not in the file yet; returns the ones written."""
        done = self.written_keys() if unpublished else set()
        missing = [r for r in unpublished if r.key not in done]
        self.write(missing)
        return missing

    def close(self) -> None:
        self._file.close()
