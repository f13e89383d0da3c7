"""The rates that ``score``, ``bench`` and training's validation report are the bytes ``encode`` writes.

Each of them measures through the codec's one coding path (``ScaleHyperprior.analyse`` -> ``code`` ->
``bitstream.pack_batch``); this checks, on a tiny codec and small images, that what they report in bits is
exactly 8 x the length of the stream ``LearnedCodec.encode`` returns for the same image.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from latentzip.codecs.hyperprior import build_model
from latentzip.codecs.learned import LearnedCodec


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_score_reports_the_encoded_bytes(tiny_codec_factory, sample_images):
    from latentzip.pipeline.scoring import ScoreStage

    for arch in ("scale-hyperprior", "mean-scale-hyperprior"):
        directory = tiny_codec_factory(arch=arch)
        stage, codec = ScoreStage(str(directory)), LearnedCodec.from_path(directory)
        for index, image in enumerate(sample_images[:3]):
            row = stage.score_one(f"{index}.png", f"{index}.png", _png(image))
            written = codec.encode(image)
            assert row["error"] == "" and row["num_bytes"] == len(written)
            assert row["bpp"] == 8 * len(written) / (image.width * image.height)


def test_rd_bench_and_the_encode_profile_report_the_encoded_bytes(tiny_codec_dir, sample_images, tmp_path):
    from latentzip.pipeline.bench.encode_profile import profile_encode
    from latentzip.pipeline.bench.rd import rd_benchmark

    folder = tmp_path / "images"
    folder.mkdir()
    paths, sample_images = [], sample_images[:3]  # 64x64, 128x96 and 93x70: the last two pad to 128x128
    for index, image in enumerate(sample_images):
        paths.append(folder / f"{index}.png")
        paths[-1].write_bytes(_png(image))
    result = rd_benchmark([tiny_codec_dir], folder, repeats=1, progress=lambda *_: None)
    for mode_result in result.results:
        codec = LearnedCodec.from_path(tiny_codec_dir, entropy_params=mode_result.mode)
        for row, image in zip(mode_result.per_image, sample_images):
            written = codec.encode(image)
            assert row["num_bytes"] == len(written)
            assert row["bpp"] == 8 * len(written) / (image.width * image.height)
        assert mode_result.num_bytes == sum(len(codec.encode(image)) for image in sample_images)

    codec = LearnedCodec.from_path(tiny_codec_dir, max_batch=2)
    streams = [codec.encode(image) for image in sample_images]
    profile = profile_encode(codec, paths, tmp_path / "profile.zarr", str(tiny_codec_dir), expected=streams)
    assert profile.images == len(paths) and profile.batches == 2  # one of 64x64, one of two 128x128
    assert all(profile.seconds[stage] > 0 for stage in ("decode", "g_a", "h_s", "z coding", "y coding", "pack"))


def test_training_validation_bpp_is_the_encoded_bytes(tiny_codec_dir, sample_images):
    from latentzip.codecs.checkpoint import load_model
    from latentzip.pipeline.training.loop import evaluate

    trained, _ = load_model(tiny_codec_dir)
    images = sample_images[:2]
    tensors = [torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) for image in images]
    metrics = evaluate(trained, tensors, lmbda=0.01)
    coder = build_model(trained.config)
    coder.load_state_dict(trained.state_dict())
    coder.update(force=True)
    codec = LearnedCodec.from_model(coder)
    assert metrics["val_bpp"] == np.mean([8 * len(codec.encode(image)) / (image.width * image.height)
                                          for image in images])
