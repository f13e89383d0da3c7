"""Entropy-coding parameters in exact integer arithmetic, identical on every machine.

J. Ballé, N. Johnston, D. Minnen, "Integer networks for data compression with latent-variable models",
ICLR 2019: if the network that predicts the prior is computed in floating point, encoder and decoder can
disagree by one ulp (another batch, thread count, memory layout, CPU vs GPU, library version), pick another
scale index for some latent, and the range decoder returns garbage from there on. Computing the prior with
integers removes the disagreement.

:class:`FixedPointHyperSynthesis` is ``h_s`` of a trained model put in fixed point *at load time*:

- Input: the integer symbols of ``z`` (what the entropy bottleneck codes), clamped per channel to a range
  derived from the bottleneck's tables, plus the bottleneck's medians, all at ``2**input_bits``.
- Each layer: weights ``round(w * 2**weight_bits)``, bias ``round(b * 2**(in_bits + weight_bits))``, an
  integer convolution, then ``floor((acc + half) / 2**shift)`` back to ``2**out_bits`` and ReLU or LeakyReLU
  (slope ``q / 2**16``, negative part floored).
- Output: scales compared with the scale table in fixed point (``GaussianConditional.build_indexes``
  semantics, its lower bound included) to give indexes; means, for the mean-scale model, as integers at
  ``2**MEAN_BITS`` below ``2**24``, so their float32 values are exact.

Why it is exact. Every tensor holds integers in float64. A product or sum of integers is exact as long as
its magnitude stays below ``2**53``, whatever the order of summation, blocking, FMA or thread split. The
derivation proves, with Python integers, that for every input in the clamped range every partial sum of
every layer stays below ``2**53`` (sum over taps of ``|W| * max|input|`` plus ``|bias|``, per output
channel and per transposed-convolution phase), choosing the power-of-two scales as fine as that allows,
and raises :class:`FixedPointOverflowError` if no choice fits. Multiplying a float32 by a power of two and
rounding is exact too, so every machine derives the same integers from the same weights. What remains is
to keep the convolution a sum of products: on CPU, float64 convolutions run as im2col + GEMM; on CUDA,
cuDNN (which may pick FFT or Winograd) is switched off for these calls.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentzip.codecs import prior_scales
from latentzip.codecs.prior_scales import (  # noqa: F401 - FixedPointOverflowError re-exported
    EXACT_LIMIT, MEAN_BITS, MEAN_LIMIT, SLOPE_BITS, FixedPointOverflowError, Layer)

#: cuDNN and oneDNN are switched per process, not per thread: coding threads take this lock so that one
#: does not switch a backend back on under another.
BACKEND_LOCK = threading.RLock()


def exact_conv_backend(device: torch.device):
    """Context for float64 convolutions that must be plain sums of products (see module docstring)."""
    if device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=False)
    return nullcontext()  # oneDNN has no float64 convolution: CPU already takes im2col + GEMM


@contextmanager
def native_cpu_convolutions():
    """oneDNN off: its fp32 transposed convolution sums in an order that depends on the thread count."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


class FixedPointHyperSynthesis:
    """``h_s`` in fixed point: ``z`` symbols (B, N, h, w) -> scale indexes (B, M, 4h, 4w) and means or None.

    Build with :meth:`derive` from a trained model's float modules; the result depends only on their values.
    """

    def __init__(self, layers, z_low, z_high, median_q, input_bits, thresholds, index_base, with_means):
        self.layers = layers
        self.z_low, self.z_high = z_low, z_high  # (1, N, 1, 1) float64 symbol clamp
        self.median_q = median_q  # (1, N, 1, 1) float64, medians at 2**input_bits
        self.input_bits = input_bits
        self.thresholds = thresholds  # float64, scale-table thresholds at 2**out_bits of the last layer
        self.index_base = index_base  # len(table) - 1 - len(thresholds)
        self.with_means = with_means

    # -- derivation ---------------------------------------------------------------------------------------
    @classmethod
    def derive(cls, h_s: nn.Sequential, medians: torch.Tensor, z_range: tuple[torch.Tensor, torch.Tensor],
               scale_table: torch.Tensor, scale_bound: float, with_means: bool,
               plan: list[dict] | None = None) -> "FixedPointHyperSynthesis":
        """Fixed-point ``h_s`` from float modules.

        ``medians``: (N,) float32 bottleneck medians; ``z_range``: per-channel (low, high) integer symbol
        clamp; ``scale_table``: GaussianConditional's float32 table; ``scale_bound``: its lower bound.
        ``plan``: :meth:`plan` of an earlier derivation from the very same tensors (stored with the codec,
        keyed by its model id): its scales are taken instead of searched for, which is what costs seconds,
        and the bounds are proven again for them (a plan comes from a file, so it is a hint, never trusted);
        the integers themselves are computed from the weights the same way either way. A plan that does
        not fit these modules, or whose bounds do not hold, raises ValueError.
        """
        specs = prior_scales.parse_h_s(h_s)
        medians = medians.detach().to("cpu", torch.float64)
        z_low, z_high = (t.to("cpu", torch.int64) for t in z_range)
        if not bool(torch.isfinite(medians).all()):
            raise FixedPointOverflowError("bottleneck medians are not finite")
        layers = (prior_scales.planned_layers(specs, plan, medians, z_low, z_high) if plan is not None
                  else prior_scales.search_layers(specs, medians, z_low, z_high))
        out_bits = layers[-1].out_bits
        table = [float(s) for s in scale_table.detach().cpu().float()]
        bound = float(torch.tensor(scale_bound, dtype=torch.float32))
        # build_indexes counts the entries s of table[:-1] with max(scale, bound) <= s; entries below the
        # bound never count, and for the others scale <= s <=> scale_q <= floor(s * 2**out_bits) (exact:
        # a float32 times a power of two, and checked to stay below 2**53).
        if not table or max(table) * 2.0**out_bits >= EXACT_LIMIT:
            raise FixedPointOverflowError(f"scale table up to {max(table, default=0)} cannot be compared at 2**-{out_bits}")
        thresholds = torch.tensor([np.floor(s * 2.0**out_bits) for s in table[:-1] if bound <= s], dtype=torch.float64)
        z_shape = (1, -1, 1, 1)
        median_q = torch.round(medians * 2.0**layers[0].in_bits).reshape(z_shape)
        return cls(layers, z_low.double().reshape(z_shape), z_high.double().reshape(z_shape), median_q,
                   layers[0].in_bits, thresholds, len(table) - 1 - len(thresholds), with_means)

    def plan(self) -> list[dict]:
        """Per layer, the choices :meth:`derive` searched for (scales and proven bounds), JSON-ready: what a
        codec stores so that loading it skips the search (``derive(..., plan=...)``)."""
        return [{"transposed": layer.transposed, "slope_q": layer.slope_q, "in_bits": layer.in_bits,
                 "weight_bits": layer.weight_bits, "out_bits": layer.out_bits, "acc_bound": layer.acc_bound}
                for layer in self.layers]

    def to(self, device) -> "FixedPointHyperSynthesis":
        device = torch.device(device)
        move = lambda t: t.to(device)  # noqa: E731
        layers = [Layer(**{**vars(layer), "weight": move(layer.weight), "bias": move(layer.bias)})
                  for layer in self.layers]
        return FixedPointHyperSynthesis(layers, move(self.z_low), move(self.z_high), move(self.median_q),
                                        self.input_bits, move(self.thresholds), self.index_base, self.with_means)

    def describe(self) -> list[dict]:
        """Per layer: fractional bits and the proven accumulator bound (for docs and debugging)."""
        return [{"transposed": layer.transposed, "in_bits": layer.in_bits, "weight_bits": layer.weight_bits,
                 "out_bits": layer.out_bits, "acc_bound_log2": round(float(np.log2(max(layer.acc_bound, 1))), 2)}
                for layer in self.layers]

    # -- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, z_symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = z_symbols.to(self.median_q.device, torch.float64).contiguous()
        x = torch.minimum(torch.maximum(x, self.z_low), self.z_high) * 2.0**self.input_bits + self.median_q
        with BACKEND_LOCK, exact_conv_backend(x.device):
            for layer in self.layers:
                conv = F.conv_transpose2d if layer.transposed else F.conv2d
                extra = {"output_padding": layer.output_padding} if layer.transposed else {}
                acc = conv(x, layer.weight, layer.bias, stride=layer.stride, padding=layer.padding, **extra)
                if acc.numel() and float(acc.abs().max()) >= EXACT_LIMIT:  # cannot happen if derive() is right
                    raise RuntimeError("fixed-point h_s left the exact range of float64")
                x = _rescale(acc, layer.in_bits + layer.weight_bits - layer.out_bits)
                x = _activate(x, layer.slope_q)
        if self.with_means:
            scales_q, means_q = x.chunk(2, 1)
            means_q = _rescale(means_q, self.layers[-1].out_bits - MEAN_BITS)
            means = (means_q.clamp(-MEAN_LIMIT, MEAN_LIMIT).float() * 2.0**-MEAN_BITS).contiguous()
        else:
            scales_q, means = x, None
        # index = len(table) - 1 - #{thresholds >= scale_q}, and searchsorted gives the number of thresholds
        # below scale_q (exact comparisons of integers in float64).
        below = torch.searchsorted(self.thresholds, scales_q.contiguous(), right=False)
        return (below + self.index_base).to(torch.int32), means


# -- evaluation helpers: exact on integer-valued float64 tensors ---------------------------------------------


def _rescale(acc: torch.Tensor, shift: int) -> torch.Tensor:
    if shift == 0:
        return acc
    # Round half up; adding 2**(shift-1) and scaling by a power of two are exact below 2**53.
    return torch.floor((acc + 2.0 ** (shift - 1)) * 2.0**-shift)


def _activate(x: torch.Tensor, slope_q: int | None) -> torch.Tensor:
    if slope_q is None:
        return x
    if slope_q == 0:
        return x.clamp(min=0)
    return torch.where(x >= 0, x, torch.floor(x * float(slope_q) * 2.0**-SLOPE_BITS))
