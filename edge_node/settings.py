"""What an edge node is configured with (:class:`EdgeSettings`): the one place its defaults are set.

Free of torch and of the node itself, so that ``icmh-edge``'s parser takes its defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .link import LinkSettings
from .store import StoreLimits


@dataclass
class EdgeSettings:
    camera_id: str
    token: str
    source: str  # video file, URL, device index or image folder
    data_dir: Path  # edge.db: outbox and residual store
    link: LinkSettings
    weights: Path | None = None  # None: weights shipped in shared/weights
    mode: str = "pr"
    residual_policy: str = "lazy"  # lazy: code the residual layer on request; eager: at capture
    loop: bool = False
    fps: float = 0.0  # 0: no cap
    max_frames: int = 0  # 0: no limit
    size: tuple[int, int] | None = None  # (width, height) to resize to
    base_rate: float = 0.5
    residual_rate: float = 0.5
    target_kbps: float = 0.0
    limits: StoreLimits = field(default_factory=StoreLimits)
    metrics_port: int = 9101  # Prometheus; 0: disabled
    metrics_addr: str = "0.0.0.0"
