"""Property-based fuzzing (hypothesis) of the layer container parser and the decoders that read it.

Properties: :func:`unpack` either refuses input with a :class:`BitstreamError` or returns a header and strings
that :func:`pack` turns back into exactly the same bytes (no second, lenient reading of a container); the
decoders of a tiny real codec either refuse a container with a ``BitstreamError`` or return an image of the
size its header states, whatever the entropy-coded payload holds. Inputs: arbitrary bytes, and real containers
mutated (bit flips, cuts, appended and overwritten bytes), half of them with the checksum recomputed so the
mutation reaches the parser behind it.

CI runs ``ICMH_FUZZ_EXAMPLES`` = 300 examples per parser property (a third of that per decoder property,
derandomized, so CI is reproducible); a longer, randomized run::

    ICMH_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_bitstream_fuzz.py --hypothesis-show-statistics
"""

from __future__ import annotations

import os
import string
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from icmh.codec.api import ScalableCodec
from icmh.codec.bitstream import MAX_SIDE, MAX_STRINGS, BitstreamError, LayerHeader, LayerKind, pack, unpack

EXAMPLES = int(os.environ.get("ICMH_FUZZ_EXAMPLES", "300"))
DECODE_EXAMPLES = max(10, EXAMPLES // 3)  # a decode of the tiny codec at 40x56 takes tens of ms


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
                    derandomize="ICMH_FUZZ_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def headers(draw: st.DrawFn, max_side: int = MAX_SIDE) -> LayerHeader:
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    return LayerHeader(
        kind=draw(st.sampled_from(list(LayerKind))),
        model_id=draw(st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=64)),
        weights_hash=draw(st.binary(min_size=8, max_size=8)), rate_index=draw(st.integers(0, 255)),
        height=height, width=width, pad_h=-height % 64, pad_w=-width % 64,
        base_digest=draw(st.binary(min_size=8, max_size=8)),
    )


payloads = st.lists(st.binary(max_size=96), min_size=1, max_size=MAX_STRINGS)
#: one edit of a container: ("flip", position, bit) | ("cut", length) | ("add", bytes) | ("set", position, bytes)
edits = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 16)),
    st.tuples(st.just("add"), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("set"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
)
mutations = st.tuples(st.lists(edits, min_size=1, max_size=4), st.booleans())  # (edits, recompute checksum)
#: where a decoder test edits a layer: the whole container, or only its entropy-coded strings (a valid container)
targets = st.sampled_from(["container", "payload"])


def mutate(data: bytes, mutation: tuple[list[tuple], bool]) -> bytes:
    edited, reseal = bytearray(data), mutation[1]
    for edit in mutation[0]:
        if edit[0] == "flip" and edited:
            edited[edit[1] % len(edited)] ^= 1 << edit[2]
        elif edit[0] == "cut":
            del edited[edit[1] % (len(edited) + 1):]
        elif edit[0] == "add":
            edited += edit[1]
        elif edit[0] == "set" and edited:
            position = edit[1] % len(edited)
            edited[position:position + len(edit[2])] = edit[2]
    if reseal and len(edited) >= 4:
        body = bytes(edited[:-4])
        edited[-4:] = struct.pack(">I", zlib.crc32(body))
    return bytes(edited)


def mutate_layer(data: bytes, mutation: tuple[list[tuple], bool], target: str) -> bytes:
    if target == "container":
        return mutate(data, mutation)
    header, strings = unpack(data)
    which = len(strings) - 1 if mutation[1] else 0  # the flag picks the first or the last string
    strings[which] = mutate(strings[which], (mutation[0], False))
    return pack(header, strings)


def parse(data: bytes) -> tuple[LayerHeader, list[bytes]] | None:
    """``unpack`` under the properties of the module docstring; None when it refused the input."""
    try:
        header, strings = unpack(data)
    except BitstreamError:
        event("refused")
        return None
    assert pack(header, strings) == data  # accepted input is canonical
    event("accepted")
    return header, strings


@fuzz(EXAMPLES)
@given(headers(), payloads)
def test_valid_containers_round_trip(header: LayerHeader, strings: list[bytes]) -> None:
    assert unpack(pack(header, strings)) == (header, strings)


@fuzz(EXAMPLES)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    parse(data)


@fuzz(EXAMPLES)
@given(st.binary(max_size=64).map(lambda tail: b"ICMH\x01" + tail), st.booleans())
def test_arbitrary_bytes_behind_a_valid_magic(data: bytes, reseal: bool) -> None:
    parse(mutate(data, ([], reseal)))


@fuzz(EXAMPLES)
@given(headers(), payloads, mutations)
def test_mutated_containers(header: LayerHeader, strings: list[bytes], mutation: tuple[list[tuple], bool]) -> None:
    parse(mutate(pack(header, strings), mutation))


def test_non_bytes_are_refused() -> None:
    for value in ("ICMH", None, 7, [1, 2]):
        with pytest.raises(BitstreamError, match="must be bytes"):
            unpack(value)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def coded(tiny_weights: Path) -> tuple[ScalableCodec, bytes, bytes]:
    """A tiny real codec and the two layers of one 40x56 frame."""
    codec = ScalableCodec.from_weights(tiny_weights, mode="pr")
    image = (np.random.default_rng(3).random((40, 56, 3)) * 255).astype(np.uint8)
    base, residual = codec.encode(image, 0.5, 0.5)
    return codec, base, residual


@pytest.mark.slow
@fuzz(DECODE_EXAMPLES)
@given(mutation=mutations, target=targets, size=st.none() | st.tuples(st.integers(1, 64), st.integers(1, 64)))
def test_decode_machine_of_mutated_base_layers(coded: tuple[ScalableCodec, bytes, bytes],
                                               mutation: tuple[list[tuple], bool], target: str,
                                               size: tuple[int, int] | None) -> None:
    codec, base, _ = coded
    if size is not None:  # the same payload under another (small) frame size
        header, strings = unpack(base)
        height, width = size
        base = pack(LayerHeader(header.kind, header.model_id, header.weights_hash, header.rate_index, height, width,
                                -height % 64, -width % 64, header.base_digest), strings)
    data = mutate_layer(base, mutation, target)
    parsed = parse(data)
    try:
        image = codec.decode_machine(data)
    except BitstreamError:
        event("decode refused")
        return
    assert parsed is not None  # the decoder accepts nothing the parser refuses
    assert image.dtype == np.uint8 and image.shape == (parsed[0].height, parsed[0].width, 3)
    event("decoded")


@pytest.mark.slow
@fuzz(DECODE_EXAMPLES)
@given(mutation=mutations, target=targets)
def test_decode_human_of_mutated_residual_layers(coded: tuple[ScalableCodec, bytes, bytes],
                                                 mutation: tuple[list[tuple], bool], target: str) -> None:
    codec, base, residual = coded
    data = mutate_layer(residual, mutation, target)
    parsed = parse(data)
    try:
        image = codec.decode_human(base, data)
    except BitstreamError:
        event("decode refused")
        return
    assert parsed is not None
    assert image.dtype == np.uint8 and image.shape == (40, 56, 3)
    event("decoded")
