"""``icmh``: encode / decode / inspect layer files, train and export codecs, run benchmarks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .allocator import reexec_with_fast_allocator
from .bench.cli import add_bench_parser
from .training.config import MASK_PROVIDERS, config_default


def _read_image(path: str):
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _codec(args: argparse.Namespace, with_residual: bool):
    from .codec.api import ScalableCodec

    return ScalableCodec.from_weights(args.weights, mode=args.mode, with_residual=with_residual)


def cmd_encode(args: argparse.Namespace) -> None:
    from .codec.lossless import METHODS

    if args.lossless_method == "residual" and args.residual is None:
        raise ValueError("--lossless-method residual needs --residual")
    codec = _codec(args, with_residual=args.residual is not None)
    image = _read_image(args.image)
    base = codec.encode_base(image, args.rate)
    Path(args.base).write_bytes(base.data)
    pixels = image.shape[0] * image.shape[1]
    report = {"base_bytes": len(base.data), "base_bpp": round(8 * len(base.data) / pixels, 4)}
    residual = None
    if args.residual is not None:
        residual_rate = args.rate if args.residual_rate is None else args.residual_rate
        residual = codec.encode_residual(image, base, residual_rate)
        Path(args.residual).write_bytes(residual)
        report |= {"residual_bytes": len(residual), "residual_bpp": round(8 * len(residual) / pixels, 4)}
    if args.lossless is not None:
        method = METHODS[("frame", "residual").index(args.lossless_method)]
        layer = codec.encode_lossless(image, base.data, residual, method)
        Path(args.lossless).write_bytes(layer)
        report |= {"lossless_bytes": len(layer), "lossless_bpp": round(8 * len(layer) / pixels, 4)}
    print(json.dumps(report))


def cmd_decode(args: argparse.Namespace) -> None:
    import cv2

    from .codec.api import MODE_OF_KIND
    from .codec.bitstream import BitstreamError, unpack

    residual = Path(args.residual).read_bytes() if args.residual else None
    if residual is not None:
        kind = unpack(residual)[0].kind
        if kind not in MODE_OF_KIND:
            raise BitstreamError(f"{args.residual} is a {kind.name.lower()} layer, not a residual layer")
        args.mode = MODE_OF_KIND[kind]
    codec = _codec(args, with_residual=residual is not None)
    base = Path(args.base).read_bytes()
    if args.lossless:
        image = codec.decode_original(base, Path(args.lossless).read_bytes(), residual)
    elif residual is not None:
        image = codec.decode_human(base, residual)
    else:
        image = codec.decode_machine(base)
    if not cv2.imwrite(args.output, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write {args.output}")


def cmd_info(args: argparse.Namespace) -> None:
    from .codec.api import inspect

    print(json.dumps(inspect(Path(args.file).read_bytes()), indent=2))


def cmd_train(args: argparse.Namespace) -> None:
    from .training.trainer import TrainConfig, Trainer

    kind = args.mode if args.layer == "residual" else args.layer
    cfg = TrainConfig(
        kind=kind, out_dir=Path(args.out), shared_dir=Path(args.shared),
        base_weights=Path(args.base_weights) if args.base_weights else None,
        mask_provider=args.masks, detector=Path(args.detector) if args.detector else None,
        sam_checkpoint=Path(args.sam_checkpoint) if args.sam_checkpoint else None,
        lambda_min=args.lambda_min, lambda_max=args.lambda_max, steps=args.steps, batch=args.batch,
        crop=args.crop, lr=args.lr, threads=args.threads, seed=args.seed, checkpoint_minutes=args.checkpoint_minutes,
        validate_every=args.validate_every, max_minutes=args.max_minutes,
        init_from=Path(args.init_from) if args.init_from else None, architecture=args.architecture,
        background_weight=args.background_weight, feature_weight=args.feature_weight, precision=args.precision,
        hard_rate=args.hard_rate, synthesis_only=args.synthesis_only, entropy_only=args.entropy_only,
    )
    Trainer(cfg).run()


def cmd_export(args: argparse.Namespace) -> None:
    from .codec.weights import export_weights

    extra = json.loads(Path(args.manifest).read_text()) if args.manifest else {}
    print(json.dumps(export_weights(args.checkpoint, args.output, extra), indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icmh", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def codec_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--weights", help="folder with sa-icm.pt / pr-icmh.pt / fr-icmh.pt (default: shipped)")
        sp.add_argument("--mode", choices=("pr", "fr", "avif"), default="pr",
                        help="residual layer kind: learned PR-/FR-ICMH, or x - x̂_m coded by AVIF")

    e = sub.add_parser("encode", help="code an image into a base layer and optionally a residual layer")
    e.add_argument("image")
    e.add_argument("--base", required=True, help="output base-layer file")
    e.add_argument("--residual", help="output residual-layer file")
    e.add_argument("--rate", type=float, default=0.5, help="R in [0,1]: 0 smallest stream, 1 best quality")
    e.add_argument("--residual-rate", type=float, help="rate of the residual layer (default: --rate)")
    e.add_argument("--lossless", help="output lossless layer file (evidence tier: decodes to the exact input)")
    e.add_argument("--lossless-method", choices=("frame", "residual"), default="frame",
                   help="lossless WebP of the frame, or of the residual to the human image (needs --residual)")
    codec_flags(e)
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="decode the machine image (base), the human image (base + residual) "
                                      "or the exact original (+ lossless)")
    d.add_argument("--base", required=True)
    d.add_argument("--residual")
    d.add_argument("--lossless", help="lossless layer: write the captured frame pixel for pixel")
    d.add_argument("-o", "--output", required=True)
    codec_flags(d)
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="print the header fields of a layer file")
    i.add_argument("file")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train a codec (resumes from OUT/last.pt)")
    d = config_default  # every training default is TrainConfig's
    t.add_argument("layer", choices=("base", "residual", "single"))
    t.add_argument("--mode", choices=("pr", "fr"), default="pr", help="residual layer kind")
    t.add_argument("--out", required=True, help="run folder (checkpoints, log.csv, val.csv, curves.png)")
    t.add_argument("--shared", default=str(d("shared_dir")), help="folder with data/ (../shared, $ICMH_DATA)")
    t.add_argument("--base-weights", help="frozen SA-ICM weights or checkpoint (residual training)")
    t.add_argument("--masks", default=d("mask_provider"), choices=MASK_PROVIDERS,
                   help="mask provider of the base (default %(default)s)")
    t.add_argument("--detector", help="YOLO checkpoint: box masks of unlabelled images and, for the base, "
                                      "checkpoint selection by detection fidelity (best.pt)")
    t.add_argument("--background-weight", type=float, default=d("background_weight"),
                   help="base: weight of the squared error outside the mask (%(default)s = SA-ICM as published)")
    t.add_argument("--feature-weight", type=float, default=d("feature_weight"),
                   help="base: weight of the detector's backbone-feature distance (needs --detector; "
                        "default %(default)s = off)")
    t.add_argument("--sam-checkpoint", help="Segment Anything checkpoint (--masks sam)")
    t.add_argument("--architecture", help="registered architecture (default per layer)")
    t.add_argument("--lambda-min", type=float, help="smallest λ (default per layer)")
    t.add_argument("--lambda-max", type=float, help="largest λ (default per layer)")
    t.add_argument("--steps", type=int, default=d("steps"),
                   help="optimiser steps in all, a resumed run's included (default %(default)s)")
    t.add_argument("--batch", type=int, default=d("batch"), help="crops per step (default %(default)s)")
    t.add_argument("--crop", type=int, default=d("crop"), help="crop side in pixels (default %(default)s)")
    t.add_argument("--lr", type=float, default=d("lr"), help="learning rate (default %(default)s)")
    t.add_argument("--threads", type=int, default=d("threads"), help="torch threads (default %(default)s)")
    t.add_argument("--seed", type=int, default=d("seed"),
                   help="seed of the initial weights and of the crops (default %(default)s)")
    t.add_argument("--checkpoint-minutes", type=float, default=d("checkpoint_minutes"),
                   help="write OUT/last.pt this often (default %(default)s)")
    t.add_argument("--validate-every", type=int, default=d("validate_every"),
                   help="steps between validations on real bitstreams (default %(default)s)")
    t.add_argument("--precision", default=d("precision"), choices=("auto", "fp32", "bf16"),
                   help="arithmetic of the transforms g_a / g_s in training; bf16 is ~2x faster on CPUs with AMX "
                        "or AVX512-BF16 and many times slower elsewhere (emulated); auto takes bf16 where it is "
                        "native; the entropy model stays fp32 (default %(default)s)")
    t.add_argument("--hard-rate", action="store_true",
                   help="fine-tune the decoder side on the rate of the rounded latent with the encoder frozen (the "
                        "'hard' stage of soft-then-hard training, Guo et al., ICML 2021)")
    t.add_argument("--synthesis-only", action="store_true",
                   help="train the synthesis g_s alone: the encoder and the entropy model stay frozen, so the coded "
                        "bits stay those of --init-from and the decoder learns to decode them better")
    t.add_argument("--entropy-only", action="store_true",
                   help="PR layer: train the entropy model alone (hyperprior, slice and context networks) on the "
                        "rate of the rounded symbols; the transforms and gains stay frozen, so every latent and "
                        "pixel stays that of --init-from and only the bits change; no synthesis runs (fast)")
    t.add_argument("--max-minutes", type=float, help="stop after this much wall time (default: no limit)")
    t.add_argument("--init-from", help="warm start from another checkpoint or weights file (tensors of the same "
                                       "shape; a larger tensor takes the old one's entries, widened so that the "
                                       "model starts as the old one)")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="write compact fp16 weights + manifest from a checkpoint")
    x.add_argument("checkpoint")
    x.add_argument("output")
    x.add_argument("--manifest", help="JSON file with extra manifest fields (data, lambdas, figures)")
    x.set_defaults(func=cmd_export)

    add_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .codec.bitstream import BitstreamError

    args = build_parser().parse_args(argv)
    try:
        reexec_with_fast_allocator(argv)
        args.func(args)
    except (BitstreamError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"icmh: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
