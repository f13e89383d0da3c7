"""The model zoo: adding a codec with its validation RD, listing, loading by name."""

from __future__ import annotations


import numpy as np
import pytest

from latentzip.codecs import registry
from latentzip.codecs.checkpoint import read_card
from latentzip.codecs.registry import load_codec, zoo_models
from latentzip.jobs import zoo as zoo_cli
from latentzip.pipeline import zoo


@pytest.fixture
def tmp_zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path / "zoo")
    return tmp_path / "zoo"


def test_add_writes_validation_rd_and_keeps_the_model_id(tiny_codec_dir, sample_images, tmp_zoo):
    images = [(f"img{i}.png", image) for i, image in enumerate(sample_images[:3])]
    target = zoo.add(tiny_codec_dir, "tiny-q1", images, "samples", zoo_dir=tmp_zoo, history="two runs of 5 steps")
    document = read_card(target)
    assert document["model_id"] == read_card(tiny_codec_dir)["model_id"]
    assert document["integer_prior"]["model_id"] == document["model_id"]  # the plan, keyed by this model
    validation = document["card"]["validation"]
    assert validation["images"] == 3 and len(validation["per_image"]) == 3
    codec = load_codec("tiny-q1")
    first = sample_images[0]
    assert validation["per_image"][0]["bpp"] == pytest.approx(len(codec.encode(first)) * 8 / (first.width * first.height))
    assert "| validation | 3 images" in (target / zoo.CARD_FILE).read_text()
    assert "| runs | two runs of 5 steps |" in (target / zoo.CARD_FILE).read_text()
    assert list(zoo_models()) == ["tiny-q1"]


def test_cli_lists_one_model_per_line_name_first(tiny_codec_factory, sample_images, tmp_zoo, capsys):
    for name, seed in (("b-model", 1), ("a-model", 0)):
        zoo.add(tiny_codec_factory(seed=seed), name, [("x.png", sample_images[0])], "samples", zoo_dir=tmp_zoo)
    assert zoo_cli.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["a-model", "b-model"]
    assert all("bpp" in line and "scale-hyperprior" in line for line in lines)
    assert zoo_cli.main(["show", "a-model"]) == 0
    assert capsys.readouterr().out.startswith("# a-model")
    assert zoo_cli.main(["show", "nope"]) == 2


def test_model_card_lists_the_training_runs():
    def run(first, last, total):
        return {"from_step": first, "to_step": total, "last_step": last, "train_time_s": 90.0, "lr": 5e-4,
                "lr_decay_at": [0.8, 0.95], "lr_decay": 0.1, "batch_size": 4, "patch_size": 128,
                "num_workers": 1, "device": "cpu"}

    document = {"config": {"arch": "mean-scale-hyperprior", "N": 64, "M": 96}, "model_id": "00",
                "card": {"runs": [run(0, 2500, 2500), run(2500, 3000, 5000)], "history": "two earlier runs"}}
    text = zoo.model_card("m", document)
    assert ("| runs | steps 0→2500: lr 0.0005 (×0.1 at 80%/95% of 2500), batch 4×128 px, 1 worker(s) on cpu, "
            "1.5 min; steps 2500→3000: lr 0.0005 (×0.1 at 80%/95% of 5000)") in text
    assert "two earlier runs" not in text  # the record covers every step: the text is not needed
    document["card"]["runs"] = document["card"]["runs"][1:]  # resumed from a codec without a record
    assert "| runs | two earlier runs; steps 2500→3000" in zoo.model_card("m", document)
    del document["card"]["history"]
    assert "| runs | steps 0→2500: not recorded; steps 2500→3000" in zoo.model_card("m", document)
    document["card"]["data"] = {"images": 234, "kind": "files", "source": "/d/photos/train, /d/photos/extra"}
    assert "| data | 234 images (files) from `train` and `extra` |" in zoo.model_card("m", document)
    document["card"]["runs"][0].update(optimizer="fresh", lr_rsqrt_from=10_000, precision="bf16")
    assert ("lr 0.0005 (×0.1 at 80%/95% of 5000, ×√(10000/step) past step 10000), batch 4×128 px, 1 worker(s) on "
            "cpu, 1.5 min, bf16 transforms, optimiser state fresh (Adam's moments lost)") in zoo.model_card("m", document)


def test_add_refuses_bad_names(tiny_codec_dir, sample_images, tmp_zoo):
    with pytest.raises(ValueError, match="bad zoo name"):
        zoo.add(tiny_codec_dir, "../escape", [("x.png", sample_images[0])], "samples", zoo_dir=tmp_zoo)


@pytest.mark.skipif(not zoo_models(), reason="no zoo models in this checkout")
def test_shipped_zoo_models_load_by_name_and_round_trip(sample_images):
    names = list(zoo_models("codec"))  # the generative ones (digits-vae) write no bitstreams: test_gaussian_vae.py
    assert len(names) >= 4
    image = sample_images[1]
    for name in names:
        document = read_card(zoo_models()[name])
        assert document["card"]["validation"]["images"] > 0 and document["card"]["steps"] > 0
        codec = load_codec(name)
        decoded = codec.decode(codec.encode(image))
        assert decoded.size == image.size
        assert np.abs(np.asarray(decoded, float) - np.asarray(image, float)).mean() < 40
    total = sum(p.stat().st_size for d in zoo_models().values() for p in d.iterdir())
    assert total <= 60 * 2**20
