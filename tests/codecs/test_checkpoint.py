"""Codec directories (latentzip.codecs.checkpoint): safetensors weights + codec.json, model ids, no pickle."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latentzip.codecs.checkpoint import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    CheckpointError,
    export_codec,
    load_model,
    model_id,
    read_card,
)
from latentzip.codecs.hyperprior import CodecConfig, build_model
from latentzip.codecs.learned import LearnedCodec


def _model(seed=0, arch="scale-hyperprior"):
    torch.manual_seed(seed)
    return build_model(CodecConfig(arch=arch, N=16, M=24))


@pytest.fixture
def codec_copy(tiny_codec_dir, tmp_path):
    """A private, editable copy of the shared tiny codec directory."""
    return shutil.copytree(tiny_codec_dir, tmp_path / "codec")


@pytest.mark.parametrize("arch", ["scale-hyperprior", "mean-scale-hyperprior"])
def test_export_then_load_gives_identical_weights_and_id(tmp_path, arch):
    model = _model(arch=arch)
    mid = export_codec(model, tmp_path / "out", card={"recipe": {"lambda": 0.01}})
    assert isinstance(mid, bytes) and len(mid) == 16
    original = model.state_dict()
    loaded, card = load_model(tmp_path / "out")
    state = loaded.state_dict()
    assert set(state) == set(original)
    for name, tensor in original.items():
        assert state[name].dtype == tensor.dtype, name
        assert torch.equal(state[name], tensor), name
    # The entropy-coder tables were built before export and travel in the file.
    assert original["gaussian_conditional._cdf_length"].numel() > 0
    assert card["model_id"] == mid.hex()
    assert card["config"] == {"arch": arch, "N": 16, "M": 24, "entropy_params": "integer"}
    assert card["card"] == {"recipe": {"lambda": 0.01}}
    assert card["format"] == FORMAT and card["format_version"] == FORMAT_VERSION
    assert model_id(loaded.config, state) == mid
    assert LearnedCodec(loaded, card).model_id == mid
    assert not loaded.training


def test_loaded_model_codes_like_the_exported_one(tmp_path):
    model = _model()
    export_codec(model, tmp_path)
    loaded, _ = load_model(tmp_path)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert model.compress(x)["strings"] == loaded.compress(x)["strings"]


def test_model_id_is_reproducible(tmp_path):
    first = export_codec(_model(seed=3), tmp_path / "a")
    second = export_codec(_model(seed=3), tmp_path / "b")
    assert first == second
    assert (tmp_path / "a" / WEIGHTS_FILE).read_bytes() == (tmp_path / "b" / WEIGHTS_FILE).read_bytes()
    assert export_codec(_model(seed=4), tmp_path / "c") != first


def test_model_id_depends_on_every_weight_and_the_config(tmp_path):
    model = _model()
    export_codec(model, tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    config = model.config
    base = model_id(config, state)
    assert model_id(config, dict(state)) == base

    for name in ("g_a.0.weight", "h_s.0.bias", "entropy_bottleneck._quantized_cdf"):
        edited = dict(state)
        tensor = edited[name].clone()
        tensor.view(-1)[0] += 1
        edited[name] = tensor
        assert model_id(config, edited) != base, name

    renamed = dict(state)
    renamed["g_a.0.weight_renamed"] = renamed.pop("g_a.0.weight")
    assert model_id(config, renamed) != base

    assert model_id(CodecConfig(arch="scale-hyperprior", N=16, M=25), state) != base


def test_edited_weights_are_refused(codec_copy):
    weights = codec_copy / WEIGHTS_FILE
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(weights))
    state["g_s.0.weight"] = state["g_s.0.weight"].clone()
    state["g_s.0.weight"].view(-1)[7] *= 1.001
    save_file(state, str(weights), metadata=metadata)  # codec.json left as it was
    with pytest.raises(CheckpointError, match="model id"):
        load_model(codec_copy)
    with pytest.raises(CheckpointError):
        LearnedCodec.from_path(codec_copy)


def test_edited_model_id_in_card_is_refused(codec_copy):
    card_path = codec_copy / CONFIG_FILE
    document = json.loads(card_path.read_text())
    document["model_id"] = "00" * 16
    card_path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError):
        load_model(codec_copy)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_format_version_is_refused(codec_copy, version):
    card_path = codec_copy / CONFIG_FILE
    document = json.loads(card_path.read_text())
    document["format_version"] = version
    card_path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="version"):
        read_card(codec_copy)
    with pytest.raises(CheckpointError):
        load_model(codec_copy)


def test_wrong_format_name_is_refused(codec_copy):
    card_path = codec_copy / CONFIG_FILE
    document = json.loads(card_path.read_text())
    document["format"] = "something-else"
    card_path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError):
        load_model(codec_copy)


def test_broken_or_missing_files_are_refused(codec_copy, tmp_path):
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "does-not-exist")
    (codec_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError):
        load_model(codec_copy)
    (codec_copy / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError):
        read_card(codec_copy)


def test_directory_holds_only_json_and_safetensors(tiny_codec_dir):
    assert sorted(p.name for p in tiny_codec_dir.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    data = (tiny_codec_dir / WEIGHTS_FILE).read_bytes()
    # safetensors: u64 header length, then a JSON header; never a zip/pickle (torch.save) file.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    assert header["__metadata__"]["model_id"] == json.loads((tiny_codec_dir / CONFIG_FILE).read_text())["model_id"]
    assert not data.startswith(b"PK") and data[:1] != b"\x80"


def test_loading_uses_no_pickle(tiny_codec_dir, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a codec")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, card = load_model(tiny_codec_dir)
    assert card["model_id"]
    assert model.config == CodecConfig(N=16, M=24)


def test_entropy_params_are_chosen_at_load_and_change_the_model_id(tiny_codec_dir):
    integer, integer_card = load_model(tiny_codec_dir)
    floating, float_card = load_model(tiny_codec_dir, entropy_params="float")
    stored = read_card(tiny_codec_dir)
    assert integer.config.entropy_params == "integer" and floating.config.entropy_params == "float"
    assert integer_card["model_id"] == stored["model_id"]  # exported in the default mode
    assert float_card["model_id"] != integer_card["model_id"]
    assert float_card["config"] == {"arch": "scale-hyperprior", "N": 16, "M": 24}
    state = load_file(str(tiny_codec_dir / WEIGHTS_FILE))
    assert float_card["model_id"] == model_id(floating.config, state).hex()
    for name, tensor in integer.state_dict().items():
        assert torch.equal(floating.state_dict()[name], tensor), name
    assert LearnedCodec.from_path(tiny_codec_dir, entropy_params="float").model_id.hex() == float_card["model_id"]
    with pytest.raises(ValueError):
        load_model(tiny_codec_dir, entropy_params="fixed")


def test_codec_written_before_the_field_keeps_its_id_in_float_mode(tmp_path):
    # A float-mode export writes exactly what older versions wrote: a config without entropy_params.
    model = _model()
    model.config = CodecConfig(N=16, M=24, entropy_params="float")
    mid = export_codec(model, tmp_path)
    document = read_card(tmp_path)
    assert document["config"] == {"arch": "scale-hyperprior", "N": 16, "M": 24}
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    legacy = hashlib.sha256(json.dumps(document["config"], sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].contiguous()
        legacy.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        legacy.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    assert mid == legacy.digest()[:16]
    assert load_model(tmp_path, entropy_params="float")[1]["model_id"] == mid.hex()
    default, card = load_model(tmp_path)
    assert default.config.entropy_params == "integer" and card["model_id"] != mid.hex()


def test_export_into_an_existing_directory_overwrites(tmp_path):
    first = export_codec(_model(seed=0), tmp_path)
    second = export_codec(_model(seed=1), tmp_path)
    assert first != second
    _, card = load_model(tmp_path)
    assert card["model_id"] == second.hex()
