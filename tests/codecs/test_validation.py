"""Hostile codec folders (issue 19): every value is checked before it reaches a model or the range coder,
and a folder that fails is refused with a specific ``CheckpointError`` (one line from the CLI).

The folders here are crafted as an attacker would: edited, then the model id recomputed so that it
matches. Cases that would crash the process on an unchecked build run in a child process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentzip.codecs.card import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from latentzip.codecs.checkpoint import PRIOR_KEY, load_model, model_id
from latentzip.codecs.hyperprior import CodecConfig
from latentzip.codecs.integer_prior import FixedPointHyperSynthesis
from latentzip.codecs.learned import LearnedCodec


@pytest.fixture
def codec_copy(tiny_codec_dir, tmp_path):
    return shutil.copytree(tiny_codec_dir, tmp_path / "codec")


def _craft(folder, edit_state=None, edit_document=None, rekey=True):
    """Edit a codec folder's tensors and/or codec.json, then (``rekey``) recompute its model id."""
    document = json.loads((folder / CONFIG_FILE).read_text())
    state = load_file(str(folder / WEIGHTS_FILE))
    if edit_state:
        edit_state(state)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_FILE))
    if edit_document:
        edit_document(document)
    if rekey:
        document["model_id"] = model_id(CodecConfig.from_dict(document["config"]), state).hex()
    (folder / CONFIG_FILE).write_text(json.dumps(document))
    return folder


def _set(name, function):
    def edit(state):
        state[name] = function(state[name].clone())
    return edit


# -- codec.json --------------------------------------------------------------------------------------------

def test_huge_channel_count_is_refused_before_any_allocation(codec_copy):
    def wide(document):
        document["config"]["N"] = 200000
    _craft(codec_copy, edit_document=wide, rekey=False)
    # Unchecked, this builds a model of N=200000 (terabytes) before looking at the weights.
    with pytest.raises(CheckpointError, match=r"N=200000 is outside 1\.\.1024"):
        load_model(codec_copy)


def test_channel_count_that_does_not_match_the_weights_is_refused_before_building(codec_copy):
    def wider(document):
        document["config"]["M"] = 1000
    _craft(codec_copy, edit_document=wider, rekey=False)
    with pytest.raises(CheckpointError, match=r"g_a\.6\.weight has shape \(24, 16, 5, 5\).*needs \(1000, 16, 5, 5\)"):
        load_model(codec_copy)


@pytest.mark.parametrize("value", ["16", 16.5, True, None, [16]])
def test_channel_count_of_the_wrong_type_is_refused(codec_copy, value):
    def edit(document):
        document["config"]["N"] = value
    _craft(codec_copy, edit_document=edit, rekey=False)
    with pytest.raises(CheckpointError, match="config N must be an integer"):
        load_model(codec_copy)


@pytest.mark.parametrize("text, match", [
    ("[]", "not a latentzip codec card"),
    ('{"format": "latentzip-codec", "format_version": 1, "config": {}}', "model_id must be"),
    ("[" * 100000 + "]" * 100000, "not valid JSON"),
    (b'{"format": "\xff\xfe"}', "not valid JSON"),
])
def test_malformed_codec_json_is_a_checkpoint_error(codec_copy, text, match):
    path = codec_copy / CONFIG_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CheckpointError, match=match):
        load_model(codec_copy)


def test_codec_json_without_config_is_a_checkpoint_error(codec_copy):
    def drop(document):
        del document["config"]
    _craft(codec_copy, edit_document=drop, rekey=False)
    with pytest.raises(CheckpointError, match="config must be a JSON object"):
        load_model(codec_copy)


# -- model.safetensors: names, shapes, dtypes, the file ----------------------------------------------------

def test_truncated_weights_file_is_a_checkpoint_error(codec_copy):
    path = codec_copy / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(codec_copy)


def test_missing_tensor_is_named(codec_copy):
    def drop(state):
        del state["h_s.2.bias"]
    _craft(codec_copy, drop)
    with pytest.raises(CheckpointError, match=r"missing h_s\.2\.bias"):
        load_model(codec_copy)


def test_extra_tensor_is_named(codec_copy):
    def add(state):
        state["g_a.7.weight"] = torch.zeros(3)
    _craft(codec_copy, add)
    with pytest.raises(CheckpointError, match=r"unexpected g_a\.7\.weight"):
        load_model(codec_copy)


def test_wrong_dims_are_named(codec_copy):
    _craft(codec_copy, _set("h_a.2.weight", lambda t: t[:, :, :3, :3].contiguous()))
    with pytest.raises(CheckpointError, match=r"h_a\.2\.weight has shape \(16, 16, 3, 3\)"):
        load_model(codec_copy)


def test_wrong_dtype_is_named(codec_copy):
    _craft(codec_copy, _set("g_s.0.weight", lambda t: t.double()))
    with pytest.raises(CheckpointError, match=r"g_s\.0\.weight is F64; expected F32"):
        load_model(codec_copy)


@pytest.mark.parametrize("name, value", [("g_a.0.weight", float("nan")), ("h_s.0.bias", float("inf"))])
def test_non_finite_weights_are_refused(codec_copy, name, value):
    def poison(t):
        t.view(-1)[0] = value
        return t
    _craft(codec_copy, _set(name, poison))
    with pytest.raises(CheckpointError, match=f"{name} holds values that are not finite"):
        load_model(codec_copy)


def test_changed_architecture_constant_is_refused(codec_copy):
    _craft(codec_copy, _set("g_a.1.beta_reparam.lower_bound.bound", lambda t: t * 0 - 1))
    with pytest.raises(CheckpointError, match="constant of the architecture"):
        load_model(codec_copy)


# -- entropy-coder tables ----------------------------------------------------------------------------------

def _cdf(module, function):
    return _set(f"{module}._quantized_cdf", function)


def _first(value):
    def edit(t):
        t[0, 0] = value
        return t
    return edit


def _end_of_row_0(state_key_module, value):
    def edit(state):
        lengths = state[f"{state_key_module}._cdf_length"]
        cdf = state[f"{state_key_module}._quantized_cdf"].clone()
        cdf[0, int(lengths[0]) - 1] = value
        state[f"{state_key_module}._quantized_cdf"] = cdf
    return edit


def _flat_step(module):
    def edit(state):
        cdf = state[f"{module}._quantized_cdf"].clone()
        cdf[1, 2] = cdf[1, 1]  # a symbol of zero frequency
        state[f"{module}._quantized_cdf"] = cdf
    return edit


def _decreasing(module):
    def edit(state):
        cdf = state[f"{module}._quantized_cdf"].clone()
        cdf[0, 1] = 70000
        state[f"{module}._quantized_cdf"] = cdf
    return edit


TABLE_CASES = {
    "cdf-does-not-start-at-0": (_cdf("entropy_bottleneck", _first(5)), "CDF starts at 5, not 0"),
    "cdf-negative-start": (_cdf("gaussian_conditional", _first(-7)), "CDF starts at -7, not 0"),
    "cdf-does-not-end-at-precision": (_end_of_row_0("gaussian_conditional", 65535), "ends at 65535, not 65536"),
    "cdf-zero-frequency": (_flat_step("entropy_bottleneck"), "not strictly increasing"),
    "cdf-decreasing": (_decreasing("gaussian_conditional"), "not strictly increasing"),
    "length-beyond-row": (_set("gaussian_conditional._cdf_length", lambda t: t.fill_(10**6)), r"outside \[2, "),
    "length-below-2": (_set("entropy_bottleneck._cdf_length", lambda t: t.fill_(1)), r"CDF length 1 outside"),
    "offset-huge": (_set("entropy_bottleneck._offset", lambda t: t.fill_(-(2**30))), "offset -1073741824 beyond"),
    "fewer-rows-than-scales": (_set("gaussian_conditional._quantized_cdf", lambda t: t[:-1].contiguous()),
                               "rows; the other tables of gaussian_conditional have"),
    "rows-not-channels": (_set("entropy_bottleneck._offset", lambda t: t[:-1].contiguous()),
                          "the entropy bottleneck has N=16 channels"),
    "cdf-not-2d": (_set("entropy_bottleneck._quantized_cdf", lambda t: t.reshape(-1).contiguous()),
                   r"a CDF table is \(rows, width\)"),
    "cdf-as-float": (_set("entropy_bottleneck._quantized_cdf", lambda t: t.float()), "is F32; expected I32"),
    "tables-empty": (_set("gaussian_conditional._offset", lambda t: t[:0].contiguous()), "has 0 rows"),
    "scale-table-unsorted": (_set("gaussian_conditional.scale_table", lambda t: t.flip(0).contiguous()),
                             "positive and increasing"),
}


@pytest.mark.parametrize("case", sorted(TABLE_CASES))
def test_bad_entropy_coder_table_is_a_checkpoint_error(codec_copy, case):
    edit, match = TABLE_CASES[case]
    _craft(codec_copy, edit)
    with pytest.raises(CheckpointError, match=match):
        load_model(codec_copy)


def test_tables_changed_after_loading_never_reach_the_coder(tiny_codec_dir, tmp_path):
    """Tables are checked again before every call of the coder: garbage put into a loaded model gives a
    ValueError, not a crash (in a child process, since an unchecked coder dies by SIGSEGV)."""
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from PIL import Image
        from latentzip.codecs.learned import LearnedCodec
        codec = LearnedCodec.from_path({str(tiny_codec_dir)!r})
        image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
        data = codec.encode(image)
        for name, edit in [("_quantized_cdf", lambda t: t.fill_(-5)), ("_cdf_length", lambda t: t.fill_(2**30)),
                           ("_offset", lambda t: t.fill_(2**31 - 1))]:
            for module in (codec.model.entropy_bottleneck, codec.model.gaussian_conditional):
                saved = getattr(module, name).clone()
                edit(getattr(module, name))
                for call in (lambda: codec.encode(image), lambda: codec.decode(data)):
                    try:
                        call()
                    except ValueError as exc:
                        assert "entropy-coder tables unusable" in str(exc), exc
                    else:
                        raise AssertionError("garbage tables were used")
                getattr(module, name).copy_(saved)
        assert codec.decode(data).size == (64, 64)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


# -- the integer prior's stored plan -----------------------------------------------------------------------

def test_stored_plan_with_a_false_bound_is_refused(tiny_codec_dir):
    model, card = load_model(tiny_codec_dir, entropy_params="float")
    plan = json.loads((tiny_codec_dir / CONFIG_FILE).read_text())[PRIOR_KEY]["plan"]
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    width, offset = eb._cdf_length.long() - 2, eb._offset.long()
    arguments = (model.h_s, eb.quantiles[:, 0, 1], (offset - width, offset + 2 * width - 1), gc.scale_table,
                 float(gc.lower_bound_scale.bound), model.predicts_means)
    assert FixedPointHyperSynthesis.derive(*arguments, plan=plan).plan() == plan
    for key, value in [("acc_bound", plan[0]["acc_bound"] // 2), ("in_bits", 10**6), ("weight_bits", float("inf")),
                       ("out_bits", True), ("in_bits", -3)]:
        forged = json.loads(json.dumps(plan))
        forged[0][key] = value
        with pytest.raises(ValueError, match="integer prior plan"):
            FixedPointHyperSynthesis.derive(*arguments, plan=forged)


def test_codec_with_a_forged_plan_loads_with_the_prior_derived_afresh(codec_copy, tiny_codec_dir, sample_images):
    def forge(document):
        document[PRIOR_KEY]["plan"][0]["weight_bits"] = 10**6  # 2.0**10**6 overflowed when trusted
    _craft(codec_copy, edit_document=forge, rekey=False)
    forged, honest = LearnedCodec.from_path(codec_copy), LearnedCodec.from_path(tiny_codec_dir)
    assert forged.encode(sample_images[0]) == honest.encode(sample_images[0])


# -- the command line --------------------------------------------------------------------------------------

def _one_line_error(capsys, code, command):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith(f"latentzip {command}: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("damage", ["truncated", "missing-tensor", "bad-table"])
def test_encode_cli_says_one_line_for_a_bad_codec_folder(codec_copy, tmp_path, capsys, damage):
    from latentzip.jobs import encode

    if damage == "truncated":
        (codec_copy / WEIGHTS_FILE).write_bytes((codec_copy / WEIGHTS_FILE).read_bytes()[:1000])
    elif damage == "missing-tensor":
        _craft(codec_copy, lambda state: state.pop("g_s.6.bias"))
    else:
        _craft(codec_copy, _cdf("gaussian_conditional", _first(9)))
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    Image.new("RGB", (32, 32)).save(images / "a.png")
    code = encode.main([str(images), "--model", str(codec_copy), "--archive", str(tmp_path / "a.zarr")])
    _one_line_error(capsys, code, "encode")


def test_zoo_lists_a_broken_zoo_entry_and_show_says_one_line(tiny_codec_dir, tmp_path, monkeypatch, capsys):
    from latentzip.codecs import registry
    from latentzip.jobs import zoo

    shutil.copytree(tiny_codec_dir, tmp_path / "zoo" / "good")
    (tmp_path / "zoo" / "broken").mkdir()
    (tmp_path / "zoo" / "broken" / CONFIG_FILE).write_text('{"format": "latentzip-codec", "format_version": 1')
    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path / "zoo")
    assert zoo.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("broken  unreadable codec folder: ") and "\ngood  scale-hyperprior" in out, out
    _one_line_error(capsys, zoo.main(["show", "broken"]), "zoo")
