"""Training loops: SA-ICM base, PR-/FR-ICMH residual (base frozen) and single layer.

Losses (λ·255² scaling as in CompressAI; bits per pixel of the image):

* base:   R(y) + R(z) + λ·mse(x⊙m, x̂⊙m)            (SA-ICM; Tatsumi et al. Eq. (1))
* pr:     R(yd) + R(zd) + λ·mse(x_d, x̂_d)          (PR-ICMH; Eq. (6)), x_d = x − x̂_m
* fr:     R(ya) + R(z) + λ·mse(x, x̂)               (FR-ICMH; Eq. (5))
* single: R(y) + R(z) + λ·mse(x, x̂)                 (single-layer reference)

λ is drawn per sample through the rate index q (variable-rate training, see
:mod:`icmh.codec.rate`). Checkpoints are written atomically every
``checkpoint_minutes`` and at the end; a run resumes from ``last.pt``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..codec.exact import exact_arithmetic
from ..codec.models import ChannelARCodec, ConditionalResidualCodec, FeatureResidualCodec, build_model, machine_side
from ..codec.precision import native_bf16
from ..codec.rate import RATE_STEPS, GainUnit, lambda_for_index
from ..codec.weights import LoadedModel, load_layer, load_state, prepare
from .config import KIND_ARCHITECTURE, TrainConfig, frozen_part
from .data import CropSampler, load_detection_monitor_set, load_training_set
from .detector_features import DetectorFeatureLoss
from .masks import cached_masks

GRADIENTS = "rd-clip-v2"  # what the Adam moments in a checkpoint were computed from (see train_step)
WARMUP_STEPS = 500
MAX_FAILED_STEPS = 20  # consecutive non-finite steps before a run stops
MONITOR_RATES = (0.0, 0.3, 0.6)
MONITOR_BPP = (0.1, 0.2)  # the score is the fidelity interpolated at these rates (bits per pixel)


def to_tensor(batch: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)


def bits_per_pixel(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Per-sample rate in bits per image pixel."""
    total = sum(torch.log(v).flatten(1).sum(1) for v in likelihoods.values())
    return total / (-math.log(2) * num_pixels)


def warm_start(model: ChannelARCodec, path: Path) -> int:
    """Load ``path``'s learned tensors (parameters) that fit ``model`` (``--init-from``); returns how many were taken.

    A training checkpoint keeps its tensors under "model", an exported weights file under "state_dict".
    Buffers are never taken: they are entropy tables (rebuilt) or constants of the architecture, and an fp16
    export flushes some of those to zero (CompressAI's likelihood lower bound of 1e-9, GDN's pedestal), after
    which a likelihood can underflow to 0 and a step's loss becomes inf (the NaN of the pr-icmh-ce runs warm-started
    from shipped weights). A larger tensor here takes the old one's entries (:func:`widened`): the conditional codec's
    ``[x_d, x̂_m]`` input, a wider synthesis (``pr-icmh-cw`` from ``pr-icmh-ce``) start as the codec they came from.
    A wider gain table (another slice: ``pr-icmh-cb4`` from ``pr-icmh-cb``) gives its new channels each level's mean
    gain; the new slice reaches the synthesis through zero weights, so the pixels are still the old codec's.
    """
    state = load_state(path)  # a user-supplied file: tensors only
    source = state.get("model") or state.get("state_dict") or state
    own = dict(model.named_parameters())
    taken = {}
    for k, v in source.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            taken[k] = v.float()
            continue
        owner = _owner(model, k)
        if (wide := widened(own[k], v.float(), transposed=isinstance(owner, nn.ConvTranspose2d))) is not None:
            if isinstance(owner, GainUnit):
                # new latent channels (another slice): each level's mean gain; a zero gain would leave them unused
                wide[:, v.shape[1]:] = v.float().abs().mean(dim=1, keepdim=True)
            taken[k] = wide
    with torch.no_grad():
        for k, v in taken.items():
            own[k].copy_(v)
    return len(taken)


def widened(own: Tensor, source: Tensor, *, transposed: bool = False) -> Tensor | None:
    """``source`` placed inside the larger tensor ``own`` so that the layer computes what it computed before
    (function-preserving widening, cf. Chen et al., "Net2Net", ICLR 2016); ``None`` if it does not fit.

    The source's entries keep their place. The weights on new *input* channels are zero: the layer ignores the new
    features of its producer (or the conditional codec's new x̂_m / ŷ_m inputs). New *output* channels keep ``own``'s
    initial values, so they compute something and their consumers' zero weights receive gradients. A convolution
    weight is ``(out, in, k, k)``, a transposed one ``(in, out, k, k)``; kernels must be the same size.
    """
    if own.dim() != source.dim() or own.shape == source.shape:
        return None
    if any(a < b for a, b in zip(own.shape, source.shape, strict=True)) or own.shape[2:] != source.shape[2:]:
        return None
    wide = own.detach().float().clone()
    if own.dim() >= 2:
        inputs = 0 if transposed else 1
        wide.narrow(inputs, source.shape[inputs], own.shape[inputs] - source.shape[inputs]).zero_()
    wide[tuple(slice(0, n) for n in source.shape)] = source
    return wide


def training_precision(requested: str) -> str:
    """``fp32`` or ``bf16`` for ``--precision``: ``auto`` takes bfloat16 only where oneDNN runs it natively (AMX,
    AVX512-BF16). Elsewhere bfloat16 is emulated: on a 2-core AMD EPYC (AVX2) a pr-icmh-cb4d step took ~50 s instead
    of ~5 s in float32, so an explicit ``bf16`` there gets a warning."""
    if requested == "auto":
        return "bf16" if native_bf16() else "fp32"
    if requested == "bf16" and not native_bf16():
        print("warning: --precision bf16 on a CPU without native bfloat16 (AMX / AVX512-BF16) runs emulated and is "
              "many times slower than fp32", file=sys.stderr)
    return requested


def _owner(model: nn.Module, name: str) -> nn.Module:
    """The module that holds the parameter ``name``."""
    return model.get_submodule(name.rpartition(".")[0])


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        self.arch = cfg.architecture or KIND_ARCHITECTURE[cfg.kind]
        self.model = build_model(self.arch)
        self.model.train_precision = training_precision(cfg.precision)
        if cfg.hard_rate:
            self.model.use_hard_rate(True)
            for p in self.model.encoder_parameters():
                p.requires_grad_(False)
        self.base: ChannelARCodec | None = None
        self.base_layer: LoadedModel | None = None  # the frozen base with its identity (pr / fr)
        if cfg.kind in ("pr", "fr"):
            if cfg.base_weights is None:
                raise ValueError("residual training needs --base-weights (the frozen SA-ICM)")
            self.base_layer = load_layer(cfg.base_weights)
            self.base = self.base_layer.model
            for p in self.base.parameters():
                p.requires_grad_(False)
        if cfg.synthesis_only:
            self.params = self._train_only(self.model.g_s.parameters())
        elif cfg.entropy_only:
            if not isinstance(self.model, ConditionalResidualCodec):
                raise ValueError("--entropy-only trains the entropy model of a conditional PR layer (pr-icmh-c*)")
            self.model.use_hard_rate(True)
            transforms = {id(p) for m in (self.model.g_a, self.model.g_s, self.model.gain) for p in m.parameters()}
            entropy = [(n, p) for n, p in self.model.named_parameters() if id(p) not in transforms]
            self._train_only(p for _, p in entropy)  # the quantiles too: the aux step fits them to the new ẑ
            self.params = [p for n, p in entropy if not n.endswith(".quantiles")]
        else:  # --hard-rate's frozen encoder stays in the optimiser (its checkpoints resume either way)
            self.params = [p for n, p in self.model.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in self.model.named_parameters() if n.endswith(".quantiles")]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        self.aux_opt = torch.optim.Adam(aux, lr=1e-3)
        self.step = 0
        self.skipped_steps = 0  # updates skipped for a non-finite loss or gradient (this process)
        self.failed_in_a_row = 0
        self.elapsed = 0.0
        self.warmup_until = 0  # lr ramps up linearly until this step (after a reset of the Adam moments)
        self.ckpt = cfg.out_dir / "last.pt"
        if self.ckpt.exists():
            self._resume()
        elif cfg.init_from is not None:
            self._warm_start(cfg.init_from)
        self._set_lr()
        self.log_path = cfg.out_dir / "log.csv"
        self.val_path = cfg.out_dir / "val.csv"
        self.best_path = cfg.out_dir / "best.pt"
        self.monitor: DetectionMonitor | None = None
        self.feature_loss: DetectorFeatureLoss | None = None
        if cfg.kind == "base" and cfg.feature_weight > 0:
            if cfg.detector is None:
                raise ValueError("--feature-weight needs --detector (the YOLO checkpoint whose features count)")
            self.feature_loss = DetectorFeatureLoss(cfg.detector)

    def _train_only(self, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        """Freeze every parameter but ``params`` (returned as the optimiser's list).

        ``--synthesis-only``: only g_s trains. The analysis, the hyperprior, the slice networks, the gains and the
        entropy bottleneck's quantiles keep their values, so the coder writes the same bits for every image and
        the loss reduces to λ·MSE of the decoder: a deeper synthesis warm-started from a trained codec learns to
        decode that codec's latents better, and no backward pass runs through the encoder or the entropy model.

        ``--entropy-only``: the converse. g_a, g_s and the gains stay, so every latent y (and, up to the means'
        rounding offsets, every pixel) stays; the hyperprior, the context and slice networks and the quantiles
        learn to code the same symbols in fewer bits. The loss is the rate of the rounded symbols (the "hard"
        rate of Guo et al., ICML 2021, :meth:`~icmh.codec.models.ChannelARCodec.use_hard_rate`), and no synthesis
        runs: a step costs the frozen transforms' forward pass and the entropy model at 1/16 resolution."""
        params = list(params)
        keep = {id(p) for p in params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in keep)
        return params

    # -- persistence ---------------------------------------------------------------------
    def _resume(self) -> None:
        state = load_state(self.ckpt)
        config = state.get("config", {})
        then = frozen_part(config.get("synthesis_only", False), config.get("entropy_only", False))
        if then != (now := self.cfg.frozen_part()):
            raise ValueError(f"{self.ckpt} was trained {then or 'with every part'}, this run {now or 'with every part'}"
                             ": resume it the same way, or start a new --out with --init-from")
        self.model.load_state_dict(state["model"])
        self.aux_opt.load_state_dict(state["aux_optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.warmup_until = state.get("warmup_until", 0)
        if state.get("gradients") == GRADIENTS:
            self.opt.load_state_dict(state["optimizer"])
        else:
            # Older checkpoints clipped the rate-distortion gradient together with a stale aux-loss gradient, so
            # their Adam moments describe gradients ~100x smaller than today's: restart them and warm the lr up.
            self.warmup_until = self.step + WARMUP_STEPS
            print(f"{self.ckpt}: optimizer moments from an older gradient definition, reset "
                  f"(lr warm-up until step {self.warmup_until})")
        print(f"resumed {self.ckpt} at step {self.step} ({self.elapsed / 60:.1f} min trained)")

    def _set_lr(self) -> None:
        ramp = WARMUP_STEPS - (self.warmup_until - self.step)
        scale = 1.0 if self.step >= self.warmup_until else max(ramp, 1) / WARMUP_STEPS
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * scale

    def _warm_start(self, path: Path) -> None:
        taken = warm_start(self.model, path)
        self.warmup_until = WARMUP_STEPS  # fresh Adam moments on trained weights
        print(f"warm start from {path}: {taken}/{len(self.model.state_dict())} tensors")

    def save(self) -> None:
        state = {
            "architecture": self.arch,
            "kind": self.cfg.kind,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "aux_optimizer": self.aux_opt.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "gradients": GRADIENTS,
            "warmup_until": self.warmup_until,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.cfg).items()},
        }
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt)

    # -- data ----------------------------------------------------------------------------
    def _data(self) -> tuple[CropSampler, list[np.ndarray]]:
        cfg = self.cfg
        train = load_training_set(cfg.shared_dir)
        masks = None
        if cfg.kind == "base":
            masks = cached_masks(
                train.samples, cfg.mask_provider, cfg.out_dir.parent / "masks",
                detector=cfg.detector, sam_checkpoint=cfg.sam_checkpoint,
            )
        sampler = CropSampler([s.image for s in train.samples], masks, cfg.crop, seed=cfg.seed + self.step)
        held = [s.image for s in load_training_set(cfg.shared_dir, held_out=True).samples[:6]]
        print(f"{len(train)} training images, {len(held)} held-out monitoring images")
        return sampler, held

    # -- one step ------------------------------------------------------------------------
    def losses(self, x: Tensor, mask: Tensor | None, q: Tensor) -> dict[str, Tensor]:
        lam = lambda_for_index(q, *self.cfg.lambdas())
        n_pixels = x.shape[2] * x.shape[3]
        kind = self.cfg.kind
        if kind in ("base", "single"):
            out = self.model(x, q)
            err = out["x_hat"] - x
            if mask is not None:
                # SA-ICM: only the masked error counts; an optional small background weight anchors colours.
                weight = mask + self.cfg.background_weight * (1 - mask)
                mse = (err.pow(2) * weight).flatten(1).mean(1)
            else:
                mse = err.pow(2).flatten(1).mean(1)
            if self.feature_loss is not None:
                mse = mse + self.cfg.feature_weight * self.feature_loss(out["x_hat"], x)
        else:
            assert self.base is not None
            q_base = torch.randint(0, RATE_STEPS + 1, (x.shape[0],))
            with torch.no_grad(), exact_arithmetic(False):
                base = self.base(x, q_base)
            if kind == "pr":
                x_m = base["x_hat"].clamp(0, 1)
                x_d = x - x_m
                side = machine_side(self.model, x_m, base["y_hat"])
                if self.cfg.entropy_only:  # the rate alone: the pixels are the frozen transforms' (no "mse")
                    bpp = bits_per_pixel(self.model.likelihoods(x_d, q, *side), n_pixels).mean()
                    return {"loss": bpp, "bpp": bpp}
                out = self.model(x_d, q, *side)
                mse = (out["x_hat"] - x_d).pow(2).flatten(1).mean(1)
            else:
                assert isinstance(self.model, FeatureResidualCodec)
                out = self.model(x, q, base["y_hat"])
                mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
        bpp = bits_per_pixel(out["likelihoods"], n_pixels)
        loss = (lam * 255**2 * mse + bpp).mean()
        return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean()}

    @torch.no_grad()
    def validate(self, held: list[np.ndarray]) -> dict[str, float]:
        """Real compress/decompress on held-out images at three rates."""
        from ..codec.api import ScalableCodec
        from ..metrics import psnr

        self.model.eval()
        self.model.update(force=True)
        layer = prepare(self.model, self.arch)
        if self.base_layer is None:
            codec = ScalableCodec(layer)
        else:
            codec = ScalableCodec(self.base_layer, layer, mode=self.cfg.kind)
        rows = {}
        for rate in (0.0, 0.5, 1.0):
            bpps, psnrs = [], []
            for image in held:
                pixels = image.shape[0] * image.shape[1]
                if self.base is None:
                    data = codec.encode_base(image, rate).data
                    decoded, size = codec.decode_machine(data), len(data)
                else:
                    base, residual = codec.encode(image, 0.5, rate)
                    decoded, size = codec.decode_human(base, residual), len(base) + len(residual)
                bpps.append(8 * size / pixels)
                psnrs.append(min(psnr(image, decoded), 100.0))
            rows[f"bpp@{rate}"] = round(float(np.mean(bpps)), 4)
            rows[f"psnr@{rate}"] = round(float(np.mean(psnrs)), 3)
        if self.monitor is not None:
            rows.update(self.monitor.evaluate(codec))
        self.model.train()
        return rows

    def train_step(self, x: Tensor, mask: Tensor | None, q: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """One optimiser step on the rate-distortion loss, one on the entropy bottleneck's aux loss.

        As in CompressAI's example trainer both gradients are cleared first and the norm clip sees only the
        rate-distortion gradient (a stale aux gradient on the quantiles would shrink it by ~100x).
        """
        self._set_lr()
        self.opt.zero_grad(set_to_none=True)
        self.aux_opt.zero_grad(set_to_none=True)
        out = self.losses(x, mask, q)
        out["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if not (torch.isfinite(out["loss"]) and torch.isfinite(norm)):
            # one non-finite batch must not poison the weights and the Adam moments (a pr-icmh-ce run lost its
            # weights to NaN at step ~8,500 this way): skip its update; a run that keeps failing stops
            self.skipped_steps += 1
            self.failed_in_a_row += 1
            if self.failed_in_a_row >= MAX_FAILED_STEPS:
                raise ValueError(f"{MAX_FAILED_STEPS} steps in a row had a non-finite loss or gradient "
                                 f"(step {self.step}): lower --lr or resume from an earlier checkpoint")
            self.opt.zero_grad(set_to_none=True)
            print(f"step {self.step}: non-finite loss or gradient, update skipped "
                  f"({self.skipped_steps} so far)", file=sys.stderr)
            return out, torch.zeros(())
        self.failed_in_a_row = 0
        self.opt.step()
        aux = self.model.aux_loss()
        if not self.cfg.synthesis_only:  # the quantiles set the ẑ tables: frozen with the rest of the coder
            aux.backward()
            self.aux_opt.step()
        self.step += 1
        return out, aux

    def run(self) -> None:
        cfg = self.cfg
        sampler, held = self._data()
        if cfg.kind == "base" and cfg.detector is not None:
            self.monitor = DetectionMonitor(cfg.shared_dir, cfg.detector)
            if not self.val_path.exists():
                self._validation_row(held)  # the starting point (e.g. a warm start) is a candidate too
        self.model.train()
        from tqdm import tqdm

        last_ckpt = time.monotonic()
        start = time.monotonic()
        stop = {"requested": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
        new_log = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as fh:
            log = csv.writer(fh)
            if new_log:
                log.writerow(["step", "minutes", "loss", "bpp", "psnr_or_masked_psnr", "aux", "lr"])
            bar = tqdm(total=cfg.steps, initial=self.step, dynamic_ncols=True, mininterval=30)
            while self.step < cfg.steps:
                t0 = time.monotonic()
                xs, ms = sampler.batch(cfg.batch)
                x = to_tensor(xs)
                mask = None if ms is None else torch.from_numpy(ms)[:, None]
                q = torch.randint(0, RATE_STEPS + 1, (cfg.batch,))
                out, aux = self.train_step(x, mask, q)
                self.elapsed += time.monotonic() - t0
                if self.failed_in_a_row:  # update skipped (non-finite): no step to log, validate or save
                    continue
                bar.update(1)
                if self.step % 50 == 0:
                    psnr = -10 * math.log10(max(out["mse"].item(), 1e-10)) if "mse" in out else math.nan
                    loss, bpp = out["loss"].item(), out["bpp"].item()
                    log.writerow([self.step, f"{self.elapsed / 60:.2f}", f"{loss:.4f}", f"{bpp:.4f}",
                                  "" if math.isnan(psnr) else f"{psnr:.2f}", f"{aux.item():.2f}",
                                  self.opt.param_groups[0]["lr"]])
                    fh.flush()
                    bar.set_postfix(loss=f"{loss:.3f}", bpp=f"{bpp:.3f}", psnr=f"{psnr:.1f}")
                if self.step % cfg.validate_every == 0:
                    self._validation_row(held)
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    self.save()
                    last_ckpt = time.monotonic()
                if stop["requested"] or (cfg.max_minutes and time.monotonic() - start > cfg.max_minutes * 60):
                    break
            bar.close()
        self.save()
        self._validation_row(held)

    def _validation_row(self, held: list[np.ndarray]) -> None:
        row = {"step": self.step, "minutes": round(self.elapsed / 60, 2), **self.validate(held)}
        if "detection" in row:
            self._keep_best(row["detection"])
        new = not self.val_path.exists()
        with open(self.val_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        print(json.dumps(row))
        from .curves import plot_training_curves

        plot_training_curves(self.cfg.out_dir)

    def _keep_best(self, score: float) -> None:
        """Copy the checkpoint to ``best.pt`` (score in ``best.json``) when the detector-based score improves."""
        record = self.best_path.with_suffix(".json")
        best = json.loads(record.read_text())["detection"] if record.exists() else -1.0
        if score > best:
            self.save()
            tmp = self.best_path.with_suffix(".tmp")
            tmp.write_bytes(self.ckpt.read_bytes())
            os.replace(tmp, self.best_path)
            record.write_text(json.dumps({"step": self.step, "detection": score}))
            print(f"best checkpoint so far (detection fidelity {score:.4f}) -> {self.best_path}")


class DetectionMonitor:
    """Checkpoint selection by what the cloud detector still finds in machine images.

    On held-out training-set images (:func:`load_detection_monitor_set`) the detector's boxes on
    the original (score >= 0.25, road users) serve as ground truth; the mAP50-95 of its boxes on
    the decoded base layer at ``MONITOR_RATES`` gives a rate-accuracy curve, and the score is that
    curve read at ``MONITOR_BPP`` (linear in log-bpp), so checkpoints of different rates compare fairly.
    """

    def __init__(self, shared_dir: Path, checkpoint: Path) -> None:
        from ..detector import YoloDetector

        self.detector = YoloDetector.for_evaluation(checkpoint)
        self.images = [s.image for s in load_detection_monitor_set(shared_dir).samples]
        self.truths = [self.detector.detect(image).road_users() for image in self.images]
        print(f"detection monitor: {len(self.images)} images, {sum(len(t.classes) for t in self.truths)} objects")

    def evaluate(self, codec) -> dict[str, float]:  # noqa: ANN001 - ScalableCodec (imported lazily)
        from ..bench.detection_map import mean_average_precision
        from ..detector import ROAD_USERS

        rows: dict[str, float] = {}
        curve = []
        for rate in MONITOR_RATES:
            detections, bits, pixels = [], 0, 0
            for image in self.images:
                data = codec.encode_base(image, rate).data
                detections.append(self.detector.detect(codec.decode_machine(data, exact_pixels=False)))
                bits, pixels = bits + 8 * len(data), pixels + image.shape[0] * image.shape[1]
            result = mean_average_precision(detections, self.truths, ROAD_USERS)
            rows[f"det_bpp@{rate}"] = round(bits / pixels, 4)
            rows[f"det_map@{rate}"] = round(result.map50_95, 4)
            curve.append((bits / pixels, result.map50_95))
        rows["detection"] = round(float(np.mean([accuracy_at(curve, b) for b in MONITOR_BPP])), 4)
        return rows


def accuracy_at(curve: list[tuple[float, float]], bpp: float) -> float:
    """Accuracy of a rate-accuracy curve at ``bpp``: linear in log-bpp between the two nearest points
    (extrapolated beyond the ends, clipped to [0, 1])."""
    points = sorted(curve)
    if len(points) == 1:
        return float(points[0][1])
    rates = np.log([r for r, _ in points])
    values = [v for _, v in points]
    i = int(np.clip(np.searchsorted(rates, np.log(bpp)), 1, len(points) - 1))
    slope = (values[i] - values[i - 1]) / max(rates[i] - rates[i - 1], 1e-9)
    return float(np.clip(values[i - 1] + slope * (np.log(bpp) - rates[i - 1]), 0.0, 1.0))
