"""Shared fixtures: small randomly initialised real codecs saved as real weight files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from icmh.codec.weights import write_random_weights
from icmh.paths import data_root

os.environ.setdefault("YOLO_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("ICMH_TEST_THREADS", "1")))

SHARED = data_root()  # ICMH_DATA, else the folder beside the checkout


def make_tiny_weights(folder: Path, seed: int = 0) -> Path:
    """Tiny random-initialised sa-icm / pr-icmh / fr-icmh / single weight files in ``folder``."""
    return write_random_weights(folder, seed)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").exists():
        pytest.skip(f"../shared not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))
