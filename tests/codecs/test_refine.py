"""Encoder-side latent refinement (codecs/refine.py): same decoder, same format, lower rate-distortion cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentzip.codecs.checkpoint import export_codec
from latentzip.codecs.hyperprior import CodecConfig, build_model
from latentzip.codecs.learned import LearnedCodec
from latentzip.codecs.refine import Refinement, soft_round

LMBDA = 0.01
STEPS = 30


@pytest.fixture(scope="module", params=["scale-hyperprior", "mean-scale-hyperprior"])
def codec(request, tmp_path_factory) -> LearnedCodec:
    torch.manual_seed(0)
    model = build_model(CodecConfig(arch=request.param, N=16, M=24))
    with torch.no_grad():  # an untrained model rounds every latent to 0 without a gain
        model.g_a[-1].weight.mul_(20.0)
        model.h_a[-1].weight.mul_(20.0)
    directory = tmp_path_factory.mktemp(f"refine-{request.param}")
    export_codec(model, directory, card={"training": {"lmbda": LMBDA}})
    codec = LearnedCodec.from_path(directory)
    codec.directory = directory
    return codec


def _cost(codec: LearnedCodec, image, data: bytes) -> float:
    decoded = np.asarray(codec.decode(data), dtype=np.float64)
    mse = ((decoded - np.asarray(image, dtype=np.float64)) ** 2).mean()
    return LMBDA * mse + len(data) * 8 / (image.width * image.height)


def test_zero_steps_is_the_plain_encoder(codec, sample_images):
    plain = codec.encode_batch(sample_images)
    assert codec.encode_batch(sample_images, refine_steps=0) == plain
    assert [codec.encode(image, refine_steps=0) for image in sample_images] == plain
    assert codec.refinement(0) is None


def test_refinement_lowers_the_rate_distortion_cost(codec, sample_images):
    for image in sample_images[:3]:
        plain, refined = codec.encode(image), codec.encode(image, refine_steps=STEPS)
        assert refined != plain
        assert _cost(codec, image, refined) < _cost(codec, image, plain)


def test_refined_streams_decode_to_the_encoders_reconstruction(codec, sample_images):
    # Batched and alone: each stream decodes to exactly what its own encoder reported, with 1 or 2 threads.
    together = codec.encode_with_reconstruction(sample_images, refine_steps=STEPS)
    alone = [codec.encode_with_reconstruction([image], refine_steps=STEPS)[0] for image in sample_images]
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            for data, reconstruction in together + alone:
                assert np.array_equal(np.asarray(codec.decode(data)), np.asarray(reconstruction))
            decoded = codec.decode_batch([data for data, _ in together])
            assert all(np.array_equal(np.asarray(d), np.asarray(r)) for d, (_, r) in zip(decoded, together))
    finally:
        torch.set_num_threads(threads)


def test_refinement_is_deterministic(codec, sample_images):
    image = sample_images[0]
    assert codec.encode(image, refine_steps=5) == codec.encode(image, refine_steps=5)


def test_refinement_needs_a_lambda(tiny_codec_dir, sample_images):
    bare = LearnedCodec.from_path(tiny_codec_dir)  # its card records no training lambda
    with pytest.raises(ValueError, match="lambda"):
        bare.encode(sample_images[0], refine_steps=2)
    assert bare.refinement(3, lmbda=0.02).lmbda == 0.02
    with pytest.raises(ValueError, match="negative"):
        Refinement(steps=-1, lmbda=0.01)


def test_temperature_anneals_and_soft_rounding_ends_near_rounding():
    refinement = Refinement(steps=100, lmbda=0.01)
    temperatures = [refinement.temperature(step) for step in range(100)]
    assert temperatures[0] == refinement.tau_max and temperatures == sorted(temperatures, reverse=True)
    assert temperatures[-1] == pytest.approx(refinement.tau_min)
    values = torch.tensor([0.1, 0.9, -1.2, 2.6])
    uniform = torch.full((4, 2), 0.5)  # equal Gumbel draws: the nearer integer wins
    assert torch.allclose(soft_round(values, 0.02, uniform), torch.tensor([0.0, 1.0, -1.0, 3.0]), atol=1e-3)


def test_scoring_analyses_the_refined_stream(codec, sample_images):
    from latentzip.codecs.generative import analyse

    image = sample_images[1]
    assert analyse(codec, image, refine_steps=4).data == codec.encode(image, refine_steps=4)
    assert analyse(codec, image).data == codec.encode(image)


def test_the_encode_stage_writes_refined_streams(codec, sample_images):
    import io

    from latentzip.pipeline.encoding_stage import EncodeStage

    blobs = []
    for image in sample_images[:2]:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    stage = EncodeStage(str(codec.directory), refine_steps=3)
    out = stage.encode_rows(["a", "b"], blobs)
    assert out["error"] == ["", ""]
    assert out["data"] == codec.encode_batch(sample_images[:2], refine_steps=3)
    assert out["data"] != codec.encode_batch(sample_images[:2])
