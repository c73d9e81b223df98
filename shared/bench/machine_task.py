"""Machine-task benchmark: detector mAP50-95 / mAP50 on decoded images vs bits per pixel.

For each labelled set (road_traffic4/val, coco128) every codec of the line-up traces a curve
(our SA-ICM base at each R via ``encode_base`` -> ``decode_machine``, the single-layer
reference, the classical codecs at their quality settings), the uncompressed images give the
reference mAP, and the BD-rate of our codecs against each classical codec is computed on the
mAP-vs-bpp curves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from icmh.detector import EVALUATION_ARGS, TRUTH_SCORE, YoloDetector

from ..media import read_rgb
from .curves import Evaluate, bd_rate_table, measure_curve
from .datasets import (
    DETECTION_SETS,
    TRAFFIC_CAMS,
    LabelledImage,
    load_detection_set,
    load_pseudo_labelled_frames,
)
from .detection_map import mean_average_precision
from .lineup import BenchOptions, Lineup, build_lineup, set_threads
from .report import figure, plot_rate_curves, run_metadata, save_figure, write_json

MACHINE_CODECS = ("sa-icm", "single")
METRICS = {"map50_95": "mAP50-95", "map50": "mAP50"}


def detection_evaluator(detector: YoloDetector, items: Sequence[LabelledImage], classes: Sequence[int]) -> Evaluate:
    """Detect on each decoded image and score the set with COCO-style mAP over ``classes``."""

    def evaluate(decoded: Iterator[tuple[int, np.ndarray]]) -> dict[str, float]:
        detections, truths = [], []
        for index, image in decoded:
            detections.append(detector.detect(image))
            truths.append(items[index].truth(image.shape[1], image.shape[0]))
        result = mean_average_precision(detections, truths, classes)
        return {"map50_95": result.map50_95, "map50": result.map50}

    return evaluate


def run_machine(options: BenchOptions, datasets: Sequence[str], detector_path: Path | None = None) -> list[Path]:
    """Run the benchmark on each of ``datasets``; returns the JSON and PNG files written."""
    known = [*DETECTION_SETS, TRAFFIC_CAMS]
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; known: {known}")
    set_threads(options.threads)
    lineup = build_lineup(options, MACHINE_CODECS)
    detector = YoloDetector.for_evaluation(detector_path or options.shared / "models" / "yolov8n.pt")
    written = []
    with tempfile.TemporaryDirectory(prefix="icmh-machine-") as scratch:  # frame files of the video set
        for dataset in datasets:
            written += _run_dataset(options, dataset, lineup, detector, Path(scratch))
    return written


def _run_dataset(options: BenchOptions, dataset: str, lineup: Lineup, detector: YoloDetector,
                 scratch: Path) -> list[Path]:
    written = []
    if dataset == TRAFFIC_CAMS:
        items, classes = load_pseudo_labelled_frames(options.shared, detector, scratch / dataset, options.limit)
        source = "held-out tail of ../shared/data/traffic/*.mp4"
        truth = f"yolov8n on the originals, score >= {TRUTH_SCORE}"
    else:
        items, classes = load_detection_set(options.shared, dataset, options.limit)
        source, truth = str(options.shared / DETECTION_SETS[dataset][0]), "dataset labels"
    paths = [item.path for item in items]
    evaluate = detection_evaluator(detector, items, classes)
    uncompressed = evaluate((i, read_rgb(p)) for i, p in enumerate(paths))
    curves = {s.name: measure_curve(s, paths, evaluate, f"machine {dataset}") for s in lineup.sweeps}
    ours = [n for n in MACHINE_CODECS if n in curves]
    name = f"machine_{dataset}"
    payload = {
        "benchmark": "machine",
        "dataset": dataset,
        "meta": run_metadata(options.command, len(paths), options.threads, {
            "weights": lineup.learned.describe(),
            "detector": {"checkpoint": str(detector.checkpoint), **EVALUATION_ARGS},
            "images": source,
            "ground_truth": truth,
        }),
        "metric": "COCO-style 101-point AP over IoU 0.50:0.05:0.95 (mAP50-95) and at IoU 0.5 (mAP50), "
                  "max 100 detections per image and class, mean over evaluated classes with ground truth",
        "evaluated_classes": classes,
        "uncompressed": uncompressed,
        "curves": curves,
        "bd_rate": {
            "method": options.bd_method,
            "definition": "rate change (%) of the row's codec against the anchor at equal quality; "
                          "negative = fewer bits",
            **{m: bd_rate_table(curves, m, lineup.classical_names, ours, options.bd_method) for m in METRICS},
        },
        "skipped": lineup.skipped,
    }
    written.append(write_json(options.out, name, payload))
    fig, axes = figure(len(METRICS), f"{dataset}: yolov8n accuracy on decoded images ({len(paths)} images)")
    for ax, (metric, label) in zip(axes, METRICS.items(), strict=True):
        plot_rate_curves(ax, curves, metric, label, references=[("uncompressed", uncompressed[metric])])
    written.append(save_figure(fig, options.out, name))
    return written
