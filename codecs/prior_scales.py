"""The integer prior's fixed-point scales, chosen and proven exact with Python integers.

:class:`~latentzip.codecs.integer_prior.FixedPointHyperSynthesis` evaluates ``h_s`` on integers held in
float64, which is exact while every partial sum stays below ``2**53``. This module decides, per layer, the
power-of-two scales of inputs, weights and outputs (as fine as that bound allows) and proves the bound for
every input in the clamped range: sum over taps of ``|W| * max|input|`` plus ``|bias|``, per output channel
and per transposed-convolution phase (:func:`search_layers`); or it checks and proves a stored choice again
(:func:`planned_layers`). Python integers throughout, so every machine makes the same choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
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


class FixedPointOverflowError(ValueError):
    """No fixed-point scales keep every partial sum of ``h_s`` below 2**53 (weights far too large)."""


@dataclass
class Layer:
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


def _input_interval(medians: torch.Tensor, z_low: torch.Tensor, z_high: torch.Tensor, bits: int):
    median_q = torch.round(medians * 2.0**bits).to(torch.int64)
    low = ((z_low << bits) + median_q).clamp(max=0)
    high = ((z_high << bits) + median_q).clamp(min=0)
    return low.tolist(), high.tolist()


def search_layers(specs, medians: torch.Tensor, z_low: torch.Tensor, z_high: torch.Tensor) -> list[Layer]:
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


def planned_layers(specs, plan: list[dict], medians: torch.Tensor, z_low: torch.Tensor,
                    z_high: torch.Tensor) -> list[Layer]:
    """The layers of a stored :meth:`FixedPointHyperSynthesis.plan`, after checking that it fits ``specs``
    and proving its bounds again, as :func:`search_layers` does for the scales it chooses."""
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


def _layer(module, slope_q, in_bits: int, weight_bits: int, out_bits: int, acc_bound: int) -> Layer:
    weight, bias = _quantized(module, in_bits, weight_bits)
    return Layer(isinstance(module, nn.ConvTranspose2d), module.stride, module.padding,
                  getattr(module, "output_padding", (0, 0)), weight, bias, in_bits, weight_bits, out_bits,
                  slope_q, acc_bound)


def parse_h_s(h_s: nn.Sequential) -> list[tuple[nn.Module, int | None]]:
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


# -- helpers: Python integers throughout, so the choices are the same on every machine -----------------


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
