"""Classical image codecs as benchmark anchors: RGB image + setting -> (bitstream bytes, decoded RGB).

JPEG and WebP come from OpenCV, AVIF from Pillow; HEVC intra (libx265) and AV1 intra (libaom)
go through the ``ffmpeg`` command line and JPEG XL through ``cjxl`` / ``djxl`` when those are
installed. The bytes are the real coded stream (raw HEVC Annex-B, AV1 low-overhead OBUs, .jxl
file, whole JPEG/WebP/AVIF file), all colour handled as 8-bit 4:2:0 except JPEG XL (XYB).
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, features

from icmh.service.images import decode_png

EncodeDecode = Callable[[np.ndarray, float], tuple[bytes, np.ndarray]]


@dataclass(frozen=True)
class ClassicalCodec:
    """One classical codec with the settings swept for a rate curve (ordered from low to high rate)."""

    name: str
    label: str
    parameter: str
    settings: tuple[float, ...]
    encode_decode: EncodeDecode
    requirement: str
    is_available: Callable[[], bool]


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be a uint8 array of shape (H, W, 3)")


#: OpenCV codec name -> (file extension, quality flag); WebP needs the flag, without it it is lossless
OPENCV_FORMATS = {"jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY), "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY)}


def opencv_encode(image: np.ndarray, name: str, quality: float) -> bytes:
    """JPEG or WebP file of an RGB image at ``quality`` (1-100)."""
    _check_rgb(image)
    extension, flag = OPENCV_FORMATS[name]
    ok, buf = cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [flag, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {name}")
    return buf.tobytes()



def _opencv(name: str) -> EncodeDecode:
    def encode_decode(image: np.ndarray, quality: float) -> tuple[bytes, np.ndarray]:
        data = opencv_encode(image, name, quality)
        return data, decode_png(data)

    return encode_decode


def avif_encode_decode(image: np.ndarray, quality: float) -> tuple[bytes, np.ndarray]:
    """AVIF through Pillow's libavif plugin (speed 6, 4:2:0)."""
    _check_rgb(image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="AVIF", quality=int(quality), speed=6, subsampling="4:2:0")
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as decoded:
        return data, np.asarray(decoded.convert("RGB"))


@functools.lru_cache(maxsize=1)
def ffmpeg_encoders() -> frozenset[str]:
    """Names of the video encoders of the installed ffmpeg (empty without ffmpeg)."""
    if shutil.which("ffmpeg") is None:
        return frozenset()
    listing = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    rows = [line.split() for line in listing.splitlines() if line.startswith(" V")]
    return frozenset(row[1] for row in rows if len(row) > 1)


def _run(command: list[str], data: bytes | None = None) -> bytes:
    result = subprocess.run(command, input=data, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr.decode(errors='replace').strip()[-500:]}")
    return result.stdout


def _ffmpeg(encoder: str, container: str, options: list[str]) -> EncodeDecode:
    """Code one frame with an ffmpeg encoder; the frame is padded to even size for 4:2:0."""

    def encode_decode(image: np.ndarray, setting: float) -> tuple[bytes, np.ndarray]:
        _check_rgb(image)
        h, w = image.shape[:2]
        padded = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        ph, pw = padded.shape[:2]
        quiet = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
        raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{pw}x{ph}"]
        stream = _run(
            [*quiet, *raw, "-i", "pipe:0", "-frames:v", "1", "-pix_fmt", "yuv420p", "-c:v", encoder,
             *[arg.format(setting=int(setting)) for arg in options], "-f", container, "pipe:1"],
            np.ascontiguousarray(padded).tobytes(),
        )
        pixels = _run([*quiet, "-f", container, "-i", "pipe:0", "-frames:v", "1", *raw, "pipe:1"], stream)
        if len(pixels) != ph * pw * 3:
            raise RuntimeError(f"ffmpeg decoded {len(pixels)} bytes, expected {ph * pw * 3}")
        decoded = np.frombuffer(pixels, np.uint8).reshape(ph, pw, 3)[:h, :w]
        return stream, np.ascontiguousarray(decoded)

    return encode_decode


def jxl_encode_decode(image: np.ndarray, distance: float) -> tuple[bytes, np.ndarray]:
    """JPEG XL through ``cjxl -d DISTANCE -e 7`` and ``djxl`` (files in a temporary folder)."""
    _check_rgb(image)
    with tempfile.TemporaryDirectory(prefix="icmh-jxl-") as tmp:
        source, coded, decoded = Path(tmp, "in.ppm"), Path(tmp, "out.jxl"), Path(tmp, "out.ppm")
        if not cv2.imwrite(str(source), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise RuntimeError("cannot write a temporary PPM")
        _run(["cjxl", str(source), str(coded), "-d", f"{distance:g}", "-e", "7", "--quiet"])
        _run(["djxl", str(coded), str(decoded), "--quiet"])
        result = cv2.imread(str(decoded), cv2.IMREAD_COLOR)
        if result is None:
            raise RuntimeError("djxl produced no readable image")
        return coded.read_bytes(), cv2.cvtColor(result, cv2.COLOR_BGR2RGB)


CLASSICAL_CODECS: dict[str, ClassicalCodec] = {
    codec.name: codec
    for codec in (
        ClassicalCodec(
            "jpeg", "JPEG (OpenCV)", "quality", (3, 5, 10, 20, 35, 55, 85),
            _opencv("jpeg"), "opencv", lambda: True,
        ),
        ClassicalCodec(
            "webp", "WebP (OpenCV)", "quality", (1, 5, 12, 25, 45, 70, 90),
            _opencv("webp"), "opencv", lambda: True,
        ),
        ClassicalCodec(
            "avif", "AVIF (Pillow/libavif)", "quality", (2, 10, 20, 30, 45, 60, 75),
            avif_encode_decode, "Pillow with AVIF support", lambda: bool(features.check("avif")),
        ),
        ClassicalCodec(
            "hevc", "HEVC intra (x265)", "crf", (51, 46, 42, 38, 34, 30, 25),
            _ffmpeg("libx265", "hevc", ["-preset", "medium", "-crf", "{setting}",
                                        "-x265-params", "log-level=error:keyint=1"]),
            "ffmpeg with libx265", lambda: "libx265" in ffmpeg_encoders(),
        ),
        ClassicalCodec(
            "av1", "AV1 intra (libaom)", "crf", (63, 56, 50, 44, 38, 32, 24),
            _ffmpeg("libaom-av1", "obu", ["-crf", "{setting}", "-b:v", "0", "-cpu-used", "6",
                                          "-still-picture", "1", "-threads", "1"]),
            "ffmpeg with libaom-av1", lambda: "libaom-av1" in ffmpeg_encoders(),
        ),
        ClassicalCodec(
            "jxl", "JPEG XL (libjxl)", "distance", (25.0, 15.0, 10.0, 6.0, 4.0, 2.5, 1.5),
            jxl_encode_decode, "cjxl and djxl (libjxl-tools)",
            lambda: shutil.which("cjxl") is not None and shutil.which("djxl") is not None,
        ),
    )
}


def select_codecs(names: list[str] | None = None) -> tuple[list[ClassicalCodec], dict[str, str]]:
    """Installed codecs among ``names`` (default: all), and a note for each one skipped."""
    chosen, skipped = [], {}
    for name in names if names is not None else list(CLASSICAL_CODECS):
        codec = CLASSICAL_CODECS[name]
        if codec.is_available():
            chosen.append(codec)
        else:
            skipped[name] = f"skipped: needs {codec.requirement}, not installed on this machine"
    return chosen, skipped

