"""Lossless evidence tier: exact round trips, validation, cross-process exactness, CLI, and GetFrame ORIGINAL."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from service_support import edge_settings, frame_ids, get_frame, rpc_error, start_cloud, start_edge, wait_for

from icmh.codec import BitstreamError, ScalableCodec, lossless
from icmh.codec.bitstream import LayerKind, pack, unpack
from icmh.codec.exact import exact_synthesis
from icmh.edge.source import FrameSource
from icmh.edge.store import StoreLimits
from icmh.rpc import operator_pb2
from icmh.service.images import decode_png
from tests.service_support import FRAME_SIZE, VIDEO
from tests.test_cli import icmh
from tests.test_codec import kodak, run_in_other_processes

ORIGINAL = operator_pb2.QUALITY_ORIGINAL
HUMAN = operator_pb2.QUALITY_HUMAN


@pytest.fixture(scope="module")
def photo(shared_dir: Path) -> np.ndarray:
    return kodak(shared_dir, "07.png")[:190, :263]


@pytest.mark.parametrize("mode", ["pr", "fr", "avif"])
@pytest.mark.parametrize("method", lossless.METHODS)
def test_base_residual_lossless_give_the_input_exactly(tiny_weights: Path, photo: np.ndarray, mode: str,
                                                        method: str) -> None:
    codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
    base, residual = codec.encode(photo, 0.5, 0.5)
    layer = codec.encode_lossless(photo, base, residual, method)
    header, strings = unpack(layer)
    assert header.kind == LayerKind.LOSSLESS and header.model_id == method and len(strings) == 2
    assert lossless.needs_residual(layer) == (method == lossless.RESIDUAL)
    decoded = codec.decode_original(base, layer, residual)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, photo)
    with exact_synthesis(False):  # a thread that views frames in float pixels still gets the exact original
        assert np.array_equal(codec.decode_original(base, layer, residual), photo)


def test_frame_method_needs_no_residual_and_wraps_a_stored_webp(tiny_weights: Path, photo: np.ndarray) -> None:
    codec = ScalableCodec.from_weights(tiny_weights, with_residual=False)
    base = codec.encode_base(photo, 0.3).data
    layer = codec.lossless_from_webp(lossless.webp_lossless(photo, "fast"), base)
    assert np.array_equal(codec.decode_original(base, layer), photo)
    assert 8 * len(layer) / photo[..., 0].size < 8 * len(cv2.imencode(".png", photo)[1]) / photo[..., 0].size


def test_wrapped_residual_is_exact_at_the_extremes() -> None:
    image = np.array([[[0, 255, 7]]], np.uint8)
    approx = np.array([[[255, 0, 7]]], np.uint8)
    assert np.array_equal(lossless.unwrap_residual(approx, lossless.wrap_residual(image, approx)), image)


def test_malformed_lossless_layers_raise(tiny_weights: Path, photo: np.ndarray) -> None:
    codec = ScalableCodec.from_weights(tiny_weights, mode="pr")
    base, residual = codec.encode(photo, 0.5, 0.5)
    frame = codec.encode_lossless(photo, base, residual)
    by_residual = codec.encode_lossless(photo, base, residual, lossless.RESIDUAL)
    header, (payload, frame_digest) = unpack(frame)
    other_base, other_residual = codec.encode(photo, 0.9, 0.5)
    lossy = cv2.imencode(".webp", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes()
    cases = {
        "does not decode": pack(header, [payload[: len(payload) // 2], frame_digest]),
        "does not reproduce": pack(header, [lossy, frame_digest]),
        "different base": frame,  # decoded against other_base below
        "8-byte frame digest": pack(header, [payload, frame_digest[:4]]),
        "checksum": frame[:-6] + bytes([frame[-6] ^ 0x10]) + frame[-5:],
    }
    for reason, layer in cases.items():
        with pytest.raises(BitstreamError, match=reason):
            codec.decode_original(other_base if reason == "different base" else base, layer, residual)
    with pytest.raises(BitstreamError, match="needs its residual"):
        codec.decode_original(base, by_residual)
    with pytest.raises(BitstreamError, match="other base / residual"):
        codec.decode_original(base, by_residual, codec.encode_residual(photo, codec.open_base(base), 0.9))
    with pytest.raises(BitstreamError, match="expected a lossless layer"):
        codec.decode_original(base, residual, residual)
    with pytest.raises(BitstreamError, match="other base / residual"):
        codec.decode_original(other_base, by_residual, other_residual)
    with pytest.raises(ValueError, match="needs the residual layer"):
        codec.encode_lossless(photo, base, None, lossless.RESIDUAL)


DECODE_ORIGINAL = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from icmh.codec import ScalableCodec
codec = ScalableCodec.from_weights(sys.argv[2], mode=sys.argv[4])
read = lambda ext: open(sys.argv[3] + ext, 'rb').read()
print(hashlib.sha256(codec.decode_original(read('.base'), read('.lossless'), read('.res')).tobytes()).hexdigest())
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pr", "fr"])
def test_lossless_decode_is_exact_in_other_processes(tiny_weights: Path, photo: np.ndarray, tmp_path: Path,
                                                      mode: str) -> None:
    """The residual method rebuilds x from the exact human image: other threads and CPU kernels give x too."""
    codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
    base, residual = codec.encode(photo, 0.6, 0.6)
    for ext, data in ((".base", base), (".res", residual),
                      (".lossless", codec.encode_lossless(photo, base, residual, lossless.RESIDUAL))):
        (tmp_path / f"f{ext}").write_bytes(data)
    expected = hashlib.sha256(photo.tobytes()).hexdigest()
    for setting, stdout in run_in_other_processes(DECODE_ORIGINAL, str(tiny_weights), str(tmp_path / "f"), mode):
        assert stdout.split()[-1] == expected, setting


@pytest.mark.parametrize("method", ["frame", "residual"])
def test_cli_lossless_round_trip(tiny_weights: Path, shared_dir: Path, tmp_path: Path, method: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), cv2.imread(str(shared_dir / "data" / "kodak" / "11.png"))[:150, :222])
    layers = {name: tmp_path / f"f.{name}" for name in ("base", "residual", "lossless")}
    code, _, err = icmh(capsys, "encode", str(image), *(a for n, p in layers.items() for a in (f"--{n}", str(p))),
                        "--mode", "avif", "--lossless-method", method, "--weights", str(tiny_weights))
    assert code == 0, err
    decoded = tmp_path / "out.png"
    code, _, err = icmh(capsys, "decode", *(a for n, p in layers.items() for a in (f"--{n}", str(p))), "-o",
                        str(decoded), "--weights", str(tiny_weights))
    assert code == 0, err
    assert np.array_equal(cv2.imread(str(decoded)), cv2.imread(str(image)))
    code, _, err = icmh(capsys, "decode", "--base", str(layers["base"]), "--lossless", str(layers["residual"]), "-o",
                        str(decoded), "--weights", str(tiny_weights))
    assert code != 0 and err.startswith("icmh: error: expected a lossless"), err


def test_get_frame_original_returns_the_captured_frame(tmp_path: Path, tiny_weights: Path, shared_dir: Path) -> None:
    """QUALITY_ORIGINAL over real gRPC: the exact frame the edge captured, fetched from the edge on request; with
    --exact-views the human view is the exact decode too."""
    server = start_cloud(tmp_path, tiny_weights, shared_dir, {"cam-o": "token-o"}, exact_views=True)
    codec = ScalableCodec.from_weights(tiny_weights)
    source = FrameSource(str(shared_dir / VIDEO), size=FRAME_SIZE, max_frames=3)
    try:
        captured = [f.image for f in source.frames(threading.Event())]
    finally:
        source.close()
    try:
        for policy in ("lazy", "eager"):
            node = start_edge(edge_settings(tmp_path / policy, "cam-o", "token-o", server.port, shared_dir,
                                            tiny_weights, residual_policy=policy))
            first = 1 if policy == "lazy" else 4
            try:
                wait_for(lambda f=first: frame_ids(server.settings.detections_jsonl, "cam-o")[-1:] == [f + 2],
                         what=f"3 results ({policy})")
                reply = get_frame(server.port, "cam-o", first + 1, ORIGINAL)
                assert reply.quality == ORIGINAL and np.array_equal(decode_png(reply.png), captured[1]), policy
                assert reply.lossless_bytes > 0 and reply.residual_bytes == 0  # frame method: no residual needed
                assert node.metrics.registry.get_sample_value("icmh_edge_lossless_requests_total",
                                                              {"result": "ok"}) == 1
                if policy == "eager":
                    human = decode_png(get_frame(server.port, "cam-o", first + 1, HUMAN).png)
                    base = server.index.base_layer("cam-o", first + 1)
                    assert np.array_equal(human, codec.decode_human(base, node.store.residual(first + 1)))
            finally:
                node.close()
        wait_for(lambda: server.sessions.get("cam-o") is None, what="the edge to go offline")
        error = rpc_error(lambda: get_frame(server.port, "cam-o", 6, ORIGINAL))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "lossless layer" in error.details()

        node = start_edge(edge_settings(tmp_path / "tiny-store", "cam-o", "token-o", server.port, shared_dir,
                                        tiny_weights, limits=StoreLimits(residual_bytes=1), max_frames=1))
        try:
            wait_for(lambda: frame_ids(server.settings.detections_jsonl, "cam-o")[-1:] == [7], what="frame 7")
            error = rpc_error(lambda: get_frame(server.port, "cam-o", 7, ORIGINAL))
            assert error.code() == grpc.StatusCode.NOT_FOUND and "captured frame" in error.details()
        finally:
            node.close()
    finally:
        server.stop(grace=1)
