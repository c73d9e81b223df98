"""Training pipeline: mask providers, data guards, a real (tiny) train / resume / export cycle."""

from __future__ import annotations

import csv
import json
import shutil
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from icmh.codec import ScalableCodec
from icmh.codec.api import image_to_tensor
from icmh.codec.exact import exact_arithmetic
from icmh.codec.models import build_model
from icmh.codec.precision import native_bf16
from icmh.codec.weights import export_weights
from icmh.splits import check_training_path, video_frames
from icmh.training.data import load_detection_monitor_set, load_training_set
from icmh.training.detector_features import DetectorFeatureLoss
from icmh.training.masks import SamBoundaries, boxes_to_mask, edge_mask
from icmh.training.trainer import (
    MAX_FAILED_STEPS,
    WARMUP_STEPS,
    TrainConfig,
    Trainer,
    accuracy_at,
    training_precision,
    warm_start,
)
from tests.test_codec import kodak


def tiny_sam():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim = 32
    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=1, embed_dim=dim, img_size=1024, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[0],
            window_size=14, out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def test_sam_provider_runs_end_to_end_with_tiny_random_sam() -> None:
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:70, 30:90] = (200, 40, 40)
    provider = SamBoundaries(
        None, sam_model=tiny_sam(), points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        points_per_batch=16,
    )
    records = provider.generator.generate(image)
    assert records, "tiny SAM produced no masks"
    mask = provider(image)
    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


def test_sam_provider_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="SAM checkpoint"):
        SamBoundaries(tmp_path / "missing.pth")


def test_edge_mask_marks_object_boundaries_only() -> None:
    image = np.full((64, 64, 3), 30, np.uint8)
    image[16:48, 16:48] = 220
    mask = edge_mask(image)
    assert mask[16, 32] == 1 and mask[32, 16] == 1  # on the square's border
    assert mask[32, 32] == 0 and mask[2, 2] == 0  # flat inside and outside


def test_boxes_are_enlarged_and_clipped() -> None:
    mask = boxes_to_mask(np.array([[10, 10, 20, 20], [55, 55, 70, 70]], np.float32), 64, 64)
    assert mask[9, 9] == 1 and mask[8, 8] == 0  # 1.2x: 1 pixel margin each side
    assert mask[63, 63] == 1 and mask.shape == (64, 64)


@pytest.mark.parametrize("path", ["/x/kodak/01.png", "/x/road_traffic4/val/a.jpg", "/x/coco128/images/train/b.jpg"])
def test_evaluation_sets_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="evaluation set"):
        check_training_path(Path(path))


@pytest.fixture(scope="module")
def mini_shared(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real training images laid out like ../shared/data."""
    root = tmp_path_factory.mktemp("mini_shared")
    data = shared_dir / "data"
    for split in ("train", "val"):
        dst = root / "data" / "bsds500" / split
        dst.mkdir(parents=True)
        for p in sorted((data / "bsds500" / split).glob("*.jpg"))[:3]:
            shutil.copy(p, dst)
    rt4 = root / "data" / "road_traffic4" / "train"
    (rt4 / "images").mkdir(parents=True)
    (rt4 / "labels").mkdir(parents=True)
    for p in sorted((data / "road_traffic4" / "train" / "images").glob("*.jpg"))[:15]:
        shutil.copy(p, rt4 / "images")
        shutil.copy(data / "road_traffic4" / "train" / "labels" / (p.stem + ".txt"), rt4 / "labels")
    return root


def test_training_set_excludes_held_out_and_reads_labels(mini_shared: Path) -> None:
    train = load_training_set(mini_shared)
    keys = [s.key for s in train.samples]
    assert len(keys) == 3 + 14 and not any("/val/" in k for k in keys)
    assert sum(s.boxes is not None and len(s.boxes) > 0 for s in train.samples) >= 1


def test_detection_monitor_images_are_never_trained_on(mini_shared: Path) -> None:
    monitor = [s.key for s in load_detection_monitor_set(mini_shared).samples]
    train = {s.key for s in load_training_set(mini_shared).samples}
    assert len(monitor) == 1 and monitor[0].startswith("road_traffic4/train/") and monitor[0] not in train


def test_video_splits_are_disjoint_and_cover_the_tail() -> None:
    """Training, checkpoint selection and test frames of a video never overlap (shared/splits.py)."""
    for n in (754, 905, 40):
        parts = {part: set(video_frames(n, part, stride=1)) for part in ("train", "selection", "test")}
        assert not parts["train"] & parts["selection"] and not parts["selection"] & parts["test"]
        assert not parts["train"] & parts["test"]
        assert parts["train"] | parts["selection"] | parts["test"] == set(range(n))
    with pytest.raises(ValueError):
        video_frames(10, "validation")


def test_train_resume_export_and_residual_cycle(mini_shared: Path, shared_dir: Path, tmp_path: Path) -> None:
    common = dict(shared_dir=mini_shared, steps=3, batch=2, crop=64, threads=1, validate_every=1000)
    base_cfg = TrainConfig(kind="base", out_dir=tmp_path / "base", architecture="sa-icm-tiny", mask_provider="edges",
                           detector=shared_dir / "models" / "yolov8n.pt", background_weight=0.05, **common)
    Trainer(base_cfg).run()
    rows = list(csv.DictReader(open(tmp_path / "base" / "val.csv")))
    assert [int(r["step"]) for r in rows] == [0, 3] and float(rows[-1]["bpp@1.0"]) > 0
    assert all(0.0 <= float(r["detection"]) <= 1.0 for r in rows)  # detector-based checkpoint selection ran
    best = json.loads((tmp_path / "base" / "best.json").read_text())
    assert best["detection"] == max(float(r["detection"]) for r in rows)
    assert torch.load(tmp_path / "base" / "best.pt", weights_only=False)["step"] == best["step"]

    resumed = Trainer(TrainConfig(**{**base_cfg.__dict__, "steps": 5}))
    assert resumed.step == 3
    resumed.run()
    assert torch.load(tmp_path / "base" / "last.pt", weights_only=False)["step"] == 5

    manifest = export_weights(tmp_path / "base" / "last.pt", tmp_path / "w" / "sa-icm.pt", {"lambda": [0.002, 0.06]})
    assert manifest["steps"] == 5 and len(manifest["sha256"]) == 64
    assert json.loads((tmp_path / "w" / "sa-icm.json").read_text())["weights_hash"] == manifest["weights_hash"]

    pr_cfg = TrainConfig(kind="pr", out_dir=tmp_path / "pr", architecture="pr-icmh-tiny",
                         base_weights=tmp_path / "w" / "sa-icm.pt", **common)
    Trainer(pr_cfg).run()
    export_weights(tmp_path / "pr" / "last.pt", tmp_path / "w" / "pr-icmh.pt", {})
    codec = ScalableCodec.from_weights(tmp_path / "w")
    image = cv2.cvtColor(cv2.imread(str(next((mini_shared / "data" / "bsds500" / "val").glob("*.jpg")))),
                         cv2.COLOR_BGR2RGB)
    base, residual = codec.encode(image)
    assert codec.decode_human(base, residual).shape == image.shape


def test_accuracy_at_reads_the_curve_in_log_bpp() -> None:
    curve = [(0.2, 0.4), (0.1, 0.2), (0.4, 0.5)]  # unsorted on purpose
    assert accuracy_at(curve, 0.1) == pytest.approx(0.2)
    assert accuracy_at(curve, 0.2 * 2**0.5) == pytest.approx(0.45)  # halfway in log-bpp
    assert accuracy_at(curve, 0.05) == pytest.approx(0.0)  # extrapolated, clipped at 0
    assert accuracy_at(curve, 0.8) == pytest.approx(0.6)
    assert accuracy_at([(0.3, 0.25)], 0.1) == pytest.approx(0.25)


def test_detector_feature_loss_is_zero_on_identity_and_drives_gradients(shared_dir: Path) -> None:
    loss = DetectorFeatureLoss(shared_dir / "models" / "yolov8n.pt")
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loss(x, x), torch.zeros(2))
    x_hat = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    value = loss(x_hat, x)
    assert value.shape == (2,) and bool((value > 0).all())
    value.sum().backward()
    assert x_hat.grad is not None and float(x_hat.grad.abs().sum()) > 0
    assert all(not p.requires_grad for p in loss.parameters())


def test_warm_start_from_exported_weights_takes_every_tensor(tmp_path: Path) -> None:
    """--init-from accepts a shipped/exported weights file (tensors under "state_dict"), not only a checkpoint."""
    from icmh.codec.weights import load_layer, write_random_weights

    folder = write_random_weights(tmp_path / "w", seed=3)
    cfg = TrainConfig(kind="single", out_dir=tmp_path / "run", architecture="sa-icm-tiny",
                      init_from=folder / "sa-icm.pt", threads=1)
    trainer = Trainer(cfg)
    assert trainer.warmup_until == WARMUP_STEPS  # fresh Adam moments on trained weights: the lr ramps up
    exported = load_layer(folder / "sa-icm.pt").model.state_dict()
    for name, value in trainer.model.named_parameters():  # every learned tensor (entropy tables are rebuilt)
        assert torch.equal(value.detach(), exported[name].float()), name
    # the constants fp16 flushes to zero keep the values the architecture gives them, so no likelihood reaches 0
    fresh = dict(build_model("sa-icm-tiny").named_buffers())
    for name, value in trainer.model.named_buffers():
        if name.endswith(("bound", "pedestal")):
            assert torch.equal(value, fresh[name]), name
    assert exported["latent_codec.hyper.entropy_bottleneck.likelihood_lower_bound.bound"].item() == 0.0  # the trap
    out = trainer.model(torch.rand(1, 3, 64, 64) * 40, torch.tensor([3]))  # far outside the trained range
    assert all(v.min() > 0 for v in out["likelihoods"].values())


def test_a_stale_aux_gradient_does_not_shrink_the_rate_distortion_step(tmp_path: Path) -> None:
    """The norm clip sees only the R-D gradient: a left-over quantile gradient must not change the update."""
    cfg = TrainConfig(kind="single", out_dir=tmp_path / "a", architecture="sa-icm-tiny", threads=1, seed=5)
    clean, stale = Trainer(cfg), Trainer(TrainConfig(**{**cfg.__dict__, "out_dir": tmp_path / "b"}))
    for p in (p for n, p in stale.model.named_parameters() if n.endswith(".quantiles")):
        p.grad = torch.full_like(p, 1e6)  # what the aux step of the previous iteration leaves behind
    torch.manual_seed(1)
    x, q = torch.rand(2, 3, 64, 64), torch.tensor([0, 5])
    for trainer in (clean, stale):
        torch.manual_seed(2)
        trainer.train_step(x, None, q)
    moved = 0
    for (name, a), b in zip(clean.model.named_parameters(), stale.model.parameters(), strict=True):
        if not name.endswith(".quantiles"):
            assert torch.equal(a, b), name
            moved += 1
    assert moved > 10


def test_a_non_finite_batch_leaves_weights_and_moments_untouched(tmp_path: Path) -> None:
    """A NaN in one batch skips that update (weights and Adam state as before); a good batch then trains; a run
    failing MAX_FAILED_STEPS times in a row stops with a clear error instead of training on NaN."""
    cfg = TrainConfig(kind="single", out_dir=tmp_path / "run", architecture="sa-icm-tiny", threads=1, lr=1e-3)
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    bad = torch.rand(2, 3, 64, 64)
    bad[0, 0, 5, 5] = float("nan")
    trainer.train_step(bad, None, torch.tensor([1, 2]))
    assert trainer.skipped_steps == 1 and trainer.step == 0 and not trainer.opt.state_dict()["state"]
    for name, value in trainer.model.named_parameters():
        assert torch.equal(value, before[name]), name
    trainer.train_step(torch.rand(2, 3, 64, 64), None, torch.tensor([1, 2]))
    assert trainer.step == 1 and trainer.failed_in_a_row == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    with pytest.raises(ValueError, match="non-finite"):
        for _ in range(MAX_FAILED_STEPS):
            trainer.train_step(bad, None, torch.tensor([1, 2]))


def test_hard_rate_counts_the_bits_the_range_coder_writes(shared_dir: Path) -> None:
    """With the hard rate (soft then hard) the slice rate in training is that of the rounded latent: the shipped PR
    layer's training-mode estimate on a Kodak crop is within 2 % of the coded slices, the noisy proxy is not."""
    codec = ScalableCodec.from_weights(mode="pr")
    model = codec._require_residual().model
    image = kodak(shared_dir, "03.png")[:256, :384]
    base = codec.encode_base(image, 0.5)
    x, _, _ = image_to_tensor(image)
    x_m, q = base.float_machine().clamp(0, 1), torch.tensor([128])
    try:
        with torch.no_grad():
            y = model.gain.scale(model.analysis(torch.cat([x - x_m, x_m], dim=1)), q)
            condition = model._condition(base.y_hat)
            with exact_arithmetic(True):
                strings = model.latent_codec.compress(y, condition)["strings"][:-1]
            coded = 8 * sum(len(s[0]) for s in strings)
            model.train()
            estimates = {}
            for hard in (True, False):
                model.use_hard_rate(hard)
                estimates[hard] = float(-torch.log2(model.latent_codec(y, condition)["likelihoods"]["y"]).sum())
    finally:
        model.use_hard_rate(False)
        model.eval()
    assert abs(estimates[True] - coded) < 0.02 * coded
    assert estimates[False] > 1.1 * coded
    assert model.latent_codec.latent_codec["hyper"].quantizer == "noise"  # switched back


def test_hard_rate_pulls_the_means_towards_the_latent() -> None:
    """The hard rate's rounding passes gradients straight through: the rate still trains the means."""
    model = build_model("sa-icm-tiny")
    model.train()
    model.use_hard_rate(True)
    slice_codec = model.latent_codec.latent_codec["y"].latent_codec["y0"]
    y = torch.randn(1, model.slice_channels, 4, 4) * 3
    params = torch.randn(1, slice_codec.entropy_parameters[0].in_channels, 4, 4)
    out = slice_codec(y, params)
    (-torch.log2(out["likelihoods"]["y"]).sum()).backward()
    means_layer = slice_codec.entropy_parameters[-1]
    assert means_layer.weight.grad[model.slice_channels:].abs().sum() > 0  # the second half of the output: means


def test_hard_rate_stage_trains_only_the_decoder_side(tmp_path: Path) -> None:
    """``--hard-rate``: a step moves the decoder side (synthesis, inverse gain) and no encoder parameter."""
    torch.manual_seed(9)
    trainer = Trainer(TrainConfig(kind="single", out_dir=tmp_path / "run", architecture="sa-icm-tiny", threads=1,
                                  lr=1e-3, hard_rate=True))
    model = trainer.model
    encoder = {id(p) for p in model.encoder_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train_step(torch.rand(2, 3, 64, 64), None, torch.tensor([1, 200]))
    assert trainer.step == 1
    for name, value in model.named_parameters():
        if id(value) in encoder:
            assert torch.equal(value, before[name]), name
    assert not torch.equal(model.g_s[0].weight, before["g_s.0.weight"])
    assert not torch.equal(model.gain.inverse_gain, before["gain.inverse_gain"])


def test_synthesis_only_training_moves_g_s_and_keeps_every_bit(tmp_path: Path) -> None:
    """``--synthesis-only``: steps move the synthesis and nothing else (quantiles included), so the coder writes
    the same strings as before and only the decoded pixels change."""
    torch.manual_seed(11)
    trainer = Trainer(TrainConfig(kind="single", out_dir=tmp_path / "run", architecture="sa-icm-tiny", threads=1,
                                  lr=1e-3, synthesis_only=True))
    model = trainer.model
    synthesis = {id(p) for p in model.g_s.parameters()}
    assert {id(p) for p in trainer.params} == synthesis
    x, q = torch.rand(1, 3, 64, 64), torch.tensor([150])

    def coded() -> tuple[list, torch.Tensor]:
        model.eval()
        model.update(force=True)
        with torch.no_grad():
            out = model.compress(x, q)
            pixels = model.decompress(out["strings"], out["shape"], q)["x_hat"]
        model.train()
        return out["strings"], pixels

    strings, pixels = coded()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        trainer.train_step(torch.rand(2, 3, 64, 64), None, torch.tensor([1, 200]))
    assert trainer.step == 2
    for name, value in model.named_parameters():
        assert torch.equal(value, before[name]) != (id(value) in synthesis), name
    strings_after, pixels_after = coded()
    assert strings_after == strings
    assert not torch.equal(pixels_after, pixels)
    trainer.save()
    with pytest.raises(ValueError, match="synthesis-only"):  # its optimiser holds only g_s: a clear refusal
        Trainer(TrainConfig(kind="single", out_dir=tmp_path / "run", architecture="sa-icm-tiny", threads=1))
    assert Trainer(TrainConfig(kind="single", out_dir=tmp_path / "run", architecture="sa-icm-tiny", threads=1,
                               synthesis_only=True)).step == 2


def test_entropy_only_training_moves_the_entropy_model_and_keeps_every_transform(tmp_path: Path) -> None:
    """``--entropy-only``: steps move the hyperprior, the context and slice networks (pr-icmh-cb4e's new blocks
    included) and the quantiles, never g_a, g_s or the gains, so every latent stays; the loss is the rate alone and
    no synthesis runs. Other layers, and resuming the run the other way, are refused with a clear message."""
    from icmh.codec.weights import write_random_weights

    weights = write_random_weights(tmp_path / "w")
    cfg = TrainConfig(kind="pr", out_dir=tmp_path / "run", architecture="pr-icmh-cb4e-tiny", threads=1, lr=1e-3,
                      base_weights=weights / "sa-icm.pt", entropy_only=True)
    torch.manual_seed(12)
    trainer = Trainer(cfg)
    model = trainer.model
    transforms = {id(p) for m in (model.g_a, model.g_s, model.gain) for p in m.parameters()}
    assert {id(p) for p in trainer.params}.isdisjoint(transforms)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    synthesis_calls = []
    model.g_s.register_forward_hook(lambda *_: synthesis_calls.append(1))
    x, q = torch.rand(2, 3, 64, 64), torch.tensor([1, 200])
    out = trainer.losses(x, None, q)
    assert "mse" not in out and torch.equal(out["loss"], out["bpp"]) and out["bpp"] > 0
    for _ in range(2):
        trainer.train_step(x, None, q)
    assert trainer.step == 2 and not synthesis_calls
    for name, value in model.named_parameters():
        assert torch.equal(value, before[name]) == (id(value) in transforms), name
    hyper = model.latent_codec.latent_codec["hyper"]
    assert hyper.h_s[-1].body[-1].weight.abs().sum() > 0  # the zero-initialised block has started to learn
    trainer.save()
    with pytest.raises(ValueError, match="entropy-only"):
        Trainer(TrainConfig(**{**cfg.__dict__, "entropy_only": False}))
    assert Trainer(cfg).step == 2
    with pytest.raises(ValueError, match="entropy-only"):
        Trainer(TrainConfig(kind="single", out_dir=tmp_path / "single", architecture="sa-icm-tiny", threads=1,
                            entropy_only=True))
    with pytest.raises(ValueError, match="exclude each other"):
        Trainer(TrainConfig(**{**cfg.__dict__, "out_dir": tmp_path / "both", "synthesis_only": True}))


def test_deeper_entropy_model_warm_started_from_pr_icmh_cb4_codes_the_same_bits(tmp_path: Path) -> None:
    """pr-icmh-cb4e from a pr-icmh-cb4 checkpoint: its residual blocks after h_s, the machine context and the channel
    contexts start as identities, so it writes the old codec's strings and decodes its pixels."""
    torch.manual_seed(9)
    old = build_model("pr-icmh-cb4-tiny")
    torch.save({"model": old.state_dict()}, tmp_path / "old.pt")
    deep = build_model("pr-icmh-cb4e-tiny")
    assert warm_start(deep, tmp_path / "old.pt") == len(dict(old.named_parameters()))
    assert len(dict(deep.named_parameters())) > len(dict(old.named_parameters()))
    x_d, x_m, q = torch.rand(1, 3, 128, 192) - 0.5, torch.rand(1, 3, 128, 192), torch.tensor([180])
    ym_hat = torch.randn(1, deep.machine_latent, 8, 12) * 4
    coded, decoded = [], []
    with torch.no_grad():
        for model in (old, deep):
            model.eval()
            model.update(force=True)
            coded.append(model.compress(x_d, q, x_m, ym_hat))
            decoded.append(model.decompress(coded[-1]["strings"], coded[-1]["shape"], q, x_m, ym_hat)["x_hat"])
    assert coded[0]["strings"] == coded[1]["strings"]
    assert torch.equal(decoded[0], decoded[1])


def test_bf16_training_runs_the_transforms_in_bfloat16_and_the_entropy_model_in_float32(tmp_path: Path) -> None:
    """``--precision bf16``: g_a / g_s under bfloat16 autocast, likelihoods in float32; the loss stays within a
    bfloat16 rounding of the float32 one and the step trains; eval mode (coding) is untouched."""
    cfg = TrainConfig(kind="single", out_dir=tmp_path / "fp32", architecture="sa-icm-tiny", threads=1, seed=3)
    fp32, bf16 = Trainer(cfg), Trainer(TrainConfig(**{**cfg.__dict__, "out_dir": tmp_path / "bf16",
                                                        "precision": "bf16"}))
    assert bf16.model.train_precision == "bf16" and fp32.model.train_precision == "fp32"
    seen: dict[str, torch.dtype] = {}
    for name in ("g_a", "g_s"):
        convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
        layer = next(m for m in getattr(bf16.model, name).modules() if isinstance(m, convs))
        layer.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out.dtype))
    x, q = torch.rand(2, 3, 64, 64), torch.tensor([0, 5])
    torch.manual_seed(4)
    ref = fp32.losses(x, None, q)
    torch.manual_seed(4)
    out = bf16.model(x, q)
    assert seen == {"g_a": torch.bfloat16, "g_s": torch.bfloat16}
    assert out["x_hat"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out["likelihoods"].values())
    torch.manual_seed(4)
    low = bf16.losses(x, None, q)
    assert torch.isfinite(low["loss"]) and low["loss"].item() == pytest.approx(ref["loss"].item(), rel=0.05)
    before = [p.detach().clone() for p in bf16.params]
    bf16.train_step(x, None, q)
    assert bf16.step == 1 and any(not torch.equal(a, b) for a, b in zip(before, bf16.params, strict=True))
    bf16.model.eval()  # coding: the exact synthesis, whatever the training precision
    y = torch.randn(1, 40, 4, 4).round()
    with torch.no_grad():
        assert torch.equal(bf16.model.synthesis(y), bf16.model.g_s(y))


def test_resuming_an_older_checkpoint_resets_adam_and_warms_up(tmp_path: Path) -> None:
    cfg = TrainConfig(kind="single", out_dir=tmp_path / "run", architecture="sa-icm-tiny", threads=1, lr=1e-3)
    first = Trainer(cfg)
    torch.manual_seed(1)
    first.train_step(torch.rand(2, 3, 64, 64), None, torch.tensor([1, 2]))
    first.save()
    assert Trainer(cfg).opt.state_dict()["state"]  # same gradient definition: moments kept, full lr
    assert Trainer(cfg).opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    state = torch.load(first.ckpt, weights_only=False)
    del state["gradients"], state["warmup_until"]  # a checkpoint written before the clip fix
    torch.save(state, first.ckpt)
    resumed = Trainer(cfg)
    assert resumed.step == 1 and not resumed.opt.state_dict()["state"]
    assert resumed.opt.param_groups[0]["lr"] < 1e-5  # first step of the warm-up


def test_conditional_codec_warm_started_from_explicit_pr_decodes_the_same_pixels(tmp_path: Path) -> None:
    """--init-from an explicit PR-ICMH checkpoint: the conditional codec starts as exactly that codec (its x̂_m
    input channels and branches at zero), whatever x̂_m is."""
    torch.manual_seed(2)
    explicit = build_model("pr-icmh-tiny")
    torch.save({"model": explicit.state_dict()}, tmp_path / "explicit.pt")
    conditional = build_model("pr-icmh-c-tiny")
    assert warm_start(conditional, tmp_path / "explicit.pt") > 0
    mine = dict(conditional.named_parameters())
    for name, value in explicit.named_parameters():  # every learned tensor taken; the x̂_m channels at zero
        assert torch.equal(mine[name][:, :3] if name == "g_a.0.weight" else mine[name], value), name
    assert not conditional.g_a[0].weight[:, 3:].any()
    explicit.eval(), conditional.eval()
    for model in (explicit, conditional):
        model.update(force=True)
    x_d, x_m, q = torch.rand(1, 3, 64, 64) - 0.5, torch.rand(1, 3, 64, 64), torch.tensor([100])
    with torch.no_grad():
        strings = explicit.compress(x_d, q)
        shape = strings["shape"]
        a = explicit.decompress(strings["strings"], shape, q)["x_hat"]
        b = conditional.decompress(strings["strings"], shape, q, x_m)["x_hat"]
    assert torch.equal(a, b)


def test_wider_synthesis_warm_started_from_pr_icmh_ce_decodes_the_same_pixels(tmp_path: Path) -> None:
    """--init-from pr-icmh-ce into pr-icmh-cw (wider half-resolution stage and refinement): the old weights keep
    their place, the consumers of the new channels start at zero, so the same strings decode to the same pixels;
    the new channels are not dead (their producers are not zero) and training moves the consumers off zero."""
    torch.manual_seed(5)
    narrow = build_model("pr-icmh-ce-tiny")
    torch.save({"model": narrow.state_dict()}, tmp_path / "narrow.pt")
    wide = build_model("pr-icmh-cw-tiny")
    assert warm_start(wide, tmp_path / "narrow.pt") == len(dict(narrow.named_parameters()))
    last, half = wide.g_s._modules[str(wide.g_s.layers - 1)], narrow.g_s._modules[str(narrow.g_s.layers - 1)]
    assert isinstance(last, torch.nn.ConvTranspose2d) and last.weight.shape[0] > half.weight.shape[0]
    assert not last.weight[half.weight.shape[0]:].any()  # a transposed weight is (in, out, k, k)
    producer = wide.g_s._modules[str(wide.g_s.layers - 3)]  # the transposed convolution before it
    assert producer.weight[:, half.weight.shape[0]:].abs().sum() > 0
    assert not wide.g_s.refine[2].weight[:, narrow.g_s.refine[2].weight.shape[1]:].any()
    x_d, x_m, q = torch.rand(1, 3, 64, 64) - 0.5, torch.rand(1, 3, 64, 64), torch.tensor([100])
    ym_hat = torch.randn(1, wide.machine_latent, 4, 4) * 4
    _assert_decodes_alike(narrow, wide, x_d, q, x_m, ym_hat)
    wide.train()
    loss = wide(x_d, q, x_m, ym_hat)["x_hat"].square().mean()
    loss.backward()
    assert last.weight.grad[half.weight.shape[0]:].abs().sum() > 0


def test_residual_blocks_warm_started_from_pr_icmh_cw_decode_the_same_pixels(tmp_path: Path) -> None:
    """pr-icmh-cr from a pr-icmh-cw checkpoint: every tensor is taken as is, the new residual blocks start as the
    identity (the same strings decode to the same pixels), and training moves their zero convolutions."""
    torch.manual_seed(7)
    plain = build_model("pr-icmh-cw-tiny")
    torch.save({"model": plain.state_dict()}, tmp_path / "plain.pt")
    deep = build_model("pr-icmh-cr-tiny")
    assert warm_start(deep, tmp_path / "plain.pt") == len(dict(plain.named_parameters()))
    assert sorted(deep.g_s.blocks) == ["0", "2"]  # a block width of 0 adds none
    x_d, x_m, q = torch.rand(1, 3, 64, 64) - 0.5, torch.rand(1, 3, 64, 64), torch.tensor([100])
    ym_hat = torch.randn(1, deep.machine_latent, 4, 4) * 4
    _assert_decodes_alike(plain, deep, x_d, q, x_m, ym_hat)
    deep.train()
    deep(x_d, q, x_m, ym_hat)["x_hat"].square().mean().backward()
    for block in deep.g_s.blocks.values():
        assert block.body[-1].weight.grad.abs().sum() > 0


def test_checkerboard_slices_warm_started_from_pr_icmh_cr_start_as_that_codec(tmp_path: Path) -> None:
    """pr-icmh-cb from a pr-icmh-cr checkpoint: every tensor is taken, the spatial context enters the entropy
    parameters through zero weights, so the training forward (same noise) gives the old codec's likelihoods and
    pixels; in the exact path only the fixed-point scale of the widened input moves (latents within 1e-3). Training
    then reaches the new weights."""
    torch.manual_seed(7)
    plain = build_model("pr-icmh-cr-tiny")
    torch.save({"model": plain.state_dict()}, tmp_path / "plain.pt")
    spatial = build_model("pr-icmh-cb-tiny")
    assert warm_start(spatial, tmp_path / "plain.pt") == len(dict(plain.named_parameters()))
    x_d, x_m, q = torch.rand(1, 3, 128, 192) - 0.5, torch.rand(1, 3, 128, 192), torch.tensor([100])
    ym_hat = torch.randn(1, spatial.machine_latent, 8, 12) * 4
    for model in (plain, spatial):
        model.eval()
        model.update(force=True)
    outputs = []
    with torch.no_grad():
        for model in (plain, spatial):
            torch.manual_seed(1)  # the noise of ẑ
            outputs.append(model.train()(x_d, q, x_m, ym_hat))
            model.eval()
    a, b = outputs
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])
    with torch.no_grad():
        coded_a, coded_b = plain.compress(x_d, q, x_m, ym_hat), spatial.compress(x_d, q, x_m, ym_hat)
    assert len(coded_b["strings"]) == spatial.num_strings() == 2 * len(coded_a["strings"]) - 1
    assert (coded_a["y_hat"] - coded_b["y_hat"]).abs().max() < 1e-3
    spatial.train()
    for _ in range(2):  # the first step reaches the zero weights, the second the context convolution behind them
        spatial.zero_grad()
        out = spatial(x_d, q, x_m, ym_hat)
        bits = sum(-torch.log2(v).sum() for v in out["likelihoods"].values())
        bits.backward()
        with torch.no_grad():
            for p in spatial.parameters():
                if p.grad is not None:
                    p -= 1e-3 * p.grad
    for codec in spatial.latent_codec.latent_codec["y"].latent_codec.values():
        assert codec.context_prediction.weight.grad.abs().sum() > 0


def _assert_decodes_alike(narrow: torch.nn.Module, wide: torch.nn.Module, x: torch.Tensor, q: torch.Tensor,
                          *side: torch.Tensor) -> None:
    """``wide`` decodes ``narrow``'s strings of ``x`` to the same pixels (exact arithmetic)."""
    for model in (narrow, wide):
        model.eval()
        model.update(force=True)
    with torch.no_grad():
        out = narrow.compress(x, q, *side)
        a = narrow.decompress(out["strings"], out["shape"], q, *side)["x_hat"]
        b = wide.decompress(out["strings"], out["shape"], q, *side)["x_hat"]
    assert torch.equal(a, b)


def test_wider_fr_synthesis_warm_started_from_fr_icmh_decodes_the_same_pixels(tmp_path: Path) -> None:
    """fr-icmh-w from an fr-icmh checkpoint: every synthesis layer grows (inputs and outputs), the same pixels."""
    torch.manual_seed(6)
    narrow = build_model("fr-icmh-tiny")
    torch.save({"model": narrow.state_dict()}, tmp_path / "narrow.pt")
    wide = build_model("fr-icmh-w-tiny")
    assert warm_start(wide, tmp_path / "narrow.pt") == len(dict(narrow.named_parameters()))
    ym_hat = torch.randn(1, 40, 4, 4) * 4
    _assert_decodes_alike(narrow, wide, torch.rand(1, 3, 64, 64), torch.tensor([100]), ym_hat)


def test_conditional_entropy_codec_warm_started_from_conditional_pr_codes_like_it(tmp_path: Path) -> None:
    """--init-from a pr-icmh-c checkpoint: pr-icmh-ce starts as that codec (the ŷ_m inputs of its entropy networks
    at zero: the same pixels and likelihoods whatever ŷ_m is, up to float rounding); once those inputs are not
    zero, ŷ_m changes the entropy parameters, so the strings depend on it."""
    torch.manual_seed(3)
    conditional = build_model("pr-icmh-c-tiny")
    torch.save({"model": conditional.state_dict()}, tmp_path / "conditional.pt")
    entropy = build_model("pr-icmh-ce-tiny")
    assert warm_start(entropy, tmp_path / "conditional.pt") > 0
    first = entropy.latent_codec.latent_codec["y"].latent_codec["y0"].entropy_parameters[0].weight
    side = conditional.latent_codec.latent_codec["y"].latent_codec["y0"].entropy_parameters[0].weight.shape[1]
    assert first.shape[1] > side and not first[:, side:].any()
    for model in (conditional, entropy):
        model.eval()
        model.update(force=True)
    x_d, x_m, q = torch.rand(1, 3, 64, 64) - 0.5, torch.rand(1, 3, 64, 64), torch.tensor([100])
    ym_hat = torch.randn(1, entropy.machine_latent, 4, 4) * 4
    with torch.no_grad(), exact_arithmetic(False):
        a, b = conditional(x_d, q, x_m), entropy(x_d, q, x_m, ym_hat)
    torch.testing.assert_close(a["x_hat"], b["x_hat"])
    for name in ("y", "z"):
        torch.testing.assert_close(a["likelihoods"][name], b["likelihoods"][name])
    with torch.no_grad():
        torch.nn.init.normal_(first, std=0.5)
        entropy.update(force=True)
        coded = entropy.compress(x_d, q, x_m, ym_hat)
        other = entropy.compress(x_d, q, x_m, -ym_hat)["strings"]
        decoded = entropy.decompress(coded["strings"], coded["shape"], q, x_m, ym_hat)
    assert coded["strings"] != other
    assert torch.equal(decoded["y_hat"], coded["y_hat"])


def test_fourth_slice_warm_started_from_pr_icmh_cb_starts_as_that_codec(tmp_path: Path) -> None:
    """pr-icmh-cb4 from a pr-icmh-cb checkpoint: the wider analysis output, synthesis input, hyper-analysis input and
    gains take the old entries; the new slice gets each level's mean gain (not zero, which would leave it unused)
    and reaches the synthesis through zero weights, so the training forward gives the old pixels and the old slices'
    likelihoods. The layer codes and decodes 4 x 2 + 1 strings bit-exactly, and training reaches the new weights."""
    torch.manual_seed(7)
    three = build_model("pr-icmh-cb-tiny")
    torch.save({"model": three.state_dict()}, tmp_path / "three.pt")
    four = build_model("pr-icmh-cb4-tiny")
    assert warm_start(four, tmp_path / "three.pt") == len(dict(three.named_parameters()))
    old = three.coded_channels
    torch.testing.assert_close(four.gain.gain[:, old:], three.gain.gain.abs().mean(1, keepdim=True).expand(-1, 8))
    x_d, x_m, q = torch.rand(1, 3, 128, 192) - 0.5, torch.rand(1, 3, 128, 192), torch.tensor([100])
    ym_hat = torch.randn(1, four.machine_latent, 8, 12) * 4
    outputs = []
    with torch.no_grad():
        for model in (three, four):
            torch.manual_seed(1)  # the noise of ẑ
            outputs.append(model.train()(x_d, q, x_m, ym_hat))
    a, b = outputs
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["z"], b["likelihoods"]["z"])
    assert torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"][:, :old])
    four.eval()
    four.update(force=True)
    with torch.no_grad():
        coded = four.compress(x_d, q, x_m, ym_hat)
        decoded = four.decompress(coded["strings"], coded["shape"], q, x_m, ym_hat)
    assert len(coded["strings"]) == four.num_strings() == 9
    assert torch.equal(coded["y_hat"], decoded["y_hat"]) and decoded["y_hat"][:, old:].abs().sum() > 0
    four.train()
    out = four(x_d, q, x_m, ym_hat)
    ((out["x_hat"] - x_d) ** 2).mean().backward()
    assert four.g_s.get_submodule("0").weight.grad[old:].abs().sum() > 0


def test_deeper_synthesis_warm_started_from_pr_icmh_cb4_decodes_the_same_pixels(tmp_path: Path) -> None:
    """pr-icmh-cb4d from a pr-icmh-cb4 checkpoint: the new residual blocks start as the identity and the new
    full-resolution feature channels reach the refinement through zero weights, so training and exact decoding give
    the old codec's pixels; a backward pass reaches the new weights."""
    torch.manual_seed(8)
    old = build_model("pr-icmh-cb4-tiny")
    with torch.no_grad():  # as after training: the zero-initialised refinement and x̂_m input have moved
        for layer in (old.g_s.refine[-1], old.g_s.machine_half):
            layer.weight.normal_(0, 0.05)
    torch.save({"model": old.state_dict()}, tmp_path / "old.pt")
    deep = build_model("pr-icmh-cb4d-tiny")
    assert warm_start(deep, tmp_path / "old.pt") == len(dict(old.named_parameters()))
    x_d, x_m, q = torch.rand(1, 3, 128, 192) - 0.5, torch.rand(1, 3, 128, 192), torch.tensor([180])
    ym_hat = torch.randn(1, deep.machine_latent, 8, 12) * 4
    with torch.no_grad():
        outs = []
        for model in (old, deep):
            torch.manual_seed(1)
            outs.append(model.train()(x_d, q, x_m, ym_hat))
        assert torch.equal(outs[0]["x_hat"], outs[1]["x_hat"])
        decoded = []
        for model in (old, deep):
            model.eval()
            model.update(force=True)
            coded = model.compress(x_d, q, x_m, ym_hat)
            decoded.append(model.decompress(coded["strings"], coded["shape"], q, x_m, ym_hat)["x_hat"])
    assert decoded[0].shape == decoded[1].shape == x_d.shape
    torch.testing.assert_close(decoded[0], decoded[1], atol=1e-3, rtol=0)
    deep.train()
    out = deep(x_d, q, x_m, ym_hat)
    ((out["x_hat"] - x_d) ** 2).mean().backward()
    assert deep.g_s.refine[0].weight.grad[:, 6:].abs().sum() > 0
    assert deep.g_s.latent_block.body[-1].weight.grad.abs().sum() > 0
    assert deep.g_s.blocks["0_1"].body[-1].weight.grad.abs().sum() > 0


def test_training_precision_auto_takes_bfloat16_only_where_it_is_native(capsys: pytest.CaptureFixture[str]) -> None:
    """``--precision auto`` (the default) is bf16 exactly where oneDNN has native bfloat16; an explicit bf16 on a
    CPU without it is kept but warned about (emulated bfloat16 made training steps ~10x slower on an AVX2 EPYC)."""
    assert training_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert training_precision("fp32") == "fp32"
    assert training_precision("bf16") == "bf16"
    assert ("emulated" in capsys.readouterr().err) is not native_bf16()
