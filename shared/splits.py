"""Which images of ../shared each job may use: training, checkpoint selection and testing are disjoint.

../shared/DATA.md names the training sets (bsds500, road_traffic4/train, the traffic videos) and the
evaluation-only sets (kodak, road_traffic4/val, coco128). Within the training sets this module is the one
place that keeps images out of training:

* **monitor** — bsds500/val: the PSNR monitor of every training run;
* **selection** — every 15th road_traffic4/train image and frames from the first half of the last 15 %
  of each traffic video: the detector-based checkpoint selection of the base layer;
* **test** — frames from the second half of that tail: the ``traffic_cams`` benchmark set, which no
  training run and no checkpoint selection ever sees (bases trained before session 3 selected on the
  whole tail; their traffic-camera figures carry that caveat).
"""

from __future__ import annotations

from pathlib import Path

EVALUATION_ONLY = ("kodak", "road_traffic4/val", "coco128")
ROAD_TRAFFIC4_SELECTION_EVERY = 15
VIDEO_TRAIN_FRACTION = 0.85  # frames before this fraction of a video may be trained on
VIDEO_SELECTION_END = 0.925  # [0.85, 0.925): checkpoint selection; [0.925, 1): test
VIDEO_TRAIN_STRIDE = 4
VIDEO_HELD_OUT_STRIDE = 6


def check_training_path(path: Path) -> None:
    """Raise if ``path`` lies in a set that is for evaluation only."""
    text = path.as_posix()
    for name in EVALUATION_ONLY:
        if f"/{name}/" in text + "/" or text.endswith(name):
            raise ValueError(f"{path} is an evaluation set ({name}); never train on it")


def is_road_traffic4_selection(index: int) -> bool:
    """Whether the ``index``-th road_traffic4/train image (in name order) is kept for checkpoint selection."""
    return index % ROAD_TRAFFIC4_SELECTION_EVERY == ROAD_TRAFFIC4_SELECTION_EVERY - 1


def video_frames(num_frames: int, part: str, stride: int | None = None) -> range:
    """Frame indices of a traffic video for ``part`` = train | selection | test (disjoint ranges)."""
    train_end = int(num_frames * VIDEO_TRAIN_FRACTION)
    selection_end = int(num_frames * VIDEO_SELECTION_END)
    if part == "train":
        return range(0, train_end, stride or VIDEO_TRAIN_STRIDE)
    if part == "selection":
        return range(train_end, selection_end, stride or VIDEO_HELD_OUT_STRIDE)
    if part == "test":
        return range(selection_end, num_frames, stride or VIDEO_HELD_OUT_STRIDE)
    raise ValueError(f"part must be train, selection or test, got {part!r}")
