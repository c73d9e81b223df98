"""Learned codecs of the scalable system, composed from CompressAI latent codecs.

* ``ImageCodec``: g_a -> gain -> hyperprior + channel-wise autoregressive
  Gaussian model over ``num_slices`` slices -> inverse gain -> g_s. With the
  masked loss of SA-ICM (Shindo et al., ICIP 2024, Eq. (1) of Tatsumi et al.)
  it is the machine-oriented base layer; trained on the pixel residual
  ``x_d = x - x̂_m`` it is the PR-ICMH human layer (Tatsumi et al., Sec. III-C,
  Eq. (6)); trained with plain MSE it is the single-layer reference.
* ``ConditionalResidualCodec``: PR-ICMH whose encoder and synthesis also see x̂_m (an option beyond the
  paper: conditional rather than explicit residual coding, x̂ = x̂_m + g_s(ŷ_d, x̂_m)); its entropy model
  is PR-ICMH's (``pr-icmh-c``) or also sees the base latent ŷ_m (``machine_latent``, ``pr-icmh-ce``).
* ``FeatureResidualCodec``: FR-ICMH (Tatsumi et al., Sec. III-B). Its analysis
  transform gives ``y``; the first ``coded_slices`` slices of ``ya = y - ŷm``
  are coded (Eq. (2)); the decoder fuses ``ŷ_k = ŷm_k + ŷa_k`` for k <= N_a and
  ``ŷ_k = ŷm_k`` otherwise (Eqs. (3)-(4)) before its own synthesis transform.

``forward`` (training, likelihoods), ``compress`` and ``decompress`` share the
same shapes, as in CompressAI. Rates are selected per sample by the rate index
``q`` (see :mod:`icmh.codec.rate`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.models import CompressionModel
from compressai.ops import quantize_ste
from torch import Tensor

from .exact import exact_arithmetic, fast_synthesis_requested
from .precision import bf16_autocast, float_autocast
from .rate import GainUnit
from .transforms import (
    ConditionalSynthesis,
    analysis_transform,
    channel_context,
    checkerboard_context,
    entropy_parameters,
    hyper_analysis,
    hyper_synthesis,
    machine_context,
    synthesis_transform,
)

#: spatial alignment needed by g_a (x16) and h_a (x4)
ALIGNMENT = 64


def _int_list(values: Tensor) -> list[int]:
    """A tensor's values as the Python ints CompressAI's range coder takes (through numpy: ~2x faster than
    ``Tensor.tolist`` for the ~120k symbols of a slice at 1280x720)."""
    return values.detach().reshape(-1).int().numpy().tolist()


class TableIndexGaussianConditional(GaussianConditional):
    """CompressAI's Gaussian conditional with the range coder's inputs prepared once, same strings.

    * ``build_indexes`` of CompressAI 1.2.8 subtracts ``scales <= s`` for each of the 63 table entries (63 passes
      over the tensor, ~15 % of a base encode at 1280x720); the number of entries of ``scale_table[:-1]`` below a
      scale is the same integer (``torch.searchsorted``, left side).
    * ``compress`` / ``decompress`` of CompressAI convert the CDF tables (64 x ~3,100 ints for SA-ICM) to Python
      lists on every call, ~4 ms per slice; here they are converted once per table version (:meth:`coder_tables`).
    """

    _tables: tuple[tuple[Tensor, ...], tuple[int, ...], tuple[list, list, list]] | None = None

    def build_indexes(self, scales: Tensor) -> Tensor:
        scales = self.lower_bound_scale(scales)
        table = self.scale_table[:-1].to(scales.dtype).contiguous()
        return torch.searchsorted(table, scales.contiguous()).int()

    def coder_tables(self) -> tuple[list, list, list]:
        """``(cdfs, cdf lengths, offsets)`` as the range coder takes them; rebuilt when ``update`` or a state-dict
        load replaces or changes a table (the cache holds the tensors, so their identity cannot be reused)."""
        tensors = (self._quantized_cdf, self._cdf_length, self._offset)
        versions = tuple(t._version for t in tensors)
        cached = self._tables
        if cached is None or any(a is not b for a, b in zip(cached[0], tensors, strict=True)) or cached[1] != versions:
            self._check_cdf_size()
            self._check_cdf_length()
            self._check_offsets_size()
            lists = (self._quantized_cdf.tolist(), _int_list(self._cdf_length), _int_list(self._offset))
            self._tables = cached = (tensors, versions, lists)
        return cached[2]

    def compress(self, inputs: Tensor, indexes: Tensor, means: Tensor | None = None) -> list[bytes]:
        """CompressAI's ``compress`` (same symbols, tables and strings) with the tables converted once."""
        if inputs.dim() < 2 or inputs.size() != indexes.size():
            raise ValueError("inputs and indexes must have the same size, with a batch dimension")
        symbols = self.quantize(inputs, "symbols", means)
        tables = self.coder_tables()
        return [self.entropy_coder.encode_with_indexes(_int_list(symbols[i]), _int_list(indexes[i]), *tables)
                for i in range(symbols.size(0))]

    def decompress(
        self, strings: list[bytes], indexes: Tensor, dtype: torch.dtype = torch.float, means: Tensor | None = None
    ) -> Tensor:
        """CompressAI's ``decompress`` with the tables converted once and the decoded symbols turned into a tensor
        through numpy (``torch.tensor`` of a Python list of ~100k ints takes ~3x as long: ~30 ms of a 1280x720
        decode). Same symbols, same output."""
        if len(strings) != indexes.size(0):
            raise ValueError("Invalid strings or indexes parameters")
        tables = self.coder_tables()
        outputs = torch.empty(indexes.shape)
        for i, string in enumerate(strings):
            values = self.entropy_coder.decode_with_indexes(string, _int_list(indexes[i]), *tables)
            outputs[i] = torch.from_numpy(np.asarray(values, dtype=np.int32)).view(outputs[i].shape)
        return self.dequantize(outputs, means, dtype)


class SliceGaussianCodec(GaussianConditionalLatentCodec):
    """Gaussian conditional slice codec whose encoder does not range-decode its own output.

    CompressAI's version decodes the strings it just wrote to get ``ŷ``; ``round(y - μ) + μ``
    is the same tensor, bit for bit, without the second pass through the range coder. Its scale
    indexes come from :class:`TableIndexGaussianConditional`.
    """

    #: training only: the rate of the rounded latent instead of the noisy one (:meth:`ChannelARCodec.use_hard_rate`)
    hard_rate = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(gaussian_conditional=TableIndexGaussianConditional(None), **kwargs)

    def forward(self, y: Tensor, ctx_params: Tensor) -> dict[str, Any]:
        """CompressAI's forward (``quantizer="ste"``); with ``hard_rate`` the likelihoods are those of the symbols
        ``round(y - μ)`` the range coder codes, not of ``y - μ`` plus uniform noise. The rounding passes gradients
        straight through, so the rate still pulls the means μ towards y (a plain rounding would leave the means
        without any gradient, and a run drifted to +12 % rate in 5,000 steps)."""
        scales_hat, means_hat = self._chunk(self.entropy_parameters(ctx_params))
        y_hat = quantize_ste(y - means_hat) + means_hat
        gc = self.gaussian_conditional
        if self.training and self.hard_rate:
            likelihoods = gc._likelihood(y_hat, scales_hat, means_hat)
            if gc.use_likelihood_bound:
                likelihoods = gc.likelihood_lower_bound(likelihoods)
        else:
            _, likelihoods = gc(y, scales_hat, means=means_hat)
        return {"likelihoods": {"y": likelihoods}, "y_hat": y_hat}

    def compress(self, y: Tensor, ctx_params: Tensor) -> dict[str, Any]:
        scales_hat, means_hat = self._chunk(self.entropy_parameters(ctx_params))
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_strings = self.gaussian_conditional.compress(y, indexes, means_hat)
        y_hat = self.gaussian_conditional.quantize(y, "dequantize", means_hat)
        return {"strings": [y_strings], "shape": y.shape[2:4], "y_hat": y_hat}


class CheckerboardSliceCodec(CheckerboardLatentCodec):
    """One slice coded in two passes, anchors then non-anchors (He et al., "Checkerboard context model", CVPR 2021;
    per channel group, the space-channel context of ELIC, He et al., CVPR 2022): CompressAI's checkerboard latent
    codec around a :class:`SliceGaussianCodec`.

    Two changes, neither of which changes a symbol: the spatial context is appended *after* the slice's other
    inputs (channel context, hyperprior, machine context), so a codec warm-started from one without it keeps every
    weight in place and starts with that input at zero (:func:`~icmh.training.trainer.widened`); and the anchors'
    context is the zero tensor it is, without running the context convolution on an all-zero latent.
    """

    def __init__(self, entropy_parameters: nn.Module, context_prediction: nn.Module) -> None:
        super().__init__(
            latent_codec={"y": SliceGaussianCodec(quantizer="ste")},
            entropy_parameters=entropy_parameters,
            context_prediction=context_prediction,
            forward_method="twopass",
        )

    def merge(self, y_ctx: Tensor, side_params: Tensor) -> Tensor:  # type: ignore[override]
        return torch.cat([side_params, y_ctx], dim=1)

    def _pass_params(self, step: int, y_hat_: Tensor, side_params_: Tensor) -> Tensor:
        """Entropy parameters of pass ``step`` (0: anchors, 1: non-anchors) over the unembedded half-width tensors."""
        side = side_params_[step]
        if step == 0:
            ctx = side.new_zeros((side.shape[0], self.context_prediction.out_channels, *side.shape[2:]))
        else:
            ctx = self.unembed(self.context_prediction(self.embed(y_hat_)))[1]
        return self.entropy_parameters(self.merge(ctx, side))

    def _passes(self, side_params: Tensor, shape: tuple[int, ...],
                code: Callable[[int, Tensor], dict[str, Any]]) -> tuple[Tensor, list[dict[str, Any]]]:
        """``code(step, params)`` for the anchors (step 0), then the non-anchors (step 1) of a ``(C, H, W)`` slice, on
        the unembedded half-width tensors; each output's ``y_hat`` feeds the next pass. Returns the embedded ŷ and
        both outputs."""
        c, h, w = shape
        y_hat_ = side_params.new_zeros((2, side_params.shape[0], c, h, w // 2))
        side_params_ = self.unembed(side_params)
        outs = []
        for step in range(2):
            outs.append(out := code(step, self._pass_params(step, y_hat_, side_params_)))
            y_hat_[step] = out["y_hat"]
        return self.embed(y_hat_), outs

    def forward(self, y: Tensor, side_params: Tensor) -> dict[str, Any]:
        """Training: CompressAI's two-pass forward. Eval: the passes of :meth:`compress` (the same symbols, the
        networks run on the half-width tensors the coder sees), with the likelihoods instead of strings."""
        if self.training:
            return super().forward(y, side_params)
        y_ = self.unembed(y)
        y_hat, outs = self._passes(side_params, y.shape[1:],
                                   lambda step, params: self.latent_codec["y"](y_[step], params))
        likelihoods = self.embed(torch.stack([out["likelihoods"]["y"] for out in outs]))
        return {"likelihoods": {"y": likelihoods}, "y_hat": y_hat}

    def compress(self, y: Tensor, side_params: Tensor) -> dict[str, Any]:
        y_ = self.unembed(y)
        y_hat, outs = self._passes(side_params, y.shape[1:],
                                   lambda step, params: self.latent_codec["y"].compress(y_[step], params))
        return {"strings": [s for out in outs for s in out["strings"]], "shape": tuple(y.shape[1:]), "y_hat": y_hat}

    def decompress(
        self, strings: list[list[bytes]], shape: tuple[int, ...], side_params: Tensor, **kwargs: Any
    ) -> dict[str, Any]:
        if len(strings) != 2:
            raise ValueError(f"a checkerboard slice has 2 strings, got {len(strings)}")
        _, h, w = shape
        y_hat, _ = self._passes(side_params, shape, lambda step, params: self.latent_codec["y"].decompress(
            [strings[step]], (h, w // 2), params))
        return {"y_hat": y_hat}


class SliceLatentCodec(ChannelGroupsLatentCodec):
    """CompressAI's channel-groups codec, decoding from per-slice ``(H, W)`` or ``(C, H, W)`` shapes.

    CompressAI 1.2.8 sums ``shape[k][0]`` to size the output, which fits codecs that
    report ``(C, H, W)`` (:class:`CheckerboardSliceCodec`) but not ``GaussianConditionalLatentCodec`` (``(H, W)``).
    """

    def decompress(
        self, strings: list[list[bytes]], shape: list[tuple[int, ...]], side_params: Tensor, **kwargs: Any
    ) -> dict[str, Any]:
        n = len(strings[0])
        per_slice = len(strings) // len(self.groups)
        if per_slice * len(self.groups) != len(strings):
            raise ValueError(f"{len(strings)} strings for {len(self.groups)} slices")
        y_hat = side_params.new_zeros((n, sum(self.groups), *shape[0][-2:]))
        y_hat_ = y_hat.split(self.groups, dim=1)
        for k in range(len(self.groups)):
            params = self._get_ctx_params(k, side_params, y_hat_)
            out = self.latent_codec[f"y{k}"].decompress(strings[per_slice * k: per_slice * (k + 1)], shape[k], params)
            y_hat_[k][:] = out["y_hat"]
        return {"y_hat": y_hat}


class ConditionedHyperpriorLatentCodec(HyperpriorLatentCodec):
    """CompressAI's hyperprior latent codec whose slice entropy models may also see a ``condition``.

    The condition (features the decoder already has, at the latent's resolution) is appended to the
    hyper-synthesis output, so every slice's entropy parameters receive ``[channel context, h_s(ẑ), condition]``.
    Without a condition it is CompressAI's codec.
    """

    @staticmethod
    def _params(hyper_params: Tensor, condition: Tensor | None) -> Tensor:
        return hyper_params if condition is None else torch.cat([hyper_params, condition], dim=1)

    def forward(self, y: Tensor, condition: Tensor | None = None) -> dict[str, Any]:
        hyper_out = self.latent_codec["hyper"](y)
        y_out = self.latent_codec["y"](y, self._params(hyper_out["params"], condition))
        return {
            "likelihoods": {"y": y_out["likelihoods"]["y"], "z": hyper_out["likelihoods"]["z"]},
            "y_hat": y_out["y_hat"],
        }

    def compress(self, y: Tensor, condition: Tensor | None = None) -> dict[str, Any]:
        hyper_out = self.latent_codec["hyper"].compress(y)
        y_out = self.latent_codec["y"].compress(y, self._params(hyper_out["params"], condition))
        [z_strings] = hyper_out["strings"]
        return {
            "strings": [*y_out["strings"], z_strings],
            "shape": {"y": y_out["shape"], "hyper": hyper_out["shape"]},
            "y_hat": y_out["y_hat"],
        }

    def decompress(
        self, strings: list[list[bytes]], shape: dict[str, Any], condition: Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        *y_strings, z_strings = strings
        hyper_out = self.latent_codec["hyper"].decompress([z_strings], shape["hyper"])
        y_out = self.latent_codec["y"].decompress(y_strings, shape["y"], self._params(hyper_out["params"], condition))
        return {"y_hat": y_out["y_hat"]}


class ChannelARCodec(CompressionModel):
    """Transforms + gain + hyperprior/channel-wise AR latent codec (Minnen & Singh 2020)."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 48,
        analysis_widths: Sequence[int] | None = None,
        synthesis_widths: Sequence[int] | None = None,
        gdn: bool = False,
        latent: int = 160,
        num_slices: int = 5,
        coded_slices: int | None = None,
        hyper: int = 64,
        side: int = 128,
        context: int = 64,
        levels: int = 6,
        machine_latent: int = 0,
        spatial_context: int = 0,
        entropy_block: int = 0,
    ) -> None:
        super().__init__()
        coded = coded_slices or num_slices
        if latent % num_slices or not 1 <= coded <= num_slices:
            raise ValueError("latent must split into num_slices; 1 <= coded_slices <= num_slices")
        self.slice_channels = latent // num_slices
        self.num_slices = num_slices
        self.coded_slices = coded
        self.coded_channels = self.slice_channels * coded
        s = self.slice_channels
        self.g_a = analysis_transform(in_channels, analysis_widths or (width,) * 3, self.coded_channels, gdn)
        self.g_s = synthesis_transform(latent, synthesis_widths or (width,) * 3, out_channels)
        self.gain = GainUnit(self.coded_channels, levels)
        # the residual codecs' entropy model may see the base latent ŷ_m (machine_latent channels) as well
        self.machine_latent = machine_latent
        extra = context if machine_latent else 0
        if machine_latent:
            self.machine_context = machine_context(machine_latent, context, entropy_block)
        hyper_codec = HyperLatentCodec(
            EntropyBottleneck(hyper),
            hyper_analysis(self.coded_channels, hyper),
            hyper_synthesis(hyper, side, entropy_block),
        )
        # with ``spatial_context`` channels each slice is coded in two checkerboard passes (CheckerboardSliceCodec);
        # ``entropy_block`` > 0 ends h_s, the channel and the machine contexts with a residual block of that width
        self.spatial_context = spatial_context

        def slice_codec(k: int) -> nn.Module:
            inputs = side + (context if k else 0)
            if not spatial_context:
                return SliceGaussianCodec(entropy_parameters=entropy_parameters(inputs, s, extra), quantizer="ste")
            return CheckerboardSliceCodec(
                entropy_parameters(inputs, s, extra + spatial_context), checkerboard_context(s, spatial_context)
            )

        slices = SliceLatentCodec(
            groups=[s] * coded,
            channel_context={f"y{k}": channel_context(k * s, context, entropy_block) for k in range(1, coded)},
            latent_codec={f"y{k}": slice_codec(k) for k in range(coded)},
        )
        self.latent_codec = ConditionedHyperpriorLatentCodec(latent_codec={"hyper": hyper_codec, "y": slices})
        # arithmetic of g_a and g_s while training (``icmh train --precision``); not part of the weights
        self.train_precision = "fp32"

    def _train_autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast of a transform in training with ``train_precision == "bf16"``: on CPUs with AMX or
        AVX512-BF16 a pr-icmh-ce step (4 x 256², 2 threads) takes 0.23 s instead of 0.49 s. The entropy model
        (hyperprior, slice networks, likelihoods) always runs in float32."""
        return bf16_autocast(self.train_precision == "bf16")

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters only the encoder uses: g_a, h_a and the gain before quantisation."""
        hyper = self.latent_codec.latent_codec["hyper"]
        return [*self.g_a.parameters(), *hyper.h_a.parameters(), self.gain.gain]

    def use_hard_rate(self, enabled: bool) -> None:
        """Train on the rate of the rounded latent (the second stage of "soft then hard", Guo et al., ICML 2021):
        the slice likelihoods of the range coder's symbols instead of the noisy proxy, which for the shipped PR
        layer overestimates the coded slices by ~18 % (a Kodak crop at R = 0.5). As in that paper, the stage trains
        the decoder side (entropy model, synthesis) with the encoder frozen (:meth:`encoder_parameters`; the
        trainer's ``--hard-rate``). The hyper-synthesis then also sees the rounded ẑ, as in decoding (the rate of
        ẑ, ~1 % of the bits, keeps its noisy proxy)."""
        for module in self.modules():
            if isinstance(module, SliceGaussianCodec):
                module.hard_rate = enabled
        self.latent_codec.latent_codec["hyper"].quantizer = "ste" if enabled else "noise"

    def synthesis(self, y_hat: Tensor, *side: Tensor) -> Tensor:
        """g_s: exact integer arithmetic in eval mode (:mod:`icmh.codec.exact`), unless the caller asked for fast
        pixels (:func:`~icmh.codec.exact.exact_synthesis`): then float, channels-last, in the precision of
        :mod:`icmh.codec.precision`."""
        if self.training:
            with self._train_autocast():
                return self.g_s(y_hat, *side).float()
        if not fast_synthesis_requested():
            return self.g_s(y_hat, *side)
        inputs = [t.contiguous(memory_format=torch.channels_last) for t in (y_hat, *side)]
        with exact_arithmetic(False), float_autocast():
            return self.g_s(*inputs).float().contiguous()

    def analysis(self, x: Tensor) -> Tensor:
        """g_a on channels-last ``x`` (a no-op for frames from ``image_to_tensor``, already channels-last; a copy of
        the concatenated ``[x_d, x̂_m]`` of the conditional codec): oneDNN's float convolutions run faster on it
        (sa-icm g_a at 1280x720 on 2 cores: 110 -> 69 ms; pr-icmh-c g_a forward + backward, 4 x 256², 232 -> 206 ms).
        The encoder runs in float, so the layout changes no guarantee. In eval mode it runs in the precision of
        :mod:`icmh.codec.precision` (bfloat16 where the CPU has it natively), in training in ``train_precision``."""
        x = x.contiguous(memory_format=torch.channels_last)
        with self._train_autocast() if self.training else float_autocast():
            return self.g_a(x).float()

    # -- coding of the (gained) latent -------------------------------------------------
    def _condition(self, ym_hat: Tensor | None) -> Tensor | None:
        return None if ym_hat is None else self.machine_context(ym_hat)

    def _code_forward(
        self, y: Tensor, q: Tensor, ym_hat: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.latent_codec(self.gain.scale(y, q), self._condition(ym_hat))
        return self.gain.unscale(out["y_hat"], q), out["likelihoods"]

    def _code_compress(self, y: Tensor, q: Tensor, ym_hat: Tensor | None = None) -> dict[str, Any]:
        out = self.latent_codec.compress(self.gain.scale(y, q), self._condition(ym_hat))
        out["y_hat"] = self.gain.unscale(out["y_hat"], q)
        return out

    def decompress_latent(
        self, strings: list[list[bytes]], shape: dict, q: Tensor, ym_hat: Tensor | None = None
    ) -> Tensor:
        y_hat = self.latent_codec.decompress(strings, shape, self._condition(ym_hat))["y_hat"]
        return self.gain.unscale(y_hat, q)

    def decoder_shape(self, height: int, width: int) -> dict[str, Any]:
        """The ``shape`` argument of :meth:`decompress` for a padded frame."""
        if height % ALIGNMENT or width % ALIGNMENT:
            raise ValueError(f"padded size must be a multiple of {ALIGNMENT}")
        y = (height // 16, width // 16)
        if self.spatial_context:
            y = (self.slice_channels, *y)
        return {"y": [y] * self.coded_slices, "hyper": (height // 64, width // 64)}

    def num_strings(self) -> int:
        """One string per slice (two with the checkerboard: anchors, non-anchors) and one for ẑ."""
        return self.coded_slices * (2 if self.spatial_context else 1) + 1


class ImageCodec(ChannelARCodec):
    """Codes an image (or a pixel residual) on its own: base, PR residual, single layer."""

    def forward(self, x: Tensor, q: Tensor) -> dict[str, Any]:
        y_hat, likelihoods = self._code_forward(self.analysis(x), q)
        return {"x_hat": self.synthesis(y_hat), "y_hat": y_hat, "likelihoods": likelihoods}

    def compress(self, x: Tensor, q: Tensor) -> dict[str, Any]:
        out = self._code_compress(self.analysis(x), q)
        return {"strings": out["strings"], "shape": out["shape"], "y_hat": out["y_hat"]}

    def decompress(self, strings: list[list[bytes]], shape: dict, q: Tensor) -> dict[str, Any]:
        y_hat = self.decompress_latent(strings, shape, q)
        return {"x_hat": self.synthesis(y_hat), "y_hat": y_hat}


class ConditionalResidualCodec(ChannelARCodec):
    """Codes the pixel residual ``x_d = x - x̂_m`` with x̂_m as side information at both ends:
    ``ŷ_d = Q(g_a([x_d, x̂_m]))``, ``x̂_d = g_s(ŷ_d, x̂_m)`` (see :class:`ConditionalSynthesis`).

    With ``machine_latent`` channels (``pr-icmh-ce``) its entropy model also sees the decoded base latent ŷ_m:
    conditional coding in full (encoder, synthesis and entropy model see the base layer, as in conditional video
    coding, e.g. Li et al., DCVC, NeurIPS 2021); each slice's scales and means come from
    ``[channel context, h_s(ẑ_d), c(ŷ_m)]``, ``c`` a small exact network at 1/16 resolution. Warm-started from
    ``pr-icmh-c``, the new inputs of the entropy networks start at zero: it starts as that codec.
    """

    def __init__(
        self, *, in_channels: int = 3, out_channels: int = 3, refine_width: int = 24,
        synthesis_blocks: Sequence[int | Sequence[int]] = (), latent_block: int = 0, synthesis_features: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels=in_channels + 3, out_channels=out_channels + synthesis_features, **kwargs)
        self.g_s = ConditionalSynthesis(self.g_s, refine_width, synthesis_blocks, latent_block, synthesis_features)

    def _latent(self, x: Tensor, x_m: Tensor) -> Tensor:
        return self.analysis(torch.cat([x, x_m], dim=1))

    def forward(self, x: Tensor, q: Tensor, x_m: Tensor, ym_hat: Tensor | None = None) -> dict[str, Any]:
        y_hat, likelihoods = self._code_forward(self._latent(x, x_m), q, ym_hat)
        return {"x_hat": self.synthesis(y_hat, x_m), "y_hat": y_hat, "likelihoods": likelihoods}

    def likelihoods(self, x: Tensor, q: Tensor, x_m: Tensor, ym_hat: Tensor | None = None) -> dict[str, Tensor]:
        """:meth:`forward`'s likelihoods without running the synthesis: all that training the entropy model alone
        needs (``icmh train --entropy-only``)."""
        return self._code_forward(self._latent(x, x_m), q, ym_hat)[1]

    def compress(self, x: Tensor, q: Tensor, x_m: Tensor, ym_hat: Tensor | None = None) -> dict[str, Any]:
        out = self._code_compress(self._latent(x, x_m), q, ym_hat)
        return {"strings": out["strings"], "shape": out["shape"], "y_hat": out["y_hat"]}

    def decompress(
        self, strings: list[list[bytes]], shape: dict, q: Tensor, x_m: Tensor, ym_hat: Tensor | None = None
    ) -> dict[str, Any]:
        y_hat = self.decompress_latent(strings, shape, q, ym_hat)
        return {"x_hat": self.synthesis(y_hat, x_m), "y_hat": y_hat}


def machine_side(model: ChannelARCodec, x_m: Tensor, ym_hat: Tensor) -> tuple[Tensor, ...]:
    """What a PR residual model takes besides its input and rate: x̂_m for the conditional codec, and ŷ_m when
    its entropy model sees the base latent; nothing for the explicit one."""
    if not isinstance(model, ConditionalResidualCodec):
        return ()
    return (x_m, ym_hat) if model.machine_latent else (x_m,)


class FeatureResidualCodec(ChannelARCodec):
    """FR-ICMH: codes ``ya_k = y_k - ŷm_k`` for the first ``coded_slices`` slices."""

    def _fuse(self, ym_hat: Tensor, ya_hat: Tensor) -> Tensor:
        """Eqs. (3)-(4) of Tatsumi et al.: add the residual to the first N_a base slices."""
        n = self.coded_channels
        return torch.cat([ym_hat[:, :n] + ya_hat, ym_hat[:, n:]], dim=1)

    def _residual(self, x: Tensor, ym_hat: Tensor) -> Tensor:
        """Eq. (2): feature residual between this codec's analysis and the base latent."""
        return self.analysis(x) - ym_hat[:, : self.coded_channels]

    def forward(self, x: Tensor, q: Tensor, ym_hat: Tensor) -> dict[str, Any]:
        ya_hat, likelihoods = self._code_forward(self._residual(x, ym_hat), q)
        x_hat = self.synthesis(self._fuse(ym_hat, ya_hat))
        return {"x_hat": x_hat, "y_hat": ya_hat, "likelihoods": likelihoods}

    def compress(self, x: Tensor, q: Tensor, ym_hat: Tensor) -> dict[str, Any]:
        out = self._code_compress(self._residual(x, ym_hat), q)
        return {"strings": out["strings"], "shape": out["shape"], "y_hat": out["y_hat"]}

    def decompress(
        self, strings: list[list[bytes]], shape: dict, q: Tensor, ym_hat: Tensor
    ) -> dict[str, Any]:
        ya_hat = self.decompress_latent(strings, shape, q)
        return {"x_hat": self.synthesis(self._fuse(ym_hat, ya_hat)), "y_hat": ya_hat}


# -- registry of named architectures ------------------------------------------------------
MODEL_DEFAULTS_PR_L: dict[str, Any] = {
    "analysis_widths": (64, 96, 128), "synthesis_widths": (128, 96, 64), "gdn": True,
    "latent": 192, "num_slices": 3, "hyper": 96, "side": 192, "context": 96,
}
#: pr-icmh-cw: pr-icmh-l's codec with the entropy model seeing ŷ_m and a wider decoder (pr-icmh-cr and -crh add blocks)
MODEL_DEFAULTS_PR_CW: dict[str, Any] = {
    **MODEL_DEFAULTS_PR_L, "synthesis_widths": (128, 96, 128), "refine_width": 48, "machine_latent": 160,
}
MODEL_REGISTRY: dict[str, tuple[Callable[..., ChannelARCodec], dict[str, Any]]] = {
    # base layer: SA-ICM, N_m = 5 slices
    "sa-icm": (ImageCodec, {"width": 48, "latent": 160, "num_slices": 5}),
    # human layer on the pixel residual: N_a = 3 slices of the same width
    "pr-icmh": (ImageCodec, {"width": 48, "latent": 96, "num_slices": 3}),
    # human layer on the pixel residual, larger (session 3): GDN encoder, wider decoder, 192-channel latent.
    # The width-48 models flatten near 30 dB; this one keeps its cost in the 1/8 and 1/4 stages of g_s.
    "pr-icmh-l": (ImageCodec, MODEL_DEFAULTS_PR_L),
    # pr-icmh-l with x̂_m at the encoder and in the synthesis (conditional residual coding, session 6);
    # starts as exactly pr-icmh-l when warm-started from it (icmh train --init-from)
    "pr-icmh-c": (ConditionalResidualCodec, MODEL_DEFAULTS_PR_L),
    # pr-icmh-c whose entropy model also sees the base latent ŷ_m (session 8); starts as exactly pr-icmh-c
    "pr-icmh-ce": (ConditionalResidualCodec, {**MODEL_DEFAULTS_PR_L, "machine_latent": 160}),
    # pr-icmh-ce with a wider decoder (session 11): half-resolution stage 64 -> 128 channels, full-resolution
    # refinement 24 -> 48; warm-started from pr-icmh-ce it starts as exactly that codec (``widened``), the encoder and
    # the entropy model are the same size (the edge's cost does not change)
    "pr-icmh-cw": (ConditionalResidualCodec, MODEL_DEFAULTS_PR_CW),
    # pr-icmh-cw with residual blocks after its 1/8- and 1/4-resolution synthesis stages (session 13; +15 k MAC/pixel
    # on the decoder's 40 k); warm-started from pr-icmh-cw it starts as exactly that codec (the blocks start as the
    # identity); encoder and entropy model unchanged
    "pr-icmh-cr": (ConditionalResidualCodec, {**MODEL_DEFAULTS_PR_CW, "synthesis_blocks": (128, 96)}),
    # pr-icmh-cr with a third residual block, 32 wide, after the half-resolution stage (where x̂_m joins; +18 k
    # MAC/pixel); warm-started from pr-icmh-cr it starts as exactly that codec (session 13; pr-icmh-cb started from it)
    "pr-icmh-crh": (ConditionalResidualCodec, {**MODEL_DEFAULTS_PR_CW, "synthesis_blocks": (128, 96, 32)}),
    # the default PR layer of session 14: pr-icmh-crh whose slices are coded in two checkerboard passes (a
    # 128-channel spatial context of the anchors joins each slice's entropy parameters); warm-started from
    # pr-icmh-crh (or -cr) it starts as that codec's latents and pixels (the new input starts at zero)
    "pr-icmh-cb": (
        ConditionalResidualCodec, {**MODEL_DEFAULTS_PR_CW, "synthesis_blocks": (128, 96, 32), "spatial_context": 128},
    ),
    # the default PR layer since session 15: pr-icmh-cb with a fourth slice (latent 192 -> 256 channels; the curves
    # of the 192-channel layers flatten above ~1.5 bpp). Warm-started from pr-icmh-cb the new slice reaches the
    # synthesis through zero weights, so the pixels start as that codec's (its bits cost what the new slice's entropy
    # model gives them); encoder +3.2 k MAC/pixel, decoder +3.0 k
    "pr-icmh-cb4": (
        ConditionalResidualCodec,
        {**MODEL_DEFAULTS_PR_CW, "latent": 256, "num_slices": 4, "synthesis_blocks": (128, 96, 32),
         "spatial_context": 128},
    ),
    # pr-icmh-cb4 with a deeper decoder (session 17; its synthesis, not its coding, caps the top rate: with the latent
    # optimised for MSE alone, g_s gains 1.3-2 dB over the encoder's unquantised latent): a second residual block at
    # 1/8 and 1/4 resolution, one on ŷ_d at 1/16, and 8 full-resolution feature channels from the last layer into the
    # refinement (+27 k MAC/pixel). Warm-started from pr-icmh-cb4 it decodes exactly that codec's pixels
    "pr-icmh-cb4d": (
        ConditionalResidualCodec,
        {**MODEL_DEFAULTS_PR_CW, "latent": 256, "num_slices": 4, "synthesis_blocks": ((128, 128), (96, 96), 32),
         "spatial_context": 128, "latent_block": 128, "synthesis_features": 8},
    ),
    # pr-icmh-cb4 with a deeper entropy model (session 19): a residual block (hidden 64, two exact 3x3 convolutions at
    # 1/16 resolution) after h_s, after the machine context c(ŷ_m) and after each slice's channel context (+2.6 k
    # MAC/pixel on each side; transforms unchanged). Warm-started from pr-icmh-cb4 the blocks are identities, so it
    # codes exactly that codec's bits; ``icmh train --entropy-only`` then trains the entropy model alone
    "pr-icmh-cb4e": (
        ConditionalResidualCodec,
        {**MODEL_DEFAULTS_PR_CW, "latent": 256, "num_slices": 4, "synthesis_blocks": (128, 96, 32),
         "spatial_context": 128, "entropy_block": 64},
    ),
    # human layer on the feature residual: synthesis over all N_m slices, N_a = 3 coded
    "fr-icmh": (FeatureResidualCodec, {"width": 48, "latent": 160, "num_slices": 5, "coded_slices": 3}),
    # fr-icmh with a wider synthesis (session 11), warm-started from fr-icmh it starts as exactly that codec
    # (``widened``); the encoder (FR-ICMH's point: the lighter edge) is the same
    "fr-icmh-w": (
        FeatureResidualCodec,
        {"width": 48, "synthesis_widths": (128, 96, 64), "latent": 160, "num_slices": 5, "coded_slices": 3},
    ),
    # single-layer reference: same architecture as the base, plain MSE
    "single": (ImageCodec, {"width": 48, "latent": 160, "num_slices": 5}),
    # single-layer reference of the PR layer's size (pr-icmh-l's transforms and entropy model on the image itself):
    # what one codec of that capacity does without a base layer, i.e. what scalability costs
    "single-l": (ImageCodec, MODEL_DEFAULTS_PR_L),
    # tiny variants for tests
    "sa-icm-tiny": (ImageCodec, {"width": 8, "latent": 40, "num_slices": 5, "hyper": 8, "side": 16, "context": 8}),
    "pr-icmh-tiny": (ImageCodec, {"width": 8, "latent": 24, "num_slices": 3, "hyper": 8, "side": 16, "context": 8}),
    "pr-icmh-c-tiny": (
        ConditionalResidualCodec, {"width": 8, "latent": 24, "num_slices": 3, "hyper": 8, "side": 16, "context": 8},
    ),
    "pr-icmh-ce-tiny": (
        ConditionalResidualCodec,
        {"width": 8, "latent": 24, "num_slices": 3, "hyper": 8, "side": 16, "context": 8, "machine_latent": 40},
    ),
    "pr-icmh-cw-tiny": (
        ConditionalResidualCodec,
        {"width": 8, "synthesis_widths": (8, 8, 12), "refine_width": 32, "latent": 24, "num_slices": 3, "hyper": 8,
         "side": 16, "context": 8, "machine_latent": 40},
    ),
    "pr-icmh-cr-tiny": (
        ConditionalResidualCodec,
        {"width": 8, "synthesis_widths": (8, 8, 12), "refine_width": 32, "synthesis_blocks": (8, 0, 6), "latent": 24,
         "num_slices": 3, "hyper": 8, "side": 16, "context": 8, "machine_latent": 40},
    ),
    "pr-icmh-cb-tiny": (
        ConditionalResidualCodec,
        {"width": 8, "synthesis_widths": (8, 8, 12), "refine_width": 32, "synthesis_blocks": (8, 0, 6), "latent": 24,
         "num_slices": 3, "hyper": 8, "side": 16, "context": 8, "machine_latent": 40, "spatial_context": 8},
    ),
    "pr-icmh-cb4-tiny": (
        ConditionalResidualCodec,
        {"width": 8, "synthesis_widths": (8, 8, 12), "refine_width": 32, "synthesis_blocks": (8, 0, 6), "latent": 32,
         "num_slices": 4, "hyper": 8, "side": 16, "context": 8, "machine_latent": 40, "spatial_context": 8},
    ),
    "pr-icmh-cb4d-tiny": (
        ConditionalResidualCodec,
        {"width": 8, "synthesis_widths": (8, 8, 12), "refine_width": 32, "synthesis_blocks": ((8, 4), 0, 6),
         "latent": 32, "num_slices": 4, "hyper": 8, "side": 16, "context": 8, "machine_latent": 40,
         "spatial_context": 8, "latent_block": 8, "synthesis_features": 2},
    ),
    "pr-icmh-cb4e-tiny": (
        ConditionalResidualCodec,
        {"width": 8, "synthesis_widths": (8, 8, 12), "refine_width": 32, "synthesis_blocks": (8, 0, 6), "latent": 32,
         "num_slices": 4, "hyper": 8, "side": 16, "context": 8, "machine_latent": 40, "spatial_context": 8,
         "entropy_block": 8},
    ),
    "fr-icmh-tiny": (
        FeatureResidualCodec,
        {"width": 8, "latent": 40, "num_slices": 5, "coded_slices": 3, "hyper": 8, "side": 16, "context": 8},
    ),
    "fr-icmh-w-tiny": (
        FeatureResidualCodec,
        {"width": 8, "synthesis_widths": (16, 12, 8), "latent": 40, "num_slices": 5, "coded_slices": 3, "hyper": 8,
         "side": 16, "context": 8},
    ),
}


def build_model(architecture: str, **overrides: Any) -> ChannelARCodec:
    """Instantiate a registered architecture (``overrides`` replace its defaults)."""
    try:
        factory, defaults = MODEL_REGISTRY[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(MODEL_REGISTRY)}") from None
    return factory(**{**defaults, **overrides})
