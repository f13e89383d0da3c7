"""codecs/generative.py (sampling, interpolation, rates) and the sample / interpolate commands, on tiny codecs."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from latentzip.codecs import generative
from latentzip.codecs.checkpoint import export_codec, load_model
from latentzip.codecs.entropy_coding import table_frequencies
from latentzip.codecs.generative import analyse, fit_to, interpolate, sample_latents, sample_prior
from latentzip.codecs.registry import load_codec
from latentzip.jobs import cli
from latentzip.jobs import interpolate as interpolate_job
from latentzip.jobs import sample as sample_job

ARCHS = ("scale-hyperprior", "mean-scale-hyperprior")


#: Bias added to the tiny codec's scale outputs: untrained, its prior predicts the smallest scale (0.11)
#: everywhere, so nearly every sampled latent would round to its mean and all samples would look alike.
SCALE_BIAS = 3.0


@pytest.fixture(scope="module", params=ARCHS)
def codec(request, tiny_codec_factory, tmp_path_factory):
    """The tiny codec of ``request.param`` with a prior wide enough that samples differ."""
    model, _ = load_model(tiny_codec_factory(arch=request.param))
    scale_bias = model.h_s[-1].bias if request.param == "mean-scale-hyperprior" else model.h_s[-2].bias
    with torch.no_grad():
        scale_bias[: model.config.M] += SCALE_BIAS
    directory = tmp_path_factory.mktemp(f"wide-prior-{request.param}")
    export_codec(model, directory, card={"note": "tiny codec with widened prior scales"})
    return load_codec(directory)


def _pixels(images):
    return [image.tobytes() for image in images]


def test_samples_have_the_size_asked_and_depend_only_on_seed_and_index(codec):
    images = sample_prior(codec, 3, height=64, width=128, seed=7)
    assert [(im.mode, im.size) for im in images] == [("RGB", (128, 64))] * 3
    assert _pixels(sample_prior(codec, 3, height=64, width=128, seed=7)) == _pixels(images)
    assert _pixels(sample_prior(codec, 1, height=64, width=128, seed=7)) == _pixels(images[:1])
    others = sample_prior(codec, 3, height=64, width=128, seed=8)
    assert all(a != b for a, b in zip(_pixels(others), _pixels(images)))
    assert len(set(_pixels(images))) == 3


def test_sizes_off_the_stride_are_cropped(codec):
    (image,) = sample_prior(codec, 1, height=70, width=100, seed=0)
    assert image.size == (100, 70)
    (padded,) = sample_prior(codec, 1, height=128, width=128, seed=0)
    assert image.tobytes() == padded.crop((0, 0, 100, 70)).tobytes()


def test_temperature_zero_is_the_prior_mode_for_every_seed(codec):
    model = codec.model
    y_hats = [sample_latents(model, (1, 2), torch.Generator().manual_seed(s), temperature=0) for s in (0, 1)]
    assert torch.equal(y_hats[0], y_hats[1])
    if model.config.arch == "scale-hyperprior":
        assert not y_hats[0].any()  # zero-mean Gaussians: the mode of every latent is 0
    cold = sample_prior(codec, 2, 64, 64, seed=3, temperature=0) + sample_prior(codec, 1, 64, 64, seed=4, temperature=0)
    assert len(set(_pixels(cold))) == 1
    assert cold[0].tobytes() != sample_prior(codec, 1, 64, 64, seed=3)[0].tobytes()
    with pytest.raises(ValueError, match="temperature"):
        sample_prior(codec, 1, 64, 64, temperature=-1)


def test_sampled_hyper_latents_follow_the_coder_tables(tiny_codec_dir):
    bottleneck = load_codec(tiny_codec_dir).model.entropy_bottleneck
    symbols = generative._sample_z_symbols(bottleneck, (64, 64), torch.Generator().manual_seed(0), 1.0)
    frequencies = table_frequencies(bottleneck)
    lengths = bottleneck._cdf_length.long() - 2
    offsets = bottleneck._offset.long()
    for channel in range(bottleneck.channels):
        values = symbols[0, channel].flatten().long() - offsets[channel]
        assert int(values.min()) >= 0 and int(values.max()) < int(lengths[channel])
        expected = frequencies[channel, : lengths[channel]].double()
        expected /= expected.sum()
        observed = torch.bincount(values, minlength=int(lengths[channel])).double() / values.numel()
        assert 0.5 * float((observed - expected).abs().sum()) < 0.05  # total variation, 4096 draws


def test_interpolation_ends_are_the_decodes_of_both_images(codec, sample_images):
    a, b = sample_images[0], sample_images[4].crop((0, 0, 64, 64))
    frames = interpolate(codec, a, b, steps=4)
    assert len(frames) == 4 and all(f.size == (64, 64) for f in frames)
    assert frames[0].tobytes() == codec.decode(codec.encode(a)).tobytes()
    assert frames[-1].tobytes() == codec.decode(codec.encode(b)).tobytes()
    assert frames[1].tobytes() not in (frames[0].tobytes(), frames[-1].tobytes())


def test_interpolation_fits_b_to_a_by_cover_and_centre_crop(tiny_codec_dir, sample_images):
    codec = load_codec(tiny_codec_dir)
    a, b = sample_images[2], sample_images[3]  # 93x70 and 65x100
    frames = interpolate(codec, a, b, steps=2)
    assert [f.size for f in frames] == [(93, 70)] * 2
    fitted = fit_to(b, 93, 70)
    assert fitted.size == (93, 70)
    assert frames[1].tobytes() == codec.decode(codec.encode(fitted)).tobytes()
    assert fit_to(a, 93, 70) is not None and fit_to(a, 93, 70).tobytes() == a.tobytes()
    sized = interpolate(codec, a, b, steps=2, size=(64, 64))
    assert [f.size for f in sized] == [(64, 64)] * 2


def test_analyse_gives_the_encoded_bytes_and_rates_that_add_up(codec, sample_images):
    for image in sample_images:
        rates = analyse(codec, image)
        data = codec.encode(image)
        assert rates.data == data
        assert rates.bpp == len(data) * 8 / (image.width * image.height)
        # Ideal code lengths under the coder's own tables: the rANS strings are within a few words of them.
        assert abs(float(rates.y_bits.sum()) - 8 * rates.y_string_bytes) < 96
        assert abs(float(rates.z_bits.sum()) - 8 * rates.z_string_bytes) < 96
        assert rates.rate_map().shape == (math.ceil(image.height / 16), math.ceil(image.width / 16))
        groups = rates.group_bpp(4)
        assert len(groups) == 4 and sum(groups) == pytest.approx(float(rates.y_bits.sum()) / rates.pixels)


def test_sample_command_is_deterministic(tiny_codec_dir, tmp_path, capsys):
    runs = []
    for name, seed in (("one", 5), ("two", 5), ("three", 6)):
        out = tmp_path / name
        # Temperature 30: the untrained prior's scales (0.11) would round almost every latent to 0.
        assert cli.main(["sample", "--model", str(tiny_codec_dir), "-n", "3", "--seed", str(seed),
                         "--temperature", "30", "--size", "64x128", "--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["grid.png", "sample-00.png", "sample-01.png", "sample-02.png"]
        runs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert Image.open(tmp_path / "one" / "sample-00.png").size == (128, 64)
    assert Image.open(tmp_path / "one" / "grid.png").size == (2 * 128 + 2, 2 * 64 + 2)
    assert runs[0] == runs[1] and runs[0]["grid.png"] != runs[2]["grid.png"]
    assert "3 samples" in capsys.readouterr().out
    assert sample_job.main(["--model", "jpeg", "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(SystemExit):
        sample_job.main(["--model", str(tiny_codec_dir), "--size", "big", "--out", str(tmp_path / "x")])


def test_interpolate_command_writes_frames_strip_and_gif(tiny_codec_dir, sample_images, tmp_path, capsys):
    sample_images[1].save(tmp_path / "a.png")
    sample_images[4].save(tmp_path / "b.png")
    out = tmp_path / "path"
    assert interpolate_job.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(tiny_codec_dir),
                                 "-n", "3", "--gif", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame-00.png", "frame-01.png", "frame-02.png", "path.gif",
                                                      "strip.png"]
    assert Image.open(out / "frame-00.png").size == (128, 96)
    assert Image.open(out / "strip.png").size == (3 * 128 + 4, 96)
    codec = load_codec(tiny_codec_dir)
    assert Image.open(out / "frame-00.png").tobytes() == codec.decode(codec.encode(sample_images[1])).tobytes()
    assert "3 frames" in capsys.readouterr().out
    assert interpolate_job.main([str(tmp_path / "a.png"), str(tmp_path / "missing.png"), "--model",
                                 str(tiny_codec_dir), "--out", str(out)]) == 2
