"""Codec name resolution (latentzip.codecs.registry)."""

from __future__ import annotations

import shutil

import pytest

from latentzip.codecs import registry
from latentzip.codecs.classical import FORMATS, ClassicalCodec
from latentzip.codecs.learned import LearnedCodec
from latentzip.codecs.registry import UnknownCodecError, is_classical, list_codecs, load_codec


@pytest.fixture
def empty_zoo(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    monkeypatch.setattr(registry, "ZOO_DIR", zoo)
    return zoo


def test_classical_with_quality():
    codec = load_codec("jpeg", quality=50)
    assert isinstance(codec, ClassicalCodec)
    assert codec.name == "jpeg" and codec.quality == 50


def test_classical_default_quality_and_bad_quality():
    assert load_codec("webp").quality == FORMATS["webp"].default_quality
    with pytest.raises(ValueError):
        load_codec("jpeg", quality=500)


def test_classical_round_trip_through_the_registry(sample_images):
    codec = load_codec("jpeg", quality=50)
    image = sample_images[2]
    assert codec.decode(codec.encode(image)).size == image.size


@pytest.mark.parametrize("as_str", [True, False], ids=["str", "Path"])
def test_codec_directory(tiny_codec_dir, sample_images, as_str):
    codec = load_codec(str(tiny_codec_dir) if as_str else tiny_codec_dir, max_batch=2)
    assert isinstance(codec, LearnedCodec)
    assert codec.max_batch == 2
    assert codec.model_id == LearnedCodec.from_path(tiny_codec_dir).model_id
    image = sample_images[2]
    assert codec.decode(codec.encode(image)).size == image.size


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownCodecError) as info:
        load_codec("no-such-codec")
    message = str(info.value)
    assert "no-such-codec" in message
    for name in list_codecs():
        assert name in message
    for name in FORMATS:
        assert name in message
    assert isinstance(info.value, ValueError)


def test_directory_without_a_card_is_unknown(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnknownCodecError):
        load_codec(tmp_path)


def test_list_codecs_and_is_classical(empty_zoo):
    assert list_codecs() == list(FORMATS)
    assert all(is_classical(name) for name in FORMATS)
    assert not is_classical("mean-scale-q3")


def test_zoo_models_are_listed_and_loaded_by_name(empty_zoo, tiny_codec_dir):
    shutil.copytree(tiny_codec_dir, empty_zoo / "tiny-q1")
    (empty_zoo / "not-a-model").mkdir()  # no codec.json: ignored
    assert registry.zoo_models() == {"tiny-q1": empty_zoo / "tiny-q1"}
    assert list_codecs() == [*FORMATS, "tiny-q1"]
    codec = load_codec("tiny-q1")
    assert isinstance(codec, LearnedCodec) and codec.name == "tiny-q1"
    with pytest.raises(UnknownCodecError, match="tiny-q1"):
        load_codec("tiny-q2")


def test_missing_zoo_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path / "absent")
    assert registry.zoo_models() == {}
    assert list_codecs() == list(FORMATS)


def test_classical_names_win_over_directories(tmp_path, monkeypatch, tiny_codec_dir):
    shutil.copytree(tiny_codec_dir, tmp_path / "jpeg")
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_codec("jpeg"), ClassicalCodec)
    assert isinstance(load_codec("./jpeg"), LearnedCodec)


@pytest.mark.parametrize("name", ["mean-scale-q2", "mean-scale-q5"])
def test_coding_card_from_codec_json_is_the_loaded_codecs_card(name):
    """A job's driver reads the archive's model id and config from codec.json alone: they are what the
    loaded codec writes bitstreams under."""
    from latentzip.codecs.registry import coding_card, load_codec

    loaded = load_codec(name).card
    card = coding_card(name, "encode")
    assert card["model_id"] == loaded["model_id"] and card["config"] == loaded["config"]


def test_coding_card_of_a_tiny_codec_and_of_what_is_no_codec(tiny_codec_dir, tiny_codec_factory):
    import json

    from latentzip.codecs.registry import NotACodecError, coding_card, load_codec

    for directory in (tiny_codec_dir, tiny_codec_factory(seed=0, arch="mean-scale-hyperprior")):
        assert coding_card(directory, "encode")["model_id"] == load_codec(directory).card["model_id"]
    with pytest.raises(ValueError, match="encode needs a learned codec"):
        coding_card("webp", "encode")
    with pytest.raises(NotACodecError, match="encode needs an entropy-coded codec"):
        coding_card("digits-vae", "encode")


def test_coding_card_of_a_float_codec_is_its_integer_mode(tmp_path):
    """A codec exported in float mode is loaded (and writes) in integer mode: the card names that mode's
    model id, which codec.json records beside the integer prior's plan."""
    import json

    import torch

    from latentzip.codecs.checkpoint import export_codec
    from latentzip.codecs.hyperprior import CodecConfig, build_model
    from latentzip.codecs.registry import coding_card, load_codec

    torch.manual_seed(0)
    export_codec(build_model(CodecConfig(N=16, M=24, entropy_params="float")), tmp_path / "float")
    document = json.loads((tmp_path / "float" / "codec.json").read_text())
    loaded = load_codec(tmp_path / "float").card
    card = coding_card(tmp_path / "float", "encode")
    assert card["model_id"] == loaded["model_id"] != document["model_id"]
    assert card["config"] == loaded["config"] and card["config"]["entropy_params"] == "integer"
