"""Fuzzing codec folders: random mutations of a real (tiny) codec folder, each loaded in a child process.

Codec folders travel and can be damaged or crafted (issue 19). Each case mutates a freshly exported tiny
codec (N=M=8, both architectures): entropy-coder tables (CDF entries, lengths, offsets, rows, shapes),
the scale table, weights (non-finite, huge, noise), dtypes, shapes, missing, extra and renamed tensors,
architecture constants, the safetensors file itself (truncated, bytes flipped, header edited, appended
to), ``codec.json`` (config values and keys, model id, format, the integer prior's plan, broken JSON).
A crafted folder would recompute the model id, so most tensor mutations do (and some also re-key the
stored integer-prior plan, so that the plan is checked against weights it was not derived from).

Every case must end in one of: the codec loads and round-trips an image (decoding its stream gives
exactly the encoder's reconstruction); loading raises ``CheckpointError``; or encoding that image is
refused with the coder's specific ``ValueError`` (latents the range coder cannot take). Never a death by
signal (the C++ range coder reading or writing out of bounds), never a hang, never another exception.

To keep it affordable, one child process loads the cases in sequence and answers one JSON line each; the
parent restarts a child that died (the death is that case's) or stopped answering within
``CASE_SECONDS`` (killed: a hang).
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentzip.codecs.card import CONFIG_FILE, WEIGHTS_FILE
from latentzip.codecs.checkpoint import PRIOR_KEY, export_codec, model_id
from latentzip.codecs.hyperprior import CodecConfig, build_model

SEED = 20261202
CASES = 520
CASE_SECONDS = 120.0  # generous, for a loaded machine: a case takes a fraction of a second of CPU
STARTUP_SECONDS = 180.0
ARCHS = ("scale-hyperprior", "mean-scale-hyperprior")

CHILD = r"""
import json, sys
import numpy as np
import torch
torch.set_num_threads(1)
from PIL import Image
from latentzip.codecs.card import CheckpointError
from latentzip.codecs.learned import LearnedCodec

image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
CODER_REFUSALS = ("cannot entropy-code", "entropy-coder tables unusable", "table indexes")

def case(folder):
    try:
        codec = LearnedCodec.from_path(folder)
    except CheckpointError as exc:
        return {"outcome": "refused", "error": str(exc)[-160:]}
    try:
        [(data, reconstruction)] = codec.encode_with_reconstruction([image])
    except ValueError as exc:
        if str(exc).startswith(CODER_REFUSALS):
            return {"outcome": "encode-refused", "error": str(exc)[:160]}
        raise
    decoded = codec.decode(data)
    same = np.array_equal(np.asarray(decoded), np.asarray(reconstruction))
    return {"outcome": "round-trip" if same else "mismatch", "bytes": len(data)}

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    try:
        answer = case(line.strip())
    except BaseException as exc:
        answer = {"outcome": "unexpected", "error": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps(answer), flush=True)
"""


class Child:
    """One loader process; :meth:`ask` gives its answer for a folder, or what became of it."""

    def __init__(self, log: Path):
        self.log = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.buffer = b""
        ready = self._line(time.monotonic() + STARTUP_SECONDS)
        assert ready == {"ready": True}, f"the loader did not start: {ready}"

    def _line(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return {"outcome": "hang"}
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait()
                return {"outcome": "signal", "signal": -code} if code < 0 else {"outcome": "died", "code": code}
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def ask(self, folder: Path) -> dict:
        try:
            self.proc.stdin.write(f"{folder}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self._line(time.monotonic() + CASE_SECONDS)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


# -- mutations ---------------------------------------------------------------------------------------------

def _weird_int(rng: random.Random, width: int = 8) -> int:
    return rng.choice([0, 1, -1, 2, width, width + 1, width - 1, 2**16, 2**16 + 1, 2**16 - 1, 2**24, -(2**24),
                       2**31 - 1, -(2**31), rng.randint(-(2**31), 2**31 - 1), rng.randint(-100, 100)])


def _table_name(rng: random.Random, buffer: str) -> str:
    return f"{rng.choice(['entropy_bottleneck', 'gaussian_conditional'])}.{buffer}"


def _cdf_entries(state, rng):
    name = _table_name(rng, "_quantized_cdf")
    cdf = state[name].clone()
    for _ in range(rng.randint(1, 4)):
        row, col = rng.randrange(cdf.shape[0]), rng.randrange(cdf.shape[1])
        cdf[row, col] = rng.choice([_weird_int(rng, cdf.shape[1]), int(cdf[row, col]) + rng.choice([-1, 1])])
    state[name] = cdf


def _cdf_length(state, rng):
    name = _table_name(rng, "_cdf_length")
    lengths = state[name].clone()
    width = state[name.replace("_cdf_length", "_quantized_cdf")].shape[1]
    for _ in range(rng.randint(1, 3)):
        lengths[rng.randrange(len(lengths))] = _weird_int(rng, width)
    state[name] = lengths


def _offset(state, rng):
    name = _table_name(rng, "_offset")
    offsets = state[name].clone()
    for _ in range(rng.randint(1, 3)):
        offsets[rng.randrange(len(offsets))] = _weird_int(rng)
    state[name] = offsets


def _cdf_rows(state, rng):
    name = _table_name(rng, "_quantized_cdf")
    cdf = state[name].clone()
    a, b = rng.randrange(cdf.shape[0]), rng.randrange(cdf.shape[0])
    operation = rng.choice(["swap", "reverse", "zero", "shift", "copy-lengths"])
    if operation == "swap":
        cdf[[a, b]] = cdf[[b, a]]
    elif operation == "reverse":
        cdf[a] = cdf[a].flip(0)
    elif operation == "zero":
        cdf[a] = 0
    elif operation == "shift":
        cdf[a] = torch.roll(cdf[a], rng.choice([-1, 1]))
    else:  # lengths of one row given to another: its end no longer at 2**16
        lengths = state[name.replace("_quantized_cdf", "_cdf_length")].clone()
        lengths[a] = lengths[b]
        state[name.replace("_quantized_cdf", "_cdf_length")] = lengths
    state[name] = cdf


def _table_shape(state, rng):
    name = _table_name(rng, rng.choice(["_quantized_cdf", "_cdf_length", "_offset"]))
    if rng.random() < 0.3:
        name = "gaussian_conditional.scale_table"
    tensor = state[name]
    operation = rng.choice(["drop-row", "add-row", "narrow", "widen", "flatten", "empty"])
    if operation == "drop-row" and tensor.shape[0] > 1:
        tensor = tensor[:-1]
    elif operation == "add-row":
        tensor = torch.cat([tensor, tensor[-1:]])
    elif operation == "narrow" and tensor.dim() == 2:
        tensor = tensor[:, : rng.randrange(1, tensor.shape[1])]
    elif operation == "widen" and tensor.dim() == 2:
        tensor = torch.cat([tensor, torch.zeros(tensor.shape[0], rng.randint(1, 5), dtype=tensor.dtype)], 1)
    elif operation == "flatten":
        tensor = tensor.reshape(-1)
    else:
        tensor = tensor[:0]
    state[name] = tensor.contiguous()


def _scale_table(state, rng):
    scales = state["gaussian_conditional.scale_table"].clone()
    i = rng.randrange(len(scales))
    scales[i] = rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e30, scales[-1] * 2, scales[0] / 2])
    if rng.random() < 0.3:
        scales = scales.flip(0)
    state["gaussian_conditional.scale_table"] = scales


def _float_names(state):
    return [n for n, t in state.items() if t.is_floating_point() and n != "gaussian_conditional.scale_table"]


def _param_values(state, rng):
    name = rng.choice(_float_names(state))
    tensor = state[name].clone()
    flat = tensor.view(-1)
    operation = rng.choice(["nan", "inf", "huge", "zero", "negate", "scale"])
    if operation in ("nan", "inf"):
        flat[rng.randrange(flat.numel())] = float(operation)
    elif operation == "huge":
        flat[rng.randrange(flat.numel())] = rng.choice([1e30, -1e30, 3e38])
    elif operation == "zero":
        tensor.zero_()
    elif operation == "negate":
        tensor.neg_()
    else:
        tensor.mul_(rng.choice([1e-6, 1e3, 1e6]))
    state[name] = tensor


def _param_noise(state, rng):
    # Small changes to real weights: these must load and round-trip (the prior re-derived or its plan
    # re-proved).
    for name in rng.sample(_float_names(state), rng.randint(1, 3)):
        if name.endswith(("pedestal", "bound", "target")):
            continue
        tensor = state[name]
        state[name] = tensor + 0.01 * tensor.abs().mean() * torch.randn(tensor.shape, generator=torch.Generator().manual_seed(rng.randrange(2**31)))


def _dtype(state, rng):
    name = rng.choice(sorted(state))
    state[name] = state[name].to(rng.choice([torch.float32, torch.float64, torch.float16, torch.int32, torch.int64,
                                             torch.uint8]))


def _shape(state, rng):
    name = rng.choice(sorted(state))
    tensor = state[name]
    operation = rng.choice(["unsqueeze", "transpose", "slice", "flatten"])
    if operation == "unsqueeze":
        tensor = tensor.unsqueeze(0)
    elif operation == "transpose" and tensor.dim() >= 2:
        tensor = tensor.transpose(0, 1)
    elif operation == "slice" and tensor.numel() > 1:
        tensor = tensor.reshape(-1)[:-1]
    else:
        tensor = tensor.reshape(-1)
    state[name] = tensor.contiguous()


def _tensor_set(state, rng):
    name = rng.choice(sorted(state))
    operation = rng.choice(["drop", "extra", "rename"])
    if operation == "drop":
        del state[name]
    elif operation == "extra":
        state[rng.choice(["extra.weight", f"{name}.copy", "g_a.7.weight"])] = torch.ones(3)
    else:
        state[name + "_renamed"] = state.pop(name)


def _constant(state, rng):
    names = [n for n in state if n.endswith(("pedestal", "bound", "target", "scale_bound"))]
    name = rng.choice(names)
    state[name] = state[name] * rng.choice([0.0, -1.0, 2.0, 1e6])


TENSOR_MUTATIONS = {"cdf-entries": _cdf_entries, "cdf-length": _cdf_length, "offset": _offset,
                    "cdf-rows": _cdf_rows, "table-shape": _table_shape, "scale-table": _scale_table,
                    "param-values": _param_values, "param-noise": _param_noise, "dtype": _dtype,
                    "shape": _shape, "tensor-set": _tensor_set, "constant": _constant}


def _mutate_tensors(folder: Path, kind: str, rng: random.Random) -> None:
    document = json.loads((folder / CONFIG_FILE).read_text())
    state = load_file(str(folder / WEIGHTS_FILE))
    TENSOR_MUTATIONS[kind](state, rng)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_FILE))
    if rng.random() < 0.85:  # crafted, not damaged: the model id made to match
        try:
            config = CodecConfig.from_dict(document["config"])
            document["model_id"] = model_id(config, state).hex()
        except Exception:  # noqa: BLE001 - a state that cannot be hashed keeps the old id
            pass
        if PRIOR_KEY in document and rng.random() < 0.5:  # the stored plan re-keyed to the new weights
            document[PRIOR_KEY]["model_id"] = model_id(
                CodecConfig.from_dict({**document["config"], "entropy_params": "integer"}), state).hex()
        (folder / CONFIG_FILE).write_text(json.dumps(document))


def _mutate_file(folder: Path, kind: str, rng: random.Random) -> None:
    path = folder / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    if kind == "file-truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "file-flip":
        for _ in range(rng.randint(1, 8)):
            where = rng.randrange(8 + header_len) if rng.random() < 0.5 else rng.randrange(len(data))
            data[where] ^= 1 << rng.randrange(8)
    elif kind == "file-append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:  # file-header: the header's JSON edited, lengths kept consistent
        header = json.loads(bytes(data[8 : 8 + header_len]))
        name = rng.choice([n for n in header if n != "__metadata__"])
        entry = header[name]
        operation = rng.choice(["shape", "dtype", "offsets", "length"])
        if operation == "shape":
            entry["shape"] = [rng.choice([0, 1, 2**20, 2**40, 7]) for _ in range(rng.randint(0, 4))]
        elif operation == "dtype":
            entry["dtype"] = rng.choice(["F64", "I8", "BOOL", "U64", "XX"])
        elif operation == "offsets":
            entry["data_offsets"] = [rng.randrange(0, 2**20), rng.choice([0, 2**62, rng.randrange(2**20)])]
        encoded = json.dumps(header).encode()
        if operation == "length":
            data[:8] = struct.pack("<Q", rng.choice([0, 2**63, header_len + 1, header_len - 1, len(data)]))
        else:
            data = bytearray(struct.pack("<Q", len(encoded))) + encoded + data[8 + header_len :]
    path.write_bytes(bytes(data))


def _mutate_json(folder: Path, kind: str, rng: random.Random) -> None:
    path = folder / CONFIG_FILE
    document = json.loads(path.read_text())
    weird = [200000, 1024, 1025, 0, -1, "8", 8.5, True, None, [], {}, 9, 7, 2**63, float("inf")]
    if kind == "json-config":
        key = rng.choice(["N", "M", "arch", "entropy_params", "unknown"])
        document["config"][key] = rng.choice(weird + ["scale-hyperprior", "mean-scale-hyperprior", "float", "x"])
    elif kind == "json-keys":
        key = rng.choice(["config", "model_id", "format", "format_version", "card", PRIOR_KEY])
        operation = rng.choice(["delete", "list", "weird"])
        if operation == "delete":
            document.pop(key, None)
        else:
            document[key] = [] if operation == "list" else rng.choice(weird + ["", "0" * 32, "G" * 32])
    elif kind == "json-plan" and PRIOR_KEY in document:
        plan = document[PRIOR_KEY]["plan"]
        operation = rng.choice(["field", "field", "field", "drop-layer", "not-a-list", "bound"])
        if operation == "field":
            layer = rng.choice(plan)
            key = rng.choice(["in_bits", "weight_bits", "out_bits", "acc_bound", "transposed", "slope_q"])
            layer[key] = rng.choice([10**6, -5, 2**60, 2**53, float("inf"), float("nan"), "20", None, True, 0, 44, 1.5])
        elif operation == "drop-layer":
            plan.pop(rng.randrange(len(plan)))
        elif operation == "not-a-list":
            document[PRIOR_KEY]["plan"] = rng.choice([{}, "plan", 3, None])
        else:
            layer = rng.choice(plan)
            layer["acc_bound"] = int(layer["acc_bound"]) + rng.choice([-1, 1, -(2**20)])
    elif kind == "json-syntax":
        text = json.dumps(document)
        operation = rng.choice(["truncate", "bytes", "nesting", "not-object"])
        if operation == "truncate":
            path.write_text(text[: rng.randrange(len(text))])
        elif operation == "bytes":
            path.write_bytes(text.encode()[:50] + b"\xff\xfe\x80" + text.encode()[50:])
        elif operation == "nesting":
            path.write_text("[" * 100000 + "]" * 100000)
        else:
            path.write_text(rng.choice(["[]", "3", "null", '"x"']))
        return
    path.write_text(json.dumps(document))


KINDS = {**{kind: _mutate_tensors for kind in TENSOR_MUTATIONS},
         **{kind: _mutate_file for kind in ("file-truncate", "file-flip", "file-append", "file-header")},
         **{kind: _mutate_json for kind in ("json-config", "json-keys", "json-plan", "json-syntax")}}
#: Weights of the kinds: tables and weights most, since they reach native code and arithmetic.
WEIGHTS = {"cdf-entries": 4, "cdf-length": 3, "offset": 2, "cdf-rows": 3, "table-shape": 2, "scale-table": 2,
           "param-values": 2, "param-noise": 4, "dtype": 1, "shape": 1, "tensor-set": 1, "constant": 1,
           "file-truncate": 1, "file-flip": 2, "file-append": 1, "file-header": 2, "json-config": 2,
           "json-keys": 1, "json-plan": 3, "json-syntax": 1}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for arch in ARCHS:
        torch.manual_seed(1)
        model = build_model(CodecConfig(arch=arch, N=8, M=8))
        with torch.no_grad():  # latents of several integer values (see conftest's LATENT_GAIN)
            model.g_a[-1].weight.mul_(20.0)
            model.h_a[-1].weight.mul_(20.0)
        folders[arch] = tmp_path_factory.mktemp(f"fuzz-{arch}")
        export_codec(model, folders[arch], card={"note": "codec-folder fuzz original"})
    return folders


def test_codec_folder_fuzz(originals, tmp_path):
    rng = random.Random(SEED)
    kinds = list(WEIGHTS)
    outcomes, by_kind, bad = Counter(), Counter(), []
    before, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    child = Child(tmp_path / "loader-stderr.log")
    started = time.monotonic()
    try:
        assert child.ask(originals[ARCHS[0]])["outcome"] == "round-trip"  # the originals are sound
        assert child.ask(originals[ARCHS[1]])["outcome"] == "round-trip"
        for index in range(CASES):
            kind = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
            folder = tmp_path / "case"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(originals[rng.choice(ARCHS)], folder)
            KINDS[kind](folder, kind, rng)
            answer = child.ask(folder)
            outcome = answer["outcome"]
            outcomes[outcome] += 1
            by_kind[kind, outcome] += 1
            if outcome in ("signal", "died", "hang"):
                child.close()
                child = Child(tmp_path / "loader-stderr.log")
            if outcome not in ("round-trip", "refused", "encode-refused"):
                bad.append((index, kind, answer))
    finally:
        child.close()
    seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    after = resource.getrusage(resource.RUSAGE_SELF)
    mutating = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
    print(f"\ncodec-folder fuzz: {CASES} mutations in {seconds:.0f} s ({cpu:.0f} s CPU in the loaders, {mutating:.0f} s "
          "mutating): " + ", ".join(
        f"{outcome} {count}" for outcome, count in sorted(outcomes.items())))
    for kind in kinds:
        counts = {outcome: count for (k, outcome), count in by_kind.items() if k == kind}
        print(f"  {kind:14s} " + ", ".join(f"{outcome} {count}" for outcome, count in sorted(counts.items())))
    assert not bad, f"{len(bad)} cases neither round-tripped nor were refused specifically: {bad[:5]}"
    assert outcomes["signal"] == outcomes["hang"] == 0
    assert outcomes["round-trip"] >= 20 and outcomes["refused"] >= 200, outcomes  # both paths exercised
