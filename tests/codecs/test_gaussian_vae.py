"""The gaussian-vae architecture alone: shapes, seeds, the KL term, checkpoints and their validation."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from latentzip.codecs.card import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from latentzip.codecs.checkpoint import export_codec, load_model, load_vae, model_id
from latentzip.codecs.gaussian_vae import GaussianVAE, GaussianVAEConfig, kl_divergence, neg_elbo_bpp, slerp
from latentzip.codecs.registry import NotACodecError, config_from_dict, is_generative, load_codec, load_generative
from latentzip.codecs.vae_generative import interpolate_images, manifold_grid, sample_images, sample_tensor

TINY = dict(latent_dims=4, width=4, hidden=16, image_size=16)


def tiny(seed: int = 0, **overrides) -> GaussianVAE:
    torch.manual_seed(seed)
    return GaussianVAE(GaussianVAEConfig(**{**TINY, **overrides})).eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vae") / "codec"
    export_codec(tiny(), directory, card={"note": "untrained"})
    return directory


@pytest.mark.parametrize("size", [8, 16, 28])
@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_shapes_of_every_tensor(size, decoder):
    model = tiny(image_size=size, decoder=decoder)
    x = torch.rand(3, 1, size, size)
    out = model(x)
    assert out["mu"].shape == out["logvar"].shape == out["z"].shape == (3, 4)
    assert out["x_hat"].shape == out["logits"].shape == x.shape
    assert 0 <= float(out["x_hat"].min()) and float(out["x_hat"].max()) <= 1
    terms = model.loss(x, out, beta=0.5)
    assert torch.isclose(terms["loss"], terms["reconstruction"] + 0.5 * terms["kl"])
    assert model.sample(5, torch.Generator().manual_seed(0)).shape == (5, 1, size, size)
    assert neg_elbo_bpp(model, x).shape == (3,)


def test_kl_is_never_negative_and_zero_only_at_the_prior():
    torch.manual_seed(0)
    mu, logvar = torch.randn(256, 8) * 3, torch.randn(256, 8) * 3
    assert bool((kl_divergence(mu, logvar) >= 0).all())
    assert torch.allclose(kl_divergence(torch.zeros(2, 8), torch.zeros(2, 8)), torch.zeros(2))


def test_same_seed_same_samples_and_scores_and_sample_i_does_not_depend_on_n():
    model = tiny()
    a, b = sample_tensor(model, 6, seed=3), sample_tensor(model, 6, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, sample_tensor(model, 6, seed=4))
    assert torch.allclose(sample_tensor(model, 2, seed=3), a[:2], atol=1e-6)  # batch size: rounding only
    assert torch.equal(tiny(seed=1).state_dict()["g_s.0.weight"], tiny(seed=1).state_dict()["g_s.0.weight"])
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(neg_elbo_bpp(model, x, seed=0), neg_elbo_bpp(model, x, seed=0))
    # Temperature 0 is the prior's mode: every sample is the decode of z = 0.
    zero = sample_tensor(model, 3, seed=9, temperature=0)
    assert torch.equal(zero[0], zero[2])


def test_interpolation_ends_are_the_posterior_means_and_slerp_is_exact_at_the_ends():
    a, b = torch.randn(6), torch.randn(6)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    assert abs(float(mid.norm()) - float((a.norm() + b.norm()) / 2)) < float(a.norm() + b.norm())
    model = tiny()
    one, two = Image.new("L", (8, 8), 30), Image.new("L", (8, 8), 200)
    for mode in ("linear", "spherical"):
        frames = interpolate_images(model, one, two, steps=5, mode=mode, scale=2)
        assert len(frames) == 5 and frames[0].size == (32, 32)
    assert len(sample_images(model, 3, scale=3)) == 3
    assert manifold_grid(tiny(latent_dims=2), steps=4).size == (64, 64)
    with pytest.raises(ValueError, match="2-D latent"):
        manifold_grid(model)


def test_checkpoint_round_trip_and_refusals(vae_dir, tiny_codec_dir):
    model, card = load_vae(vae_dir)
    assert card["model_id"] == model_id(model.config, model.state_dict()).hex()
    assert isinstance(config_from_dict(card["config"]), GaussianVAEConfig)
    assert is_generative(vae_dir) and not is_generative(tiny_codec_dir) and not is_generative("jpeg")
    assert load_generative(vae_dir, "test")[1]["model_id"] == card["model_id"]
    with pytest.raises(NotACodecError, match="no entropy coder"):
        load_codec(vae_dir)
    with pytest.raises(CheckpointError, match="generative VAE"):
        load_model(vae_dir)
    with pytest.raises(ValueError, match="needs a generative model"):
        load_generative(tiny_codec_dir, "sampling")


def _copy(vae_dir, tmp_path, edit_config=None, edit_state=None):
    target = tmp_path / "edited"
    target.mkdir()
    document = json.loads((vae_dir / CONFIG_FILE).read_text())
    if edit_config:
        edit_config(document["config"])
    state = load_file(str(vae_dir / WEIGHTS_FILE))
    if edit_state:
        edit_state(state)
    save_file(state, str(target / WEIGHTS_FILE))
    config = config_from_dict(document["config"]) if not edit_config else None
    if config is not None:
        document["model_id"] = model_id(config, state).hex()  # a crafted folder recomputes the id
    (target / CONFIG_FILE).write_text(json.dumps(document))
    return target


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(hidden=10**7), "hidden=10000000 is outside"),
    (lambda c: c.update(latent_dims="8"), "latent_dims must be an integer"),
    (lambda c: c.update(decoder="poisson"), "unknown decoder"),
    (lambda c: c.update(depth=3), "unknown gaussian-vae config keys"),
])
def test_validation_refuses_bad_configs_before_building_a_model(vae_dir, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_vae(_copy(vae_dir, tmp_path, edit_config=edit))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"g_s.0.weight": torch.zeros(16, 5)}), "g_s.0.weight is F32"),
    (lambda s: s.pop("g_a.0.bias"), "missing g_a.0.bias"),
    (lambda s: s.update({"extra": torch.zeros(1)}), "unexpected extra"),
    (lambda s: s["g_a.0.weight"].fill_(float("nan")), "not finite"),
])
def test_validation_refuses_crafted_weights(vae_dir, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_vae(_copy(vae_dir, tmp_path, edit_state=edit))


# -- the two-stage prior (codecs/two_stage.py) ------------------------------------------------------------
def test_two_stage_prior_shapes_loss_and_that_no_gradient_reaches_stage_one():
    model = tiny(prior="two-stage", prior_hidden=8).train()
    x = torch.rand(3, 1, 16, 16)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out["prior"]["reconstruction"].shape == out["prior"]["kl"].shape == (3,)
    assert bool((out["prior"]["kl"] >= 0).all())
    terms = model.loss(x, out, beta=0.5)
    assert torch.isclose(terms["loss"], terms["reconstruction"] + 0.5 * terms["kl"] + terms["prior"])
    terms["prior"].backward()  # stage 2's loss alone: stage 1 gets no gradient from it
    assert all(p.grad is None for name, p in model.named_parameters() if not name.startswith("prior."))
    assert model.prior.log_gamma.grad is not None
    assert model.latent_from_prior(torch.zeros(2, 4)).shape == (2, 4)
    assert sample_tensor(model.eval(), 5, seed=1).shape == (5, 1, 16, 16)
    assert manifold_grid(tiny(latent_dims=2, prior="two-stage", prior_hidden=8), steps=3).size == (48, 48)
    # The normal prior maps u to itself and adds nothing to the loss.
    plain = tiny()
    assert float(plain.loss(x, plain(x))["prior"]) == 0.0 and torch.equal(plain.latent_from_prior(x[0, 0]), x[0, 0])


def test_two_stage_samples_are_seeded_and_come_through_stage_two():
    model = tiny(prior="two-stage", prior_hidden=8)
    a = sample_tensor(model, 4, seed=2)
    assert torch.equal(a, sample_tensor(model, 4, seed=2)) and not torch.equal(a, sample_tensor(model, 4, seed=3))
    assert torch.allclose(model.sample(3, torch.Generator().manual_seed(0)),
                          model.sample(3, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        model.prior.decoder[-1].bias.fill_(5.0)  # stage 2 decides where z lands
    assert not torch.allclose(sample_tensor(model, 4, seed=2), a)


def test_two_stage_config_validation_and_old_configs_unchanged(tmp_path):
    with pytest.raises(ValueError, match="unknown prior 'vamp'"):
        GaussianVAEConfig(**TINY, prior="vamp")
    with pytest.raises(ValueError, match="prior_hidden sizes the two-stage prior"):
        GaussianVAEConfig(**TINY, prior_hidden=64)
    with pytest.raises(ValueError, match="prior_hidden must be an integer in 1..2048"):
        GaussianVAEConfig(**TINY, prior="two-stage", prior_hidden=0)
    # A normal-prior config writes no prior keys: ids of models from before the option are unchanged.
    assert "prior" not in GaussianVAEConfig(**TINY).to_dict()
    config = GaussianVAEConfig(**TINY, prior="two-stage", prior_hidden=8)
    assert GaussianVAEConfig.from_dict(config.to_dict()) == config
    directory = tmp_path / "two-stage"
    export_codec(tiny(prior="two-stage", prior_hidden=8), directory)
    model, card = load_vae(directory)
    assert card["config"]["prior"] == "two-stage" and model.prior.encoder[0].weight.shape == (8, 4)
    assert torch.equal(sample_tensor(model, 3, seed=0), sample_tensor(tiny(prior="two-stage", prior_hidden=8), 3))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(prior=3), "config prior must be a string"),
    (lambda c: c.update(prior="two-stage", prior_hidden=10**6), "prior_hidden=1000000 is outside"),
    # A two-stage config over weights without stage 2:
    (lambda c: c.update(prior="two-stage"), "prior=two-stage prior_hidden=256: missing prior.decoder.0.bias"),
])
def test_validation_refuses_bad_two_stage_configs(vae_dir, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_vae(_copy(vae_dir, tmp_path, edit_config=edit))
