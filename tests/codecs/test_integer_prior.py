"""codecs/integer_prior.py and codecs/prior_scales.py: the fixed-point h_s, its scales and proven bounds.

A small mean-scale hyperprior (N=8, M=12) with random weights; z symbols drawn inside and far outside the
bottleneck's tables. Cross-machine and cross-layout identity of whole codecs is in tests/codecs/test_determinism.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from latentzip.codecs import integer_prior, prior_scales
from latentzip.codecs.hyperprior import CodecConfig, build_model
from latentzip.codecs.integer_prior import FixedPointHyperSynthesis, FixedPointOverflowError
from latentzip.codecs.prior_scales import EXACT_LIMIT, MEAN_BITS, SLOPE_BITS

ARCHS = ("scale-hyperprior", "mean-scale-hyperprior")


def _model(arch="mean-scale-hyperprior", entropy_params="integer", seed=0, state=None):
    torch.manual_seed(seed)
    model = build_model(CodecConfig(arch=arch, N=8, M=12, entropy_params=entropy_params))
    if state is not None:
        model.load_state_dict(state)
    model.update(force=True)
    return model.eval()


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return _model(request.param)


def _z_symbols(model, batch=2, size=(3, 5), spread=2, seed=0):
    bottleneck = model.entropy_bottleneck
    offset = bottleneck._offset.reshape(1, -1, 1, 1).long()
    width = bottleneck._cdf_length.reshape(1, -1, 1, 1).long() - 2
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(-spread, int(width.min()) + spread, (batch, offset.shape[1], *size), generator=generator)
    return (offset + noise).to(torch.int32)


def _derive(model, plan=None) -> FixedPointHyperSynthesis:
    """A fresh derivation from the model's tensors, as ScaleHyperprior.integer_prior makes it."""
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    width, offset = eb._cdf_length.long() - 2, eb._offset.long()
    return FixedPointHyperSynthesis.derive(model.h_s, eb.quantiles[:, 0, 1], (offset - width, offset + 2 * width - 1),
                                           gc.scale_table, float(gc.lower_bound_scale.bound),
                                           with_means=model.predicts_means, plan=plan)


def test_agrees_with_the_float_prior_and_outputs_exact_types(model):
    z = _z_symbols(model)
    indexes, means = model.integer_prior()(z)
    assert indexes.dtype == torch.int32 and indexes.shape == (2, 12, 12, 20)
    floating = _model(model.config.arch, "float", state=model.state_dict())
    float_indexes, float_means = floating.entropy_parameters(z)
    differ = indexes != float_indexes
    assert float(differ.float().mean()) < 0.01 and int((indexes - float_indexes).abs().max()) <= 1
    if model.predicts_means:
        assert means.dtype == torch.float32 and float((means - float_means).abs().max()) < 1e-3
        # Means sit on the 2**-MEAN_BITS grid, so their float32 values are exact.
        assert torch.equal(means * 2.0**MEAN_BITS, torch.round(means * 2.0**MEAN_BITS))
    else:
        assert means is None and float_means is None
    # Batch items are independent.
    assert torch.equal(model.integer_prior()(z[1:])[0], indexes[1:])


def test_symbols_beyond_the_tables_are_clamped_to_the_derived_range(model):
    prior = model.integer_prior()
    z = _z_symbols(model)
    low, high = prior.z_low.long(), prior.z_high.long()
    far = z.long().clone()
    far[:, :, 0, 0] = 10**6
    far[:, :, 1, 1] = -(10**6)
    clamped = torch.minimum(torch.maximum(far, low), high).to(torch.int32)
    out, expected = prior(far.to(torch.int32)), prior(clamped)
    assert torch.equal(out[0], expected[0])
    assert (out[1] is None) or torch.equal(out[1], expected[1])


def test_every_layer_bound_is_proven_below_2_53(model):
    prior = model.integer_prior()
    assert [layer["transposed"] for layer in prior.describe()] == [True, True, False]
    for layer in prior.layers:
        assert 0 < layer.acc_bound < EXACT_LIMIT
        assert layer.weight_bits >= prior_scales.WEIGHT_BITS_MIN and layer.out_bits >= prior_scales.ACT_BITS_MIN
        # Weights and biases are integers at their scales.
        assert torch.equal(layer.weight, torch.round(layer.weight)) and torch.equal(layer.bias, torch.round(layer.bias))
    # The extremes of the clamped range evaluate without leaving the exact range (evaluation checks it).
    for extreme in (prior.z_low, prior.z_high):
        prior(extreme.expand(1, -1, 2, 2).to(torch.int32))


def test_a_plan_rebuilds_the_same_prior_and_wrong_plans_are_refused(model):
    prior = _derive(model)
    plan = prior.plan()
    again = _derive(model, plan=plan)
    assert again.plan() == plan
    z = _z_symbols(model, seed=1)
    assert torch.equal(again(z)[0], prior(z)[0])
    with pytest.raises(ValueError, match="has 2 layers; h_s has 3"):
        _derive(model, plan=plan[:2])
    with pytest.raises(ValueError, match="has no layers"):
        _derive(model, plan={"layers": plan})
    for change in ({"weight_bits": 40}, {"slope_q": 12345}, {"transposed": not plan[0]["transposed"]},
                   {"in_bits": "20"}):
        with pytest.raises(ValueError, match="does not fit h_s layer 0"):
            _derive(model, plan=[{**plan[0], **change}, *plan[1:]])
    with pytest.raises(ValueError, match="the bound of h_s layer 1 does not hold"):
        _derive(model, plan=[plan[0], {**plan[1], "acc_bound": plan[1]["acc_bound"] - 1}, plan[2]])


def test_h_s_must_be_plain_convolutions_and_relus():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    assert [slope for _, slope in prior_scales.parse_h_s(nn.Sequential(conv, nn.ReLU(), conv))] == [0, None]
    leaky = prior_scales.parse_h_s(nn.Sequential(conv, nn.LeakyReLU(0.25)))
    assert leaky[0][1] == int(0.25 * 2**SLOPE_BITS)
    refusals = [
        (nn.Sequential(conv, nn.Sigmoid()), "cannot represent"),
        (nn.Sequential(nn.ReLU(), conv), "cannot represent"),
        (nn.Sequential(conv, nn.ReLU(), nn.ReLU()), "cannot represent"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "plain convolutions only"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, dilation=2)), "plain convolutions only"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, padding_mode="reflect")), "plain convolutions only"),
        (nn.Sequential(conv, nn.LeakyReLU(1.5)), r"slope in \[0, 1\)"),
        (nn.Sequential(), "no convolutions"),
    ]
    for h_s, message in refusals:
        with pytest.raises(ValueError, match=message):
            prior_scales.parse_h_s(h_s)


def test_weights_that_cannot_be_exact_are_refused():
    model = _model("scale-hyperprior")
    eb = model.entropy_bottleneck
    with torch.no_grad():
        model.h_s[0].weight.mul_(2.0**40)
    with pytest.raises(FixedPointOverflowError):
        _derive(model)
    with torch.no_grad():
        model.h_s[0].weight.fill_(float("nan"))
    with pytest.raises(FixedPointOverflowError, match="non-finite weights"):
        _derive(model)
    model = _model("scale-hyperprior")
    with torch.no_grad():
        eb.quantiles.fill_(float("inf"))
    with pytest.raises(FixedPointOverflowError, match="medians are not finite"):
        FixedPointHyperSynthesis.derive(model.h_s, eb.quantiles[:, 0, 1], (torch.zeros(8), torch.ones(8)),
                                        model.gaussian_conditional.scale_table, 0.11, with_means=False)


def test_rescale_rounds_half_up_and_leaky_relu_floors():
    acc = torch.tensor([-6.0, -5.0, -4.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    assert integer_prior._rescale(acc, 2).tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 2.0]
    assert integer_prior._rescale(acc, 0) is acc
    x = torch.tensor([-3.0, -1.0, 0.0, 5.0], dtype=torch.float64)
    half = 2**SLOPE_BITS // 2
    assert integer_prior._activate(x, None) is x
    assert integer_prior._activate(x, 0).tolist() == [0.0, 0.0, 0.0, 5.0]
    assert integer_prior._activate(x, half).tolist() == [-2.0, -1.0, 0.0, 5.0]


def test_the_prior_follows_the_weights_it_was_derived_from():
    model = _model()
    first = model.integer_prior()
    assert model.integer_prior() is first  # cached while the tensors are unchanged
    with torch.no_grad():
        model.h_s[-1].bias.add_(0.5)
    assert model.integer_prior() is not first  # an in-place change re-derives
    moved = first.to("cpu")
    assert dataclasses.asdict(moved.layers[0]).keys() == dataclasses.asdict(first.layers[0]).keys()
