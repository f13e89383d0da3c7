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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Exact integers in float64: every partial sum must stay strictly below this.
EXACT_LIMIT = 2**53
#: Fractional bits: the finest the 2**53 bound allows, within these limits. Inputs (z_hat) and hidden
#: activations start at 2**-20; weights get 2**-22 at most, and a layer's input scale is lowered until its
#: weights can have at least WEIGHT_BITS_TARGET bits.
INPUT_BITS = 20
ACT_BITS_MAX, ACT_BITS_MIN = 20, 4
WEIGHT_BITS_MAX, WEIGHT_BITS_TARGET, WEIGHT_BITS_MIN = 22, 18, 10
#: Means leave ``h_s`` at 2**-12 (range +-4096) and below 2**24 in magnitude, so that their float32
#: values ``int * 2**-12`` are exact and ``round(y - means)``, ``symbols + means`` agree everywhere.
MEAN_BITS = 12
MEAN_LIMIT = 2**24 - 1
#: The last accumulator is compared with floor(scale_table * 2**bits): more bits than this buy nothing.
MAX_OUT_BITS = 44
SLOPE_BITS = 16

#: cuDNN and oneDNN are switched per process, not per thread: coding threads take this lock so that one
#: does not switch a backend back on under another.
BACKEND_LOCK = threading.RLock()


class FixedPointOverflowError(ValueError):
    """No fixed-point scales keep every partial sum of ``h_s`` below 2**53 (weights far too large)."""


@dataclass
class _Layer:
    transposed: bool
    stride: tuple
    padding: tuple
    output_padding: tuple
    weight: torch.Tensor  # float64, integer-valued, at 2**weight_bits
    bias: torch.Tensor  # float64, integer-valued, at 2**(in_bits + weight_bits)
    in_bits: int
    weight_bits: int
    out_bits: int
    slope_q: int | None  # None: no activation; 0: ReLU; else LeakyReLU slope slope_q / 2**SLOPE_BITS
    acc_bound: int  # proven bound on every partial sum


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
        specs = _parse(h_s)
        medians = medians.detach().to("cpu", torch.float64)
        z_low, z_high = (t.to("cpu", torch.int64) for t in z_range)
        if not bool(torch.isfinite(medians).all()):
            raise FixedPointOverflowError("bottleneck medians are not finite")
        layers = (_planned_layers(specs, plan, medians, z_low, z_high) if plan is not None
                  else _search_layers(specs, medians, z_low, z_high))
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
        layers = [_Layer(**{**vars(layer), "weight": move(layer.weight), "bias": move(layer.bias)})
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


def _input_interval(medians: torch.Tensor, z_low: torch.Tensor, z_high: torch.Tensor, bits: int):
    median_q = torch.round(medians * 2.0**bits).to(torch.int64)
    low = ((z_low << bits) + median_q).clamp(max=0)
    high = ((z_high << bits) + median_q).clamp(min=0)
    return low.tolist(), high.tolist()


def _search_layers(specs, medians: torch.Tensor, z_low: torch.Tensor, z_high: torch.Tensor) -> list[_Layer]:
    """The layers with the finest scales that the 2**53 bound allows (see the module docstring)."""
    def input_interval(bits):
        return _input_interval(medians, z_low, z_high, bits)

    in_bits = _choose_bits(input_interval, specs[0][0], INPUT_BITS)
    interval = input_interval(in_bits)
    layers = []
    for position, (module, slope_q) in enumerate(specs):
        weight_bits = _largest_weight_bits(module, interval, in_bits)
        acc_low, acc_high, acc_bound = _accumulator(module, interval, in_bits, weight_bits)
        if position == len(specs) - 1:
            # Scales are compared with the table at the accumulator's own precision; only the means
            # are rescaled (to MEAN_BITS, in __call__).
            out_bits = in_bits + weight_bits
            if not MEAN_BITS <= out_bits <= MAX_OUT_BITS:
                raise FixedPointOverflowError(f"h_s output at 2**-{out_bits} is outside [{MEAN_BITS}, {MAX_OUT_BITS}]")
        else:
            def out_interval(bits, acc=(acc_low, acc_high), shift_from=in_bits + weight_bits, slope=slope_q):
                return _activation_interval(*acc, shift_from - bits, slope) if bits <= shift_from else None
            out_bits = _choose_bits(out_interval, specs[position + 1][0], ACT_BITS_MAX)
        shift = in_bits + weight_bits - out_bits
        acc_bound += 1 << shift  # the rounding offset added before the shift
        if acc_bound >= EXACT_LIMIT:  # _largest_weight_bits already made sure; kept as the proof's last line
            raise FixedPointOverflowError(f"h_s layer {position}: rounding could overflow 2**53")
        layers.append(_layer(module, slope_q, in_bits, weight_bits, out_bits, acc_bound))
        interval = _activation_interval(acc_low, acc_high, shift, slope_q)
        if interval is None:
            raise FixedPointOverflowError(f"h_s layer {position}: the LeakyReLU product could overflow 2**53")
        in_bits = out_bits
    return layers


def _planned_layers(specs, plan: list[dict], medians: torch.Tensor, z_low: torch.Tensor,
                    z_high: torch.Tensor) -> list[_Layer]:
    """The layers of a stored :meth:`FixedPointHyperSynthesis.plan`, after checking that it fits ``specs``
    and proving its bounds again, as :func:`_search_layers` does for the scales it chooses."""
    if not isinstance(plan, list) or len(plan) != len(specs):
        raise ValueError(f"integer prior plan has {len(plan) if isinstance(plan, list) else 'no'} layers; h_s has {len(specs)}")
    chosen, in_bits = [], None
    for position, ((module, slope_q), entry) in enumerate(zip(specs, plan)):
        bits = [entry.get(key) for key in ("in_bits", "weight_bits", "out_bits", "acc_bound")] \
            if isinstance(entry, dict) else [None]
        last = position == len(specs) - 1
        fits = (all(type(b) is int for b in bits)
                and entry.get("transposed") == isinstance(module, nn.ConvTranspose2d)
                and entry.get("slope_q") == slope_q and in_bits in (None, bits[0])
                and (ACT_BITS_MIN <= bits[0] <= INPUT_BITS) and WEIGHT_BITS_MIN <= bits[1] <= WEIGHT_BITS_MAX
                and (bits[2] == bits[0] + bits[1] if last else ACT_BITS_MIN <= bits[2] <= min(ACT_BITS_MAX, bits[0] + bits[1]))
                and 0 <= bits[3] < EXACT_LIMIT)
        if not fits:
            raise ValueError(f"integer prior plan does not fit h_s layer {position}")
        chosen.append(bits)
        in_bits = bits[2]
    if not MEAN_BITS <= in_bits <= MAX_OUT_BITS:
        raise ValueError(f"integer prior plan ends at 2**-{in_bits}, outside [{MEAN_BITS}, {MAX_OUT_BITS}]")
    interval = _input_interval(medians, z_low, z_high, chosen[0][0])
    layers = []
    for position, ((module, slope_q), (in_bits, weight_bits, out_bits, stored_bound)) in enumerate(zip(specs, chosen)):
        acc_low, acc_high, acc_bound = _accumulator(module, interval, in_bits, weight_bits)
        shift = in_bits + weight_bits - out_bits
        acc_bound += 1 << shift
        interval = _activation_interval(acc_low, acc_high, shift, slope_q)
        if acc_bound != stored_bound or acc_bound >= EXACT_LIMIT or interval is None:
            raise ValueError(f"integer prior plan: the bound of h_s layer {position} does not hold for these weights")
        layers.append(_layer(module, slope_q, in_bits, weight_bits, out_bits, acc_bound))
    return layers


def _layer(module, slope_q, in_bits: int, weight_bits: int, out_bits: int, acc_bound: int) -> _Layer:
    weight, bias = _quantized(module, in_bits, weight_bits)
    return _Layer(isinstance(module, nn.ConvTranspose2d), module.stride, module.padding,
                  getattr(module, "output_padding", (0, 0)), weight, bias, in_bits, weight_bits, out_bits,
                  slope_q, acc_bound)


def _parse(h_s: nn.Sequential) -> list[tuple[nn.Module, int | None]]:
    """(convolution, activation slope) pairs; slope None = no activation, 0 = ReLU."""
    specs = []
    for module in h_s:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            if module.groups != 1 or tuple(module.dilation) != (1, 1) or module.padding_mode != "zeros":
                raise ValueError(f"fixed-point h_s supports plain convolutions only, got {module}")
            specs.append([module, None])
        elif isinstance(module, (nn.ReLU, nn.LeakyReLU)) and specs and specs[-1][1] is None:
            slope = module.negative_slope if isinstance(module, nn.LeakyReLU) else 0.0
            if not 0.0 <= slope < 1.0:
                raise ValueError(f"fixed-point h_s needs a LeakyReLU slope in [0, 1), got {slope}")
            specs[-1][1] = int(round(slope * 2.0**SLOPE_BITS))
        else:
            raise ValueError(f"fixed-point h_s cannot represent {module}")
    if not specs:
        raise ValueError("h_s has no convolutions")
    return [tuple(spec) for spec in specs]


# -- derivation helpers: Python integers throughout, so the choices are the same on every machine ----------


def _quantized(module, in_bits: int, weight_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight = module.weight.detach().to("cpu", torch.float64)
    bias = module.bias.detach().to("cpu", torch.float64) if module.bias is not None else None
    if not bool(torch.isfinite(weight).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
        raise FixedPointOverflowError(f"{module} has non-finite weights")
    out_channels = weight.shape[1] if isinstance(module, nn.ConvTranspose2d) else weight.shape[0]
    bias = torch.zeros(out_channels, dtype=torch.float64) if bias is None else bias
    # Scaling a float by a power of two and rounding are exact: the same integers everywhere.
    return (torch.round(weight * 2.0**weight_bits).contiguous(),
            torch.round(bias * 2.0**(in_bits + weight_bits)).contiguous())


def _phase_sums(module, weight_q: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per output phase, (sum of positive, sum of negative) weights as (out, in) arrays of Python ints.

    A transposed convolution with stride s feeds each output pixel from the taps of one residue class
    (k = const mod s), so the bound is taken over classes, not over all taps.
    """
    if isinstance(module, nn.ConvTranspose2d):
        weight_q = weight_q.transpose(0, 1)
        (sh, sw), phases = module.stride, []
        for ry in range(sh):
            for rx in range(sw):
                phases.append(weight_q[..., ry::sh, rx::sw])
    else:
        phases = [weight_q]
    sums = []
    for taps in phases:
        taps = taps.to(torch.int64)
        positive = taps.clamp(min=0).sum((2, 3)).numpy().astype(object)
        negative = (-taps).clamp(min=0).sum((2, 3)).numpy().astype(object)
        sums.append((positive, negative))
    return sums


def _accumulator(module, interval, in_bits: int, weight_bits: int) -> tuple[list, list, int]:
    """Per-channel range of the accumulator, and the bound on |every partial sum| (bias included)."""
    weight_q, bias_q = _quantized(module, in_bits, weight_bits)
    low = np.array(interval[0], dtype=object)
    high = np.array(interval[1], dtype=object)
    magnitude = np.array([max(-lo, hi) for lo, hi in zip(interval[0], interval[1])], dtype=object)
    bias = [int(b) for b in bias_q.tolist()]
    acc_low = acc_high = bound = None
    for positive, negative in _phase_sums(module, weight_q):
        # Inputs lie in [low, high] with low <= 0 <= high (zero padding is an input too).
        phase_high = positive.dot(high) - negative.dot(low)
        phase_low = positive.dot(low) - negative.dot(high)
        phase_bound = (positive + negative).dot(magnitude)
        acc_high = phase_high if acc_high is None else np.maximum(acc_high, phase_high)
        acc_low = phase_low if acc_low is None else np.minimum(acc_low, phase_low)
        bound = phase_bound if bound is None else np.maximum(bound, phase_bound)
    acc_low = [int(v) + b for v, b in zip(acc_low, bias)]
    acc_high = [int(v) + b for v, b in zip(acc_high, bias)]
    bound = max(int(v) + abs(b) for v, b in zip(bound, bias))
    return acc_low, acc_high, bound


def _fits(module, interval, in_bits: int, weight_bits: int) -> bool:
    # The rounding offset added before the shift is below 2**(in_bits + weight_bits).
    return _accumulator(module, interval, in_bits, weight_bits)[2] + (1 << max(in_bits + weight_bits, 0)) < EXACT_LIMIT


def _largest_weight_bits(module, interval, in_bits: int) -> int:
    for weight_bits in range(WEIGHT_BITS_MAX, WEIGHT_BITS_MIN - 1, -1):
        if _fits(module, interval, in_bits, weight_bits):
            return weight_bits
    raise FixedPointOverflowError(f"{module}: no weight precision >= 2**-{WEIGHT_BITS_MIN} keeps sums below 2**53")


def _choose_bits(interval_of, next_module, max_bits: int) -> int:
    """The finest activation scale that still leaves ``next_module`` WEIGHT_BITS_TARGET bits of weights."""
    for bits in range(max_bits, ACT_BITS_MIN - 1, -1):
        interval = interval_of(bits)
        if interval is not None and _fits(next_module, interval, bits, WEIGHT_BITS_TARGET):
            return bits
    raise FixedPointOverflowError(f"{next_module}: no activation precision >= 2**-{ACT_BITS_MIN} fits in 2**53")


def _activation_interval(acc_low: list, acc_high: list, shift: int, slope_q: int | None):
    """Per-channel range after rescaling by 2**-shift and the activation, widened to contain 0; None if the
    LeakyReLU product could leave the exact range."""
    def rescale(v):
        return (v + (1 << (shift - 1))) >> shift if shift > 0 else v << -shift
    low, high = [], []
    for lo, hi in zip(acc_low, acc_high):
        lo, hi = rescale(lo), rescale(hi)
        if slope_q == 0:
            lo, hi = max(lo, 0), max(hi, 0)
        elif slope_q is not None:
            if abs(lo) * slope_q >= EXACT_LIMIT:
                return None
            lo = (lo * slope_q) >> SLOPE_BITS if lo < 0 else lo
            hi = (hi * slope_q) >> SLOPE_BITS if hi < 0 else hi
        low.append(min(lo, 0))
        high.append(max(hi, 0))
    return low, high


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
