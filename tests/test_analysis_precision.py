"""Encoder analysis precision: a bfloat16 g_a changes the stream a little, never what a decoder makes of it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from icmh.codec import ScalableCodec
from icmh.codec.api import image_to_tensor
from icmh.codec.precision import analysis_precision, resolved_precision, set_default_precision
from tests.test_codec import synthetic_photo


@pytest.mark.parametrize("mode", ["pr", "fr"])
def test_bf16_analysis_streams_decode_to_the_encoders_images(tiny_weights: Path, mode: str) -> None:
    codec = ScalableCodec.from_weights(tiny_weights, mode=mode)
    image = synthetic_photo(96, 130, seed=3)
    with analysis_precision("bf16"):
        base = codec.encode_base(image, 0.7)
        residual = codec.encode_residual(image, base, 0.7)
    with analysis_precision("fp32"):
        fp32_base = codec.encode_base(image, 0.7).data
    # the latent the encoder coded is the one any decoder rebuilds, bit for bit
    assert torch.equal(codec.open_base(base.data).y_hat, base.y_hat)
    assert np.array_equal(codec.decode_machine(base.data), base.machine_image())
    human = codec.decode_human(base.data, residual)
    assert human.shape == image.shape
    # whatever symbols bfloat16 moved, the machine images stay close
    assert np.abs(codec.decode_machine(fp32_base).astype(int) - base.machine_image().astype(int)).mean() < 2.0


def test_training_ignores_the_analysis_precision(tiny_weights: Path) -> None:
    model = ScalableCodec.from_weights(tiny_weights).base.model
    x, _, _ = image_to_tensor(synthetic_photo(64, 64))
    model.train()
    try:
        with analysis_precision("fp32"):
            reference = model.analysis(x)
        with analysis_precision("bf16"):
            trained = model.analysis(x)
    finally:
        model.eval()
    assert trained.dtype == torch.float32 and torch.equal(trained, reference)
    with analysis_precision("bf16"), torch.no_grad():
        assert not torch.equal(model.analysis(x), reference)  # eval mode: the bfloat16 path


def test_precision_is_per_thread_with_a_process_default() -> None:
    seen: list[str] = []
    with analysis_precision("bf16"):
        worker = threading.Thread(target=lambda: seen.append(resolved_precision()))
        worker.start()
        worker.join()
        assert resolved_precision() == "bf16"
    assert seen and seen[0] in ("bf16", "fp32")  # the other thread keeps the process default ("auto")
    set_default_precision("fp32")
    try:
        worker = threading.Thread(target=lambda: seen.append(resolved_precision()))
        worker.start()
        worker.join()
        assert seen[-1] == "fp32"
    finally:
        set_default_precision("auto")


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="analysis precision"), analysis_precision("fp16"):
        pass
