"""The hyperprior models (CodecConfig, ScaleHyperprior, MeanScaleHyperprior, build_model) and LearnedCodec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentzip.codecs.hyperprior import (
    ARCHITECTURES,
    CodecConfig,
    MeanScaleHyperprior,
    ScaleHyperprior,
    build_model,
)
from latentzip.codecs.learned import LearnedCodec

N, M = 16, 24
#: Without a gain on the last analysis layers an untrained model rounds every latent to 0, and a
#: round-trip test would compare zeros with zeros.
GAIN = 20.0


def _lively_model(arch: str, seed: int = 0) -> ScaleHyperprior:
    torch.manual_seed(seed)
    model = build_model(CodecConfig(arch=arch, N=N, M=M)).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(GAIN)
        model.h_a[-1].weight.mul_(GAIN)
    model.update(force=True)
    return model


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request) -> ScaleHyperprior:
    return _lively_model(request.param)


def _batch(size: int, height: int = 64, width: int = 128, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(size, 3, height, width, generator=generator)


# -- config ----------------------------------------------------------------------------------------------


def test_config_dict_round_trip():
    config = CodecConfig(arch="mean-scale-hyperprior", N=16, M=24)
    assert config.to_dict() == {"arch": "mean-scale-hyperprior", "N": 16, "M": 24, "entropy_params": "integer"}
    assert CodecConfig.from_dict(config.to_dict()) == config
    # Float mode hashes as configs did before the field existed, and such dicts read back as float.
    floating = CodecConfig(arch="mean-scale-hyperprior", N=16, M=24, entropy_params="float")
    assert floating.to_dict() == {"arch": "mean-scale-hyperprior", "N": 16, "M": 24}
    assert CodecConfig.from_dict(floating.to_dict()) == floating


def test_config_defaults():
    assert CodecConfig() == CodecConfig(arch="scale-hyperprior", N=128, M=192, entropy_params="integer")


@pytest.mark.parametrize("kwargs", [{"arch": "vae"}, {"N": 0}, {"M": -1}, {"entropy_params": "fixed"}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        CodecConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="lambda"):
        CodecConfig.from_dict({"arch": "scale-hyperprior", "N": 8, "M": 8, "lambda": 0.01})


def test_build_model_picks_the_architecture():
    assert type(build_model(CodecConfig(N=N, M=M))) is ScaleHyperprior
    assert type(build_model(CodecConfig(arch="mean-scale-hyperprior", N=N, M=M))) is MeanScaleHyperprior
    assert build_model(CodecConfig(N=N, M=M)).stride == 64


# -- training path ---------------------------------------------------------------------------------------


def test_forward_shapes(model):
    x = _batch(2)
    out = model.forward(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (2, M, 64 // 16, 128 // 16)
    assert out["likelihoods"]["z"].shape == (2, N, 64 // 64, 128 // 64)
    for likelihoods in out["likelihoods"].values():
        assert torch.all(likelihoods > 0) and torch.all(likelihoods <= 1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_in_training_mode_is_differentiable(arch):
    torch.manual_seed(0)
    model = build_model(CodecConfig(arch=arch, N=N, M=M)).train()  # noise, not rounding: gradients flow
    out = model.forward(_batch(1))
    loss = out["x_hat"].square().mean() - sum(torch.log(v).mean() for v in out["likelihoods"].values())
    loss.backward()
    for layer in (model.g_a[0], model.g_s[0], model.h_a[0], model.h_s[0]):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# -- real coding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [2, 3])
def test_compress_decompress_gives_identical_latents(model, batch):
    x = _batch(batch)
    coded = model.compress(x)
    y_strings, z_strings = coded["strings"]
    assert len(y_strings) == len(z_strings) == batch
    assert all(isinstance(s, bytes) and s for s in y_strings + z_strings)
    assert coded["shape"] == (1, 2)
    y_hat = coded["y_hat"]
    assert y_hat.shape == (batch, M, 4, 8)
    # The latents must be non-trivial, or the equality below proves nothing.
    assert torch.unique(torch.round(y_hat)).numel() > 3
    decoded = model.decompress(coded["strings"], coded["shape"])
    assert torch.equal(decoded["y_hat"], y_hat)
    assert decoded["x_hat"].shape == x.shape
    assert decoded["x_hat"].min() >= 0 and decoded["x_hat"].max() <= 1


def test_decompress_one_at_a_time_matches_the_batch(model):
    coded = model.compress(_batch(3, seed=2))
    y_strings, z_strings = coded["strings"]
    for i in (2, 0, 1):
        single = model.decompress([[y_strings[i]], [z_strings[i]]], coded["shape"])
        assert torch.equal(single["y_hat"][0], coded["y_hat"][i])
    reordered = model.decompress([[y_strings[2], y_strings[0]], [z_strings[2], z_strings[0]]], coded["shape"])
    assert torch.equal(reordered["y_hat"], coded["y_hat"][[2, 0]])


def test_different_inputs_give_different_strings(model):
    coded = model.compress(torch.cat([_batch(1, seed=3), _batch(1, seed=4)]))
    assert coded["strings"][0][0] != coded["strings"][0][1]


def test_decompress_rejects_badly_shaped_strings(model):
    coded = model.compress(_batch(1))
    with pytest.raises(ValueError):
        model.decompress(coded["strings"][0], coded["shape"])
    with pytest.raises(ValueError):
        model.decompress([*coded["strings"], coded["strings"][0]], coded["shape"])


def test_mean_scale_uses_means_and_scale_does_not():
    scale = build_model(CodecConfig(N=N, M=M))
    mean_scale = build_model(CodecConfig(arch="mean-scale-hyperprior", N=N, M=M))
    params = torch.randn(1, 2 * M, 2, 2)
    assert scale._split_params(params[:, :M])[1] is None
    scales, means = mean_scale._split_params(params)
    assert torch.equal(scales, params[:, :M]) and torch.equal(means, params[:, M:])
    z_hat = torch.zeros(1, N, 1, 1)
    assert mean_scale.h_s(z_hat).shape[1] == 2 * M
    assert scale.h_s(z_hat).shape[1] == M


# -- LearnedCodec on PIL images ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=ARCHITECTURES)
def learned_codec(request, tiny_codec_factory) -> LearnedCodec:
    return LearnedCodec.from_path(tiny_codec_factory(seed=0, arch=request.param), max_batch=3)


def test_encode_decode_keeps_the_exact_size(learned_codec, sample_images):
    for image in sample_images:
        data = learned_codec.encode(image)
        assert isinstance(data, bytes)
        out = learned_codec.decode(data)
        assert out.mode == "RGB"
        assert out.size == image.size
    assert any(w % 64 or h % 64 for w, h in (image.size for image in sample_images))


def test_encode_batch_matches_sizes_and_order(learned_codec, sample_images):
    # Duplicates and mixed sizes: several groups, and one group larger than max_batch (3).
    images = [sample_images[2], sample_images[0], sample_images[2], sample_images[3], sample_images[2],
              sample_images[2], sample_images[1]]
    streams = learned_codec.encode_batch(images)
    assert len(streams) == len(images)
    decoded = learned_codec.decode_batch(streams)
    assert [image.size for image in decoded] == [image.size for image in images]


def test_decoding_does_not_depend_on_batch_composition(learned_codec, sample_images):
    images = sample_images + [sample_images[2].transpose(0)]  # two 93x70 images with different content
    streams = learned_codec.encode_batch(images)
    one_at_a_time = [np.asarray(learned_codec.decode(data)) for data in streams]
    # Decoded pixels must vary, or the comparisons below are vacuous.
    assert one_at_a_time[0].std() > 0
    assert not np.array_equal(one_at_a_time[2], one_at_a_time[-1])

    order = [5, 2, 4, 0, 3, 1]
    reordered = learned_codec.decode_batch([streams[i] for i in order])
    for position, i in enumerate(order):
        assert np.array_equal(np.asarray(reordered[position]), one_at_a_time[i])

    mixed = [streams[2], streams[5], streams[2], streams[1]]
    for image, i in zip(learned_codec.decode_batch(mixed), (2, 5, 2, 1)):
        assert np.array_equal(np.asarray(image), one_at_a_time[i])


def test_decode_tensors_are_cropped_floats(learned_codec, sample_images):
    image = sample_images[2]
    (x,) = learned_codec.decode_tensors([learned_codec.encode(image)])
    assert x.shape == (3, image.height, image.width)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1


def test_encode_is_deterministic(learned_codec, sample_images):
    image = sample_images[3]
    assert learned_codec.encode(image) == learned_codec.encode(image.copy())


def test_encode_applies_the_conversion_policy(learned_codec, sample_images):
    image = sample_images[2]
    assert learned_codec.encode(image.convert("RGBA")) == learned_codec.encode(image)
    grey = image.convert("L")
    assert learned_codec.decode(learned_codec.encode(grey)).size == grey.size


def test_codec_names_and_ids(learned_codec, tiny_codec_dir):
    assert learned_codec.kind == "learned"
    assert learned_codec.model_id == bytes.fromhex(learned_codec.card["model_id"])
    assert len(learned_codec.model_id) == 16
    assert learned_codec.name == f"{learned_codec.config.arch}-{learned_codec.card['model_id'][:8]}"
    assert LearnedCodec.from_path(tiny_codec_dir, name="tiny").name == "tiny"
