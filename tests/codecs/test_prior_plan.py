"""The integer prior's plan stored in codec.json (codecs/checkpoint.py, codecs/integer_prior.py): loading
builds the very prior a fresh derivation gives, a plan for other weights is never used, and codecs without
one (or with one that does not fit) still load, by deriving."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from latentzip.codecs.checkpoint import CONFIG_FILE, PRIOR_KEY, load_model, store_integer_prior
from latentzip.codecs.hyperprior import build_model
from latentzip.codecs.learned import LearnedCodec
from latentzip.codecs.registry import zoo_models


def fresh_prior(model):
    """The prior derived from scratch from ``model``'s tensors, in a new model (no plan, no cache)."""
    twin = build_model(model.config)
    twin.load_state_dict(model.state_dict())
    return twin.integer_prior()


def assert_same_prior(ours, theirs) -> None:
    assert ours.plan() == theirs.plan()
    assert (ours.input_bits, ours.index_base, ours.with_means) == (theirs.input_bits, theirs.index_base, theirs.with_means)
    for name in ("z_low", "z_high", "median_q", "thresholds"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    for mine, other in zip(ours.layers, theirs.layers, strict=True):
        assert torch.equal(mine.weight, other.weight) and torch.equal(mine.bias, other.bias)
        assert (mine.stride, mine.padding, mine.output_padding) == (other.stride, other.padding, other.output_padding)


def edit_card(directory, change) -> None:
    path = directory / CONFIG_FILE
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.fixture(params=["scale-hyperprior", "mean-scale-hyperprior"])
def codec_copy(request, tiny_codec_factory, tmp_path):
    return shutil.copytree(tiny_codec_factory(arch=request.param), tmp_path / "codec")


def test_export_stores_the_plan_under_the_model_id_and_loading_uses_it(codec_copy, sample_images):
    document = json.loads((codec_copy / CONFIG_FILE).read_text())
    assert document[PRIOR_KEY]["model_id"] == document["model_id"]
    codec = LearnedCodec.from_path(codec_copy)
    assert codec.model.integer_prior().plan() == document[PRIOR_KEY]["plan"]
    assert_same_prior(codec.model.integer_prior(), fresh_prior(codec.model))

    # The plan is what loading reads: no search happens while it is used.
    from latentzip.codecs import prior_scales

    def no_search(*args, **kwargs):
        raise AssertionError("searched although a plan was stored")
    original, prior_scales.search_layers = prior_scales.search_layers, no_search
    try:
        model, _ = load_model(codec_copy)
    finally:
        prior_scales.search_layers = original
    assert model.integer_prior().plan() == document[PRIOR_KEY]["plan"]

    # But it is a hint, never trusted: its bounds are proven again, and a false one (still below 2**53) is
    # refused, the prior then derived afresh (issue 19).
    edit_card(codec_copy, lambda d: d[PRIOR_KEY]["plan"][-1].update(acc_bound=12345))
    model, _ = load_model(codec_copy)
    assert model.integer_prior().layers[-1].acc_bound == document[PRIOR_KEY]["plan"][-1]["acc_bound"]
    assert_same_prior(model.integer_prior(), fresh_prior(codec.model))


def test_codecs_without_a_plan_or_with_a_stale_or_broken_one_derive_it(codec_copy, sample_images):
    reference = LearnedCodec.from_path(codec_copy)
    data = reference.encode(sample_images[1])
    def stale(document):  # a plan recorded for other weights, with a bound that would show if it were used
        document[PRIOR_KEY]["model_id"] = "00" * 16
        document[PRIOR_KEY]["plan"][-1]["acc_bound"] = 12345

    edits = {"absent": lambda d: d.pop(PRIOR_KEY), "other weights": stale,
             "does not fit": lambda d: d[PRIOR_KEY]["plan"].pop()}
    saved = (codec_copy / CONFIG_FILE).read_text()
    for name, change in edits.items():
        edit_card(codec_copy, change)
        codec = LearnedCodec.from_path(codec_copy)
        assert_same_prior(codec.model.integer_prior(), fresh_prior(codec.model))
        assert codec.encode(sample_images[1]) == data, name
        assert codec.decode(data).size == sample_images[1].size
        (codec_copy / CONFIG_FILE).write_text(saved)


def test_store_integer_prior_rewrites_the_plan(codec_copy):
    edit_card(codec_copy, lambda d: d.pop(PRIOR_KEY))
    entry = store_integer_prior(codec_copy)
    document = json.loads((codec_copy / CONFIG_FILE).read_text())
    assert document[PRIOR_KEY] == entry and entry["model_id"] == document["model_id"]
    assert_same_prior(LearnedCodec.from_path(codec_copy).model.integer_prior(),
                      fresh_prior(LearnedCodec.from_path(codec_copy).model))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo_models("codec")))
def test_zoo_plans_match_a_fresh_derivation(name):
    # What a verify-style check does: the stored plan against a derivation from the weights alone.
    document = json.loads((zoo_models()[name] / CONFIG_FILE).read_text())
    codec = LearnedCodec.from_path(zoo_models()[name])
    assert document[PRIOR_KEY]["model_id"] == codec.card["model_id"]
    assert_same_prior(codec.model.integer_prior(), fresh_prior(codec.model))
