"""Container of one coded layer of one frame, and its validation.

Layout (big-endian)::

    magic "ICMH" | version u8 | kind u8 | rate index u8 | id length u8 | model id
    | weights hash 8B | height u16 | width u16 | pad_h u8 | pad_w u8
    | base digest 8B (refinement layers: digest of the layer(s) they refine, see :func:`layers_digest`)
    | n u8 | n x u32 string lengths | strings | crc32 u32 of everything before

Every malformed input raises :class:`BitstreamError` with a one-line reason,
before any entropy decoding or large allocation happens.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"ICMH"
#: 2: decoder networks in the integer arithmetic of :mod:`icmh.codec.exact` (14-bit activations and weights)
VERSION = 2
#: versions this decoder no longer reads, and why (decoding them would give wrong latents and pixels)
RETIRED_VERSIONS = {
    1: "coded with the float64 fixed-point decoder arithmetic of earlier releases; re-encode the frame",
}
MAX_SIDE = 8192
MAX_STRINGS = 16
MAX_CONTAINER_BYTES = 64 * 1024 * 1024
DIGEST_BYTES = 8
_FIXED = struct.Struct(">4sBBBB")
_DIMS = struct.Struct(">HHBB")


class BitstreamError(ValueError):
    """A layer container is malformed, corrupt or does not fit the decoder."""


class LayerKind(IntEnum):
    BASE = 0
    PR_RESIDUAL = 1
    FR_RESIDUAL = 2
    CLASSICAL_RESIDUAL = 3  # x - x̂_m offset to uint8, coded by a classical image codec (AVIF)
    LOSSLESS = 4  # evidence tier: with the layers below it, the captured frame pixel for pixel


def digest(data: bytes) -> bytes:
    """Short content digest that ties a residual layer to its base layer."""
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def layers_digest(*layers: bytes) -> bytes:
    """Digest a refinement layer stores: of its base container alone, or of the layers it refines, in order."""
    if len(layers) == 1:
        return digest(layers[0])
    return digest(b"".join(digest(bytes(layer)) for layer in layers))


@dataclass(frozen=True)
class LayerHeader:
    kind: LayerKind
    model_id: str
    weights_hash: bytes
    rate_index: int
    height: int
    width: int
    pad_h: int
    pad_w: int
    base_digest: bytes = bytes(DIGEST_BYTES)

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind.name.lower(),
            "model_id": self.model_id,
            "weights_hash": self.weights_hash.hex(),
            "rate_index": self.rate_index,
            "rate": round(self.rate_index / 255, 4),
            "height": self.height,
            "width": self.width,
            "pad_h": self.pad_h,
            "pad_w": self.pad_w,
            "base_digest": self.base_digest.hex(),
        }


def pack(header: LayerHeader, strings: list[bytes]) -> bytes:
    model_id = header.model_id.encode("ascii")
    if not 1 <= len(model_id) <= 64:
        raise BitstreamError("model id must be 1..64 ASCII bytes")
    if len(header.weights_hash) != DIGEST_BYTES or len(header.base_digest) != DIGEST_BYTES:
        raise BitstreamError("hashes must be 8 bytes")
    if not 1 <= len(strings) <= MAX_STRINGS:
        raise BitstreamError(f"a layer holds 1..{MAX_STRINGS} strings")
    _check_dims(header.height, header.width, header.pad_h, header.pad_w)
    parts = [
        _FIXED.pack(MAGIC, VERSION, int(header.kind), header.rate_index, len(model_id)),
        model_id,
        header.weights_hash,
        _DIMS.pack(header.height, header.width, header.pad_h, header.pad_w),
        header.base_digest,
        bytes([len(strings)]),
        struct.pack(f">{len(strings)}I", *(len(s) for s in strings)),
        *strings,
    ]
    body = b"".join(parts)
    return body + struct.pack(">I", zlib.crc32(body))


def _check_dims(height: int, width: int, pad_h: int, pad_w: int, alignment: int = 64) -> None:
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise BitstreamError(f"frame size {width}x{height} outside 1..{MAX_SIDE}")
    if not (0 <= pad_h < alignment and 0 <= pad_w < alignment):
        raise BitstreamError("padding out of range")
    if (height + pad_h) % alignment or (width + pad_w) % alignment:
        raise BitstreamError("padding does not align the frame")


def unpack(data: bytes) -> tuple[LayerHeader, list[bytes]]:
    """Parse and validate a container; returns its header and entropy-coded strings."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError("layer data must be bytes")
    data = bytes(data)
    if len(data) > MAX_CONTAINER_BYTES:
        raise BitstreamError(f"layer of {len(data)} bytes exceeds {MAX_CONTAINER_BYTES}")
    if len(data) < _FIXED.size + 4:
        raise BitstreamError("truncated layer (shorter than a header)")
    magic, version, kind, rate_index, id_len = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise BitstreamError("not an ICMH layer (bad magic)")
    if version in RETIRED_VERSIONS:
        raise BitstreamError(f"format version {version} is no longer decoded ({RETIRED_VERSIONS[version]})")
    if version != VERSION:
        raise BitstreamError(f"unsupported format version {version} (this decoder reads {VERSION})")
    body, (crc,) = data[:-4], struct.unpack(">I", data[-4:])
    if zlib.crc32(body) != crc:
        raise BitstreamError("checksum mismatch: layer is corrupt or truncated")
    try:
        kind = LayerKind(kind)
    except ValueError:
        raise BitstreamError(f"unknown layer kind {kind}") from None
    pos = _FIXED.size
    try:
        model_id = body[pos : pos + id_len].decode("ascii")
        pos += id_len
        weights_hash = body[pos : pos + DIGEST_BYTES]
        pos += DIGEST_BYTES
        height, width, pad_h, pad_w = _DIMS.unpack_from(body, pos)
        pos += _DIMS.size
        base_digest = body[pos : pos + DIGEST_BYTES]
        pos += DIGEST_BYTES
        n = body[pos]
        pos += 1
        if not 1 <= n <= MAX_STRINGS:
            raise BitstreamError(f"bad string count {n}")
        lengths = struct.unpack_from(f">{n}I", body, pos)
        pos += 4 * n
    except (struct.error, IndexError, UnicodeDecodeError):
        raise BitstreamError("truncated or malformed header") from None
    if len(weights_hash) != DIGEST_BYTES or len(base_digest) != DIGEST_BYTES:
        raise BitstreamError("truncated header")
    if pos + sum(lengths) != len(body):
        raise BitstreamError("string lengths do not match the payload size")
    _check_dims(height, width, pad_h, pad_w)
    strings = []
    for length in lengths:
        strings.append(body[pos : pos + length])
        pos += length
    header = LayerHeader(kind, model_id, weights_hash, rate_index, height, width, pad_h, pad_w, base_digest)
    return header, strings
