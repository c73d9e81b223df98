"""``bench`` subcommands: ``machine`` (mAP vs bpp), ``human`` (PSNR / MS-SSIM vs bpp), ``speed`` (fps, memory),
``service`` (one camera end to end through the gRPC service), ``scale`` (many cameras against one cloud),
``edge`` (edge throughput: base only, lazy and eager residual policies), ``lossless`` (evidence-layer size),
``bits`` (where the PR layer's bits go).

Hooked into ``icmh`` by ``add_bench_parser(subparsers)``; also runnable on its own as
``python -m icmh.bench.cli {machine,human,speed,service,scale} ...``. Heavy imports happen only when a
benchmark runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from icmh.paths import data_root

DEFAULT_OUT = Path("docs") / "benchmarks"
MACHINE_DATASETS = ("road_traffic4", "coco128", "traffic_cams")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(w), int(h)) for w, h in (v.lower().split("x") for v in _names(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 640x360,1280x720, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    sizes = _sizes(text)
    if len(sizes) != 1:
        raise argparse.ArgumentTypeError(f"expected one size like 640x360, got {text!r}")
    return sizes[0]


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts like 1,4,16, got {text!r}") from None


def _command(args: argparse.Namespace) -> str:
    return getattr(args, "command_line", None) or shlex.join(sys.argv)


def _options(args: argparse.Namespace):
    from .lineup import BenchOptions

    if not args.rates or any(not 0.0 <= r <= 1.0 for r in args.rates):
        raise ValueError(f"rates must be in [0, 1], got {args.rates}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    return BenchOptions(
        weights=Path(args.weights) if args.weights else None, shared=Path(args.shared), out=Path(args.out),
        limit=args.limit, rates=args.rates, threads=args.threads,
        command=_command(args),
        codecs=args.codecs, bd_method=getattr(args, "bd_method", "pchip"),
    )


def cmd_machine(args: argparse.Namespace) -> None:
    from .machine_task import run_machine

    for path in run_machine(_options(args), args.datasets, Path(args.detector) if args.detector else None):
        print(path)


def cmd_human(args: argparse.Namespace) -> None:
    from .human_quality import run_human

    for path in run_human(_options(args), args.base_rate, args.dataset):
        print(path)


def cmd_speed(args: argparse.Namespace) -> None:
    from .speed import run_speed

    detector = Path(args.detector) if args.detector else None
    for path in run_speed(_options(args), args.sizes, args.frames, detector):
        print(path)


def _stream_options(args: argparse.Namespace):
    from .datasets import TRAFFIC_VIDEO
    from .streaming import StreamOptions

    shared = Path(args.shared)
    return StreamOptions(
        weights=Path(args.weights) if args.weights else None, shared=shared, out=Path(args.out), threads=args.threads,
        command=_command(args), source=Path(args.source) if args.source else shared / TRAFFIC_VIDEO, size=args.size,
        fps=args.fps, detector=Path(args.detector) if args.detector else shared / "models" / "yolov8n.pt",
        detector_imgsz=args.detector_imgsz, mode=args.mode, rate=args.rate, residual_rate=args.residual_rate,
        workdir=Path(args.workdir) if args.workdir else None,
    )


def cmd_service(args: argparse.Namespace) -> None:
    from .service import run_service

    for path in run_service(_stream_options(args), args.frames, args.inspect):
        print(path)


def cmd_scale(args: argparse.Namespace) -> None:
    from .scale import run_scale

    for path in run_scale(_stream_options(args), args.cameras, args.seconds, args.edge, args.replicas,
                          args.postgres, args.publish):
        print(path)


def cmd_edge(args: argparse.Namespace) -> None:
    from .edge_policy import run_edge_policy

    for path in run_edge_policy(Path(args.shared), Path(args.out), Path(args.weights) if args.weights else None,
                                args.mode, args.sizes, args.frames, args.rate, args.residual_rate, args.threads,
                                _command(args), args.inspect):
        print(path)


def cmd_lossless(args: argparse.Namespace) -> None:
    from .lossless_tier import run_lossless

    for path in run_lossless(_options(args), args.base_rate, args.traffic_frames):
        print(path)


def cmd_bits(args: argparse.Namespace) -> None:
    from .bits import run_bits

    weights = Path(args.weights) if args.weights else None
    for path in run_bits(Path(args.shared), Path(args.out), _command(args), weights, args.dataset, args.limit,
                         args.base_rate, args.rates, args.threads):
        print(path)


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench {machine,human,speed,service,scale}`` to an ``icmh`` subparsers object; returns ``bench``."""

    bench = subparsers.add_parser("bench", help="benchmarks: machine task, human quality, speed, service, scale",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = bench.add_subparsers(dest="bench", required=True)

    def common(p: argparse.ArgumentParser, rates: str, codecs: bool = True) -> None:
        p.add_argument("--weights", help="folder with sa-icm.pt, pr-icmh.pt, fr-icmh.pt, single.pt "
                                         "(default: shipped shared/weights)")
        p.add_argument("--limit", type=int, help="first N images only")
        p.add_argument("--rates", type=_floats, default=_floats(rates), help=f"learned-codec rates R (default {rates})")
        p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder for <name>.json / .png")
        p.add_argument("--shared", default=str(data_root()), help="the ../shared folder (data/, models/)")
        p.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
        if codecs:
            p.add_argument("--codecs", type=_names, help="comma-separated codecs to compare (default: all installed)")
            p.add_argument("--bd-method", choices=("pchip", "cubic"), default="pchip",
                           help="BD-rate interpolation (pchip as in the JCT-VC/JVET CTC sheets, cubic as VCEG-M33)")

    rates = "0,0.2,0.4,0.6,0.8,1"
    m = sub.add_parser("machine", help="yolov8n mAP50-95 / mAP50 on decoded images vs bpp")
    common(m, rates)
    m.add_argument("--datasets", type=_names, default=MACHINE_DATASETS,
                   help=f"comma-separated labelled sets (default {','.join(MACHINE_DATASETS)})")
    m.add_argument("--detector", help="YOLO checkpoint (default SHARED/models/yolov8n.pt)")
    m.set_defaults(func=cmd_machine)

    h = sub.add_parser("human", help="PSNR and MS-SSIM on Kodak (or traffic-camera frames) vs bpp")
    common(h, rates)
    h.add_argument("--base-rate", type=float, default=0.5, help="base-layer R under the PR/FR residual curves")
    h.add_argument("--dataset", choices=("kodak", "traffic_cams"), default="kodak",
                   help="kodak, or the test frames of the traffic videos (never trained on or selected on)")
    h.set_defaults(func=cmd_human)

    s = sub.add_parser("speed", help="encode/decode time per layer, fps, detector time, peak memory")
    common(s, "0.5", codecs=False)
    s.set_defaults(codecs=None)
    s.add_argument("--sizes", type=_sizes, default=_sizes("640x360,1280x720"), help="frame sizes WxH")
    s.add_argument("--frames", type=int, default=10, help="frames timed per size")
    s.add_argument("--detector", help="YOLO checkpoint (default SHARED/models/yolov8n.pt)")
    s.set_defaults(func=cmd_speed)

    def streaming(p: argparse.ArgumentParser, fps: float) -> None:
        p.add_argument("--weights", help="codec weights folder (default: shipped shared/weights)")
        p.add_argument("--source", help="video the cameras stream (default SHARED/data/traffic/"
                                        "cvtrafficcam_street.mp4)")
        p.add_argument("--size", type=_size, default=_size("640x360"), help="frame size WxH the edges code")
        p.add_argument("--fps", type=float, default=fps, help=f"frames per second per camera (default {fps:g})")
        p.add_argument("--mode", choices=("pr", "fr"), default="pr", help="residual layer kind")
        p.add_argument("--rate", type=float, default=0.5, help="base-layer rate R")
        p.add_argument("--residual-rate", type=float, default=0.5, help="residual-layer rate R")
        p.add_argument("--detector", help="cloud YOLO checkpoint (default SHARED/models/yolov8n.pt)")
        p.add_argument("--detector-imgsz", type=int, default=640, help="cloud detector input size")
        p.add_argument("--threads", type=int, default=2, help="torch threads of the cloud server (and of edge-node)")
        p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder for <name>.json / .png")
        p.add_argument("--shared", default=str(data_root()), help="the ../shared folder (data/, models/)")
        p.add_argument("--workdir", help="data and logs of the services (default: a temporary folder, removed "
                                         "after a successful run)")

    v = sub.add_parser("service", help="one camera through the gRPC service on loopback: latency, bytes, GetFrame")
    streaming(v, 5.0)
    v.add_argument("--frames", type=int, default=60, help="frames the edge streams")
    v.add_argument("--inspect", type=int, default=10, metavar="K", help="frames fetched by GetFrame MACHINE and HUMAN")
    v.set_defaults(func=cmd_service)

    c = sub.add_parser("scale", help="1, 4, 16 cameras against 1, 2, 4 ... cloud replicas: throughput, latency, "
                                     "cloud CPU/RSS, lost and duplicated frames")
    streaming(c, 1.0)
    c.add_argument("--cameras", type=_counts, default=_counts("1,4,16"), help="camera counts, one run each")
    c.add_argument("--seconds", type=float, default=30.0, help="seconds each camera sends, per configuration")
    c.add_argument("--edge", choices=("replay", "node"), default="replay",
                   help="replay: pre-encoded layers through the edge's link code (light); node: edge-node processes")
    c.add_argument("--replicas", type=_counts, default=(1,),
                   help="cloud replica counts sharing one PostgreSQL index, each run with every camera count")
    c.add_argument("--postgres", default=os.environ.get("ICMH_BENCH_POSTGRES") or None, metavar="URL",
                   help="PostgreSQL server for the replicas' index, a user that may create databases (default "
                        "$ICMH_BENCH_POSTGRES; without: one cloud on SQLite)")
    c.add_argument("--publish", action="append", default=[], metavar="URL",
                   help="running broker the clouds also publish to, as icmh-cloud's --publish (repeatable): "
                        "mqtt://host:1883/prefix or nats://host:4222/subject; each configuration under its own "
                        "PREFIX/bench-... or SUBJECT.bench-..., counted at the broker (\"brokers\" in the JSON)")
    c.set_defaults(func=cmd_scale)

    g = sub.add_parser("edge", help="edge throughput per camera resolution, base only vs residual policies lazy / "
                                    "eager: capture fps, CPU per frame, storage/hour, inspection latency")
    g.add_argument("--weights", help="codec weights folder (default: shipped shared/weights)")
    g.add_argument("--mode", choices=("pr", "fr", "avif"), default="pr", help="residual layer kind")
    g.add_argument("--resolutions", "--sizes", dest="sizes", type=_sizes,
                   default=_sizes("640x360,1280x720,1920x1080"), help="camera resolutions WxH")
    g.add_argument("--frames", type=int, default=8, help="frames captured per resolution and policy")
    g.add_argument("--inspect", type=int, metavar="K",
                   help="frames inspected (HUMAN, ORIGINAL) per resolution and policy (default: all; 0: none)")
    g.add_argument("--rate", type=float, default=0.5, help="base-layer rate R")
    g.add_argument("--residual-rate", type=float, default=0.5, help="residual-layer rate R")
    g.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    g.add_argument("--out", default=str(DEFAULT_OUT), help="output folder for edge.json / .png")
    g.add_argument("--shared", default=str(data_root()), help="the ../shared folder (data/, models/)")
    g.set_defaults(func=cmd_edge)

    x = sub.add_parser("lossless", help="lossless evidence layer: bytes vs PNG and lossless WebP of the original")
    common(x, "0.5", codecs=False)
    x.set_defaults(codecs=None)
    x.add_argument("--base-rate", type=float, default=0.5, help="base-layer R under the residual layers")
    x.add_argument("--traffic-frames", type=int, default=6, help="frames taken from each traffic video")
    x.set_defaults(func=cmd_lossless)

    b = sub.add_parser("bits", help="where the PR layer's bits go: per slice and checkerboard pass, and what its "
                                    "spatial context saves")
    common(b, "0,0.5,1", codecs=False)
    b.add_argument("--dataset", choices=("bsds500-val", "kodak", "traffic_cams"), default="bsds500-val",
                   help="images (default: bsds500/val, the training runs' monitor)")
    b.add_argument("--base-rate", type=float, default=0.5, help="base-layer R under the residual layer")
    b.set_defaults(func=cmd_bits)

    for p in sub.choices.values():  # every benchmark: no report into the checkout from uncommitted code
        p.add_argument("--allow-dirty", action="store_true",
                       help="record a report in the checkout although its code has uncommitted changes "
                            '(it then says "dirty": true)')
        p.set_defaults(run=p.get_default("func"), func=_checked)
    return bench


def _checked(args: argparse.Namespace) -> None:
    """Run the benchmark ``args.run`` unless its report would come from a dirty checkout (see ``check_work_tree``)."""
    from .report import check_work_tree

    check_work_tree(Path(args.out), args.allow_dirty)
    args.run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m icmh.bench.cli``."""
    parser = argparse.ArgumentParser(prog="python -m icmh.bench.cli")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    args.command_line = shlex.join([*parser.prog.split(), *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
