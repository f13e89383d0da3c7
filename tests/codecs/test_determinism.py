"""Streams decode the same whatever the batch, thread count or memory layout (docs/determinism.md).

The integer prior (latentzip.codecs.integer_prior) must give bit-identical scale indexes and means for the
same z symbols however they are presented; decoded pixels must equal the encoder's own reconstruction
byte for byte, whatever batch composition, thread count or layout either side used.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from latentzip.codecs.bitstream import ModelMismatchError
from latentzip.codecs.checkpoint import export_codec, load_model
from latentzip.codecs.hyperprior import ARCHITECTURES
from latentzip.codecs.images import pad_to_multiple, to_tensor
from latentzip.codecs.integer_prior import FixedPointHyperSynthesis, FixedPointOverflowError
from latentzip.codecs.learned import LearnedCodec

PHOTOS = Path(__file__).resolve().parents[3] / "shared/data/photos/val"
PRIOR_GAIN = 20.0


@contextmanager
def threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def codec_dir(request, tiny_codec_factory, tmp_path_factory) -> Path:
    """The tiny codec with its ``h_s`` output scaled up: untrained, it puts almost every latent in the first
    two or three scale bins; scaled, indexes spread over about 20 bins and the tests cross many more
    decision boundaries, where an inexact prior would show."""
    model, _ = load_model(tiny_codec_factory(seed=0, arch=request.param))
    with torch.no_grad():
        [m for m in model.h_s if isinstance(m, nn.Conv2d)][-1].weight.mul_(PRIOR_GAIN)
    directory = tmp_path_factory.mktemp(f"lively-prior-{request.param}")
    export_codec(model, directory)
    return directory


def _variety(sample_images) -> list[Image.Image]:
    """Seven 128x96 images with different content, then the mixed-size samples: 12 images, 3 latent shapes."""
    base = [sample_images[1], sample_images[4].crop((0, 16, 128, 112))]
    same_size = [image.transpose(op) for image in base for op in (0, 1, 3)][:6] + [sample_images[1].rotate(7)]
    return same_size + sample_images


def _arrays(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def _assert_identical(decoded, reference, what: str):
    assert len(decoded) == len(reference)
    mismatched = [i for i, (a, b) in enumerate(zip(_arrays(decoded), _arrays(reference))) if not np.array_equal(a, b)]
    assert not mismatched, f"{what}: images {mismatched} differ from the encoder's reconstruction"


# -- decoded pixels ---------------------------------------------------------------------------------------


def test_decode_in_another_batch_composition(codec_dir, sample_images):
    images = _variety(sample_images)
    wide, narrow = LearnedCodec.from_path(codec_dir, max_batch=7), LearnedCodec.from_path(codec_dir, max_batch=1)
    for encoder, decoder in ((wide, narrow), (narrow, wide)):
        streams, reconstructions = zip(*encoder.encode_with_reconstruction(images))
        # Non-vacuous: the reconstructions vary within and between images.
        assert np.asarray(reconstructions[0]).std() > 0
        assert not np.array_equal(np.asarray(reconstructions[0]), np.asarray(reconstructions[1]))
        _assert_identical(decoder.decode_batch(list(streams)), reconstructions, "decoded in other batches")
        order = [5, 11, 0, 7, 3, 3, 9, 1, 10, 2, 8, 6, 4]
        _assert_identical(wide.decode_batch([streams[i] for i in order]), [reconstructions[i] for i in order],
                          "decoded in another order")


def test_decode_with_another_thread_count(codec_dir, sample_images):
    images = _variety(sample_images)
    codec = LearnedCodec.from_path(codec_dir, max_batch=7)
    for encode_threads, decode_threads in ((2, 1), (1, 2)):
        with threads(encode_threads):
            streams, reconstructions = zip(*codec.encode_with_reconstruction(images))
        with threads(decode_threads):
            decoded = codec.decode_batch(list(streams))
        _assert_identical(decoded, reconstructions, f"encoded on {encode_threads} threads, decoded on {decode_threads}")


def test_decode_with_another_memory_layout(codec_dir, sample_images):
    contiguous = LearnedCodec.from_path(codec_dir)
    channels_last = LearnedCodec.from_path(codec_dir)
    channels_last.model.to(memory_format=torch.channels_last)
    x = torch.cat([pad_to_multiple(to_tensor(image)[None], 64) for image in _variety(sample_images)[:7]])
    for encoder, decoder, layout in ((contiguous, channels_last, torch.channels_last),
                                     (channels_last, contiguous, torch.contiguous_format)):
        coded = encoder.model.compress(x.contiguous(memory_format=layout))
        reconstruction = encoder.model.synthesize(coded["y_hat"])
        decoded = decoder.model.decompress(coded["strings"], coded["shape"])
        assert torch.equal(decoded["y_hat"], coded["y_hat"])
        assert torch.equal(decoded["x_hat"], reconstruction)
        singles = [decoder.model.decompress([[y], [z]], coded["shape"])["x_hat"] for y, z in zip(*coded["strings"])]
        assert torch.equal(torch.cat(singles), reconstruction)


# -- the integer prior itself ---------------------------------------------------------------------------------


def _z_symbols(codec: LearnedCodec, images) -> torch.Tensor:
    x = torch.cat([pad_to_multiple(to_tensor(image)[None], 64) for image in images])
    return codec.model.analyse(x).z_symbols


def test_integer_prior_ignores_batch_layout_and_threads(codec_dir, sample_images):
    codec = LearnedCodec.from_path(codec_dir)
    prior = codec.model.integer_prior()
    z = _z_symbols(codec, _variety(sample_images)[:7])
    assert torch.unique(z).numel() > 3
    indexes, means = prior(z)
    assert indexes.dtype == torch.int32 and indexes.shape[1] == codec.config.M
    assert torch.unique(indexes).numel() > 10
    assert (means is not None) == (codec.config.arch == "mean-scale-hyperprior")

    wide = torch.zeros(z.shape[0], z.shape[1], z.shape[2], z.shape[3] * 2, dtype=z.dtype)
    wide[..., ::2] = z  # a strided, non-contiguous view with the same values
    variants = {
        "one at a time": [prior(z[i : i + 1]) for i in range(z.shape[0])],
        "reversed batch": [prior(z.flip(0))],
        "channels last": [prior(z.contiguous(memory_format=torch.channels_last))],
        "strided view": [prior(wide[..., ::2])],
        "float64 input": [prior(z.double())],
    }
    with threads(1):
        variants["one thread"] = [prior(z)]
    for name, parts in variants.items():
        got_indexes = torch.cat([p[0] for p in parts])
        got_means = None if means is None else torch.cat([p[1] for p in parts])
        if name == "reversed batch":
            got_indexes = got_indexes.flip(0)
            got_means = None if means is None else got_means.flip(0)
        assert torch.equal(got_indexes, indexes), name
        if means is not None:
            assert torch.equal(got_means, means), name


def test_integer_prior_is_rederived_identically(codec_dir):
    first, _ = load_model(codec_dir)
    second, _ = load_model(codec_dir)
    clone = copy.deepcopy(first)
    clone.to(memory_format=torch.channels_last)
    for model in (second, clone):
        for ours, theirs in zip(first.integer_prior().layers, model.integer_prior().layers):
            assert (ours.in_bits, ours.weight_bits, ours.out_bits) == (theirs.in_bits, theirs.weight_bits, theirs.out_bits)
            assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
            assert ours.acc_bound < 2**53
    # Editing a weight in place invalidates the cached derivation.
    prior = first.integer_prior()
    with torch.no_grad():
        first.h_s[0].weight.mul_(2)
    assert first.integer_prior() is not prior


def test_integer_prior_agrees_with_float_prior_almost_everywhere(codec_dir, sample_images):
    integer = LearnedCodec.from_path(codec_dir)
    floating = integer.with_entropy_params("float")
    z = _z_symbols(integer, _variety(sample_images)[:7] + sample_images[1:])  # all padded to 128x128
    int_indexes, int_means = integer.model.entropy_parameters(z)
    float_indexes, float_means = floating.model.entropy_parameters(z)
    assert (int_indexes - float_indexes).abs().max() <= 1
    assert (int_indexes == float_indexes).float().mean() > 0.99
    if int_means is not None:
        assert (int_means - float_means).abs().max() < 2**-9


def test_convolutions_take_the_exact_backends(codec_dir):
    select = getattr(torch._C, "_select_conv_backend", None)
    if select is None:
        pytest.skip("this PyTorch does not expose convolution backend selection")
    prior = LearnedCodec.from_path(codec_dir).model.integer_prior()
    x = torch.zeros(1, prior.layers[0].weight.shape[0], 2, 2, dtype=torch.float64)
    for layer in prior.layers:
        backend = select(x, layer.weight, None, list(layer.stride), list(layer.padding), [1, 1],
                         layer.transposed, list(layer.output_padding), 1, None)
        assert "Slow" in str(backend), backend  # im2col + GEMM: sums of products, nothing transformed
        x = torch.zeros(1, layer.weight.shape[1] if layer.transposed else layer.weight.shape[0], 4, 4,
                        dtype=torch.float64)


def test_derivation_refuses_weights_that_could_overflow(codec_dir):
    model, _ = load_model(codec_dir, entropy_params="float")
    with torch.no_grad():
        model.h_s[0].weight.mul_(1e12)
    with pytest.raises(FixedPointOverflowError):
        model.integer_prior()
    medians = model.entropy_bottleneck.quantiles[:, 0, 1]
    z_range = (torch.full_like(medians, -10, dtype=torch.int64), torch.full_like(medians, 10, dtype=torch.int64))
    with pytest.raises(FixedPointOverflowError):
        FixedPointHyperSynthesis.derive(model.h_s, medians * float("inf"), z_range, torch.tensor([0.11, 1.0]),
                                        0.11, with_means=False)


def test_float_and_integer_modes_have_different_ids(codec_dir, sample_images):
    integer = LearnedCodec.from_path(codec_dir)
    floating = LearnedCodec.from_path(codec_dir, entropy_params="float")
    assert integer.config.entropy_params == "integer" and floating.config.entropy_params == "float"
    assert integer.model_id != floating.model_id
    assert integer.with_entropy_params("float").model_id == floating.model_id
    image = sample_images[2]
    with pytest.raises(ModelMismatchError):
        integer.decode(floating.encode(image))
    with pytest.raises(ModelMismatchError):
        floating.decode(integer.encode(image))
    assert floating.decode(floating.encode(image)).size == image.size


# -- real photos ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"no photos at {PHOTOS}")
def test_photos_decode_identically_across_compositions(codec_dir):
    images = []
    for path in sorted(PHOTOS.iterdir()):
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"}:
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.thumbnail((256, 256))
                images.append(image)
    assert images
    encoder, decoder = LearnedCodec.from_path(codec_dir, max_batch=16), LearnedCodec.from_path(codec_dir, max_batch=1)
    with threads(2):
        streams, reconstructions = zip(*encoder.encode_with_reconstruction(images))
    with threads(1):
        one_by_one = decoder.decode_batch(list(streams))
    reordered = encoder.decode_batch(list(streams[::-1]))[::-1]
    mismatches = sum(not np.array_equal(np.asarray(a), np.asarray(r))
                     for decoded in (one_by_one, reordered) for a, r in zip(decoded, reconstructions))
    print(f"\n{encoder.config.arch}: {len(images)} photos (<= 256 px), {sum(map(len, streams))} bytes, "
          f"{mismatches} mismatched decodes of {2 * len(images)}")
    assert mismatches == 0
