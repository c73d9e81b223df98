"""Object masks ``m`` for the SA-ICM loss ``R(y) + R(z) + λ·mse(x⊙m, x̂⊙m)``.

Providers (pluggable, results cached on disk next to a manifest):

* ``sam``: Segment Anything's automatic mask generator, turned into the
  object-boundary map SA-ICM trains on (Shindo et al., ICIP 2024: boundaries of
  the SAM masks, kept where the mask confidence passes α = 0.78). Needs a
  checkpoint path supplied by the user.
* ``boxes``: class-agnostic object regions that need no SAM checkpoint:
  labelled boxes where the training set has labels, else boxes from the YOLO
  checkpoint given by path; boxes are enlarged 1.2x.
* ``edges``: object boundaries from classical edge detection (Canny on a
  smoothed image, dilated), a SAM-free stand-in for SA-ICM's edge map.
* ``boxes+edges``: union of the two.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..detector import YoloDetector
from .data import Sample

BOX_ENLARGE = 1.2
SAM_ALPHA = 0.78


def boxes_to_mask(boxes: np.ndarray, height: int, width: int, enlarge: float = BOX_ENLARGE) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in boxes:
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * enlarge, (y1 - y0) * enlarge
        a, b = int(max(0, cx - w / 2)), int(max(0, cy - h / 2))
        c, d = int(min(width, np.ceil(cx + w / 2))), int(min(height, np.ceil(cy + h / 2)))
        mask[b:d, a:c] = 1
    return mask


def edge_mask(image: np.ndarray, dilate: int = 3) -> np.ndarray:
    gray = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (5, 5), 1.2)
    median = float(np.median(gray))
    edges = cv2.Canny(gray, int(max(0, 0.66 * median)), int(min(255, 1.33 * median + 20)))
    kernel = np.ones((dilate, dilate), np.uint8)
    return (cv2.dilate(edges, kernel) > 0).astype(np.uint8)


class SamBoundaries:
    """SA-ICM training mask from Segment Anything (user-supplied checkpoint)."""

    def __init__(
        self, checkpoint: Path | None, model_type: str = "vit_b", sam_model: Any = None, **generator_options: Any
    ) -> None:
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

        if sam_model is None:
            if checkpoint is None or not Path(checkpoint).exists():
                raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint} (pass --sam-checkpoint)")
            sam_model = sam_model_registry[model_type](checkpoint=str(checkpoint))
        self.generator = SamAutomaticMaskGenerator(sam_model, **generator_options)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        edge_map = np.zeros((height, width), np.float32)
        kernel = np.ones((3, 3), np.uint8)
        for record in self.generator.generate(image):
            seg = record["segmentation"].astype(np.uint8)
            boundary = cv2.morphologyEx(seg, cv2.MORPH_GRADIENT, kernel).astype(np.float32)
            edge_map = np.maximum(edge_map, boundary * float(record["predicted_iou"]))
        return (edge_map >= SAM_ALPHA).astype(np.uint8)


MaskFn = Callable[[Sample], np.ndarray]


def make_provider(name: str, detector: Path | None = None, sam_checkpoint: Path | None = None) -> MaskFn:
    """Build the mask function of provider ``name``."""
    if name == "edges":
        return lambda s: edge_mask(s.image)
    if name == "sam":
        sam = SamBoundaries(sam_checkpoint)
        return lambda s: sam(s.image)
    if name in ("boxes", "boxes+edges"):
        yolo = YoloDetector(detector) if detector is not None else None

        def boxes(s: Sample) -> np.ndarray:
            b = s.boxes
            if b is None:
                if yolo is None:
                    raise ValueError(f"{s.key} has no labels and no detector was given")
                b = yolo.detect(s.image).xyxy
            m = boxes_to_mask(b, *s.image.shape[:2])
            return np.maximum(m, edge_mask(s.image)) if name == "boxes+edges" else m

        return boxes
    raise ValueError(f"unknown mask provider {name!r}")


def cached_masks(samples: Sequence[Sample], provider: str, cache_dir: Path, **kwargs) -> list[np.ndarray]:
    """Masks for ``samples``, computed once and cached as PNGs with a manifest."""
    folder = cache_dir / provider.replace("+", "_")
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"provider": provider, "masks": {}}
    fn: MaskFn | None = None
    masks = []
    for sample in samples:
        name = hashlib.sha1(sample.key.encode()).hexdigest()[:16] + ".png"
        path = folder / name
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.exists() else None
        if mask is None or mask.shape != sample.image.shape[:2]:
            fn = fn or make_provider(provider, **kwargs)
            mask = fn(sample).astype(np.uint8)
            cv2.imwrite(str(path), mask * 255)
            mask = mask * 255
            manifest["masks"][sample.key] = {"file": name, "coverage": float((mask > 0).mean())}
        masks.append((mask > 127).astype(np.uint8))
    manifest["count"] = len(manifest["masks"])
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return masks
