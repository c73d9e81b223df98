"""What a training run is configured with (:class:`TrainConfig`), kept free of torch so that ``icmh train``'s
parser takes its defaults from here without loading the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..defaults import field_default
from ..paths import data_root

# the shipped architectures (shared/weights/*.json) and their λ ranges
KIND_ARCHITECTURE = {"base": "sa-icm", "pr": "pr-icmh-cb4", "fr": "fr-icmh", "single": "single-l"}
DEFAULT_LAMBDAS = {"base": (0.002, 0.06), "pr": (0.003, 0.25), "fr": (0.002, 0.05), "single": (0.003, 0.25)}
MASK_PROVIDERS = ("boxes", "edges", "boxes+edges", "sam")


@dataclass
class TrainConfig:
    kind: str  # base | pr | fr | single
    out_dir: Path
    shared_dir: Path = field(default_factory=data_root)
    architecture: str | None = None
    base_weights: Path | None = None  # frozen base (pr / fr)
    mask_provider: str = "boxes"  # one of MASK_PROVIDERS
    detector: Path | None = None
    sam_checkpoint: Path | None = None
    lambda_min: float | None = None
    lambda_max: float | None = None
    steps: int = 100_000
    batch: int = 16
    crop: int = 128
    lr: float = 2e-4
    threads: int = 2
    checkpoint_minutes: float = 10.0
    validate_every: int = 1000
    max_minutes: float | None = None
    seed: int = 0
    init_from: Path | None = None  # warm start (matching parameters only)
    background_weight: float = 0.0  # base: weight of the squared error outside the mask (0: SA-ICM as published)
    feature_weight: float = 0.0  # base: weight of the detector-feature distance (0: SA-ICM as published)
    precision: str = "auto"  # arithmetic of g_a / g_s in training: auto | fp32 | bf16 (entropy model always fp32)
    hard_rate: bool = False  # soft then hard: rate of the rounded latent, encoder frozen (decoder-side fine-tuning)
    synthesis_only: bool = False  # train g_s alone: encoder and entropy model (so every bitstream) stay as they are
    entropy_only: bool = False  # train the entropy model alone on the rate of the rounded symbols: latents stay

    def __post_init__(self) -> None:
        self.frozen_part()

    def frozen_part(self) -> str:
        return frozen_part(self.synthesis_only, self.entropy_only)

    def lambdas(self) -> tuple[float, float]:
        lo, hi = DEFAULT_LAMBDAS[self.kind]
        return (self.lambda_min or lo, self.lambda_max or hi)


def frozen_part(synthesis_only: bool, entropy_only: bool) -> str:
    """Which part a run trains alone ("" for all of them), as its checkpoints record it: resumed the same way."""
    if synthesis_only and entropy_only:
        raise ValueError("--synthesis-only and --entropy-only exclude each other")
    return "--synthesis-only" if synthesis_only else "--entropy-only" if entropy_only else ""


def config_default(name: str) -> Any:
    """The default of the :class:`TrainConfig` field ``name`` (the one place a training default is set)."""
    return field_default(TrainConfig, name)
