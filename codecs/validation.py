"""What a codec folder must satisfy before its tensors reach a model or the range coder.

Codec folders travel (zoo copies, buckets, other teams) and can be damaged or crafted; the model id only
proves that ``codec.json`` and ``model.safetensors`` agree with each other, and a crafted folder recomputes
it. So :func:`read_weights` checks, in this order, each before anything costs memory or reaches native code:

1. the config's values: channel widths within ``1..MAX_CHANNELS`` (N=200000 would allocate terabytes);
2. the safetensors header (no tensor read; a truncated or unparsable file is refused here): the first and
   last analysis layers must show the config's N and M, so that building the model allocates no more
   than the file holds; then, against the state of a model built for the config, every tensor present,
   none extra, right dtype and shape; the entropy-coder tables, whose sizes depend on training, of the
   right rank, one row per channel or scale, rows within the coder's limits;
3. after reading the tensors: every float finite, the constants of the layers (GDN's reparametrisation
   bounds, the entropy models' bounds and targets) equal to what the architecture defines, the scale table
   positive and increasing, and every CDF table what the C++ coder requires
   (:func:`~latentzip.codecs.entropy_coding.check_tables`).

Anything else raises :class:`~latentzip.codecs.card.CheckpointError` naming the file and the tensor.

A ``gaussian-vae`` folder (codecs/gaussian_vae.py) is checked against its own architecture: the config's
values within :data:`~latentzip.codecs.gaussian_vae.LIMITS` before any model is built (a model within them
holds at most a few tens of MB), then every tensor of a model built for the config present, none extra, of
the right dtype and shape, and every value finite. It has no coder tables.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentzip.codecs.card import CheckpointError
from latentzip.codecs.entropy_coding import PRECISION, check_tables
from latentzip.codecs.gaussian_vae import ARCH as VAE_ARCH
from latentzip.codecs.gaussian_vae import LIMITS as VAE_LIMITS
from latentzip.codecs.gaussian_vae import GaussianVAE, GaussianVAEConfig
from latentzip.codecs.hyperprior import CodecConfig, ScaleHyperprior, build_model

#: Widest hidden or latent layer a codec folder may declare (published hyperpriors use at most 320; a
#: model of N = M = 1024 holds about 1.2 GB of float32 weights).
MAX_CHANNELS = 1024
#: Tensors whose shapes show N and M, checked before a model is built: (name, shape of N and M).
_WIDTH_TENSORS = (("g_a.0.weight", lambda N, M: (N, 3, 5, 5)), ("g_a.6.weight", lambda N, M: (M, N, 5, 5)))
#: Most entries of a Gaussian conditional's scale table (CompressAI's default has 64).
MAX_SCALES = 4096
#: Longest CDF row: a table of ``2**PRECISION`` total frequency has at most that many symbols, plus one.
MAX_CDF_WIDTH = 2**PRECISION + 1
#: The entropy models whose coder tables are sized by training rather than by the config.
ENTROPY_MODELS = ("entropy_bottleneck", "gaussian_conditional")
TABLES = ("_quantized_cdf", "_cdf_length", "_offset")
#: safetensors dtype names of the torch dtypes a codec holds.
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int32: "I32", torch.int64: "I64", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def check_config(data, where: str) -> CodecConfig:
    """The :class:`CodecConfig` of a card's ``config``, refused unless every value is of the right type and
    within bounds (checked before any model of it is built)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: config must be a JSON object, got {type(data).__name__}")
    if data.get("arch") == VAE_ARCH:
        return check_vae_config(data, where)
    for key in ("N", "M"):
        value = data.get(key, getattr(CodecConfig, key))
        if type(value) is not int:
            raise CheckpointError(f"{where}: config {key} must be an integer, got {value!r:.40}")
        if not 1 <= value <= MAX_CHANNELS:
            raise CheckpointError(f"{where}: config {key}={value} is outside 1..{MAX_CHANNELS} channels")
    for key in ("arch", "entropy_params"):
        if key in data and not isinstance(data[key], str):
            raise CheckpointError(f"{where}: config {key} must be a string, got {data[key]!r:.40}")
    try:
        return CodecConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from exc


def check_vae_config(data: dict, where: str) -> GaussianVAEConfig:
    """The :class:`GaussianVAEConfig` of a card's ``config``, every number an integer within its bounds."""
    for key, (low, high) in VAE_LIMITS.items():
        value = data.get(key, getattr(GaussianVAEConfig, key))
        if type(value) is not int:
            raise CheckpointError(f"{where}: config {key} must be an integer, got {value!r:.40}")
        if not low <= value <= high:
            raise CheckpointError(f"{where}: config {key}={value} is outside {low}..{high}")
    for key in ("decoder", "prior"):
        if not isinstance(data.get(key, getattr(GaussianVAEConfig, key)), str):
            raise CheckpointError(f"{where}: config {key} must be a string, got {data[key]!r:.40}")
    try:
        return GaussianVAEConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from exc


def read_vae_weights(weights: Path, config: GaussianVAEConfig) -> tuple[GaussianVAE, dict[str, torch.Tensor]]:
    """A fresh :class:`GaussianVAE` of ``config`` (bounded by :func:`check_vae_config`) and the tensors of
    ``weights``: the header compared with the model's state before any tensor is read, then every value
    finite."""
    from safetensors.torch import load_file

    header = read_header(weights)
    model = GaussianVAE(config)
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:5])}"] if extra else [])
        raise CheckpointError(f"{weights} does not hold the tensors of {config.arch} {_describe(config)}: "
                              + "; ".join(parts))
    for name in sorted(expected):
        dtype, shape = _DTYPES.get(expected[name].dtype), tuple(expected[name].shape)
        if header[name] != (dtype, shape):
            raise CheckpointError(f"{weights}: {name} is {header[name][0]} {header[name][1]}; {config.arch} "
                                  f"{_describe(config)} needs {dtype} {shape}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - as in read_header
        raise CheckpointError(f"{weights} is not a readable safetensors file: {type(exc).__name__}: {exc}") from exc
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{weights}: {name} holds values that are not finite")
    return model, state


def _describe(config: GaussianVAEConfig) -> str:
    return (f"latent_dims={config.latent_dims} width={config.width} hidden={config.hidden} "
            f"image_size={config.image_size} channels={config.channels} decoder={config.decoder}"
            + (f" prior={config.prior} prior_hidden={config.prior_hidden}" if config.prior != "normal" else ""))


def _is_table(name: str) -> bool:
    module, _, buffer = name.rpartition(".")
    return module in ENTROPY_MODELS and (buffer in TABLES or (module == "gaussian_conditional" and buffer == "scale_table"))


def _table_shape(name: str, shape: tuple[int, ...], config: CodecConfig, rows: dict[str, int]) -> str | None:
    """Why a coder table's shape cannot be right for ``config`` (None if it can). ``rows``: the row count
    each entropy model's tables must share, filled in as they are seen."""
    module, _, buffer = name.rpartition(".")
    if buffer == "_quantized_cdf":
        if len(shape) != 2:
            return f"has shape {shape}; a CDF table is (rows, width)"
        if not 2 <= shape[1] <= MAX_CDF_WIDTH:
            return f"has rows of {shape[1]} entries, outside 2..{MAX_CDF_WIDTH}"
    elif len(shape) != 1:
        return f"has shape {shape}; expected one value per table row"
    count = shape[0]
    if module == "entropy_bottleneck" and count != config.N:
        return f"has {count} rows; the entropy bottleneck has N={config.N} channels"
    if module == "gaussian_conditional" and not 1 <= count <= MAX_SCALES:
        return f"has {count} rows, outside 1..{MAX_SCALES} scales"
    if rows.setdefault(module, count) != count:
        return f"has {count} rows; the other tables of {module} have {rows[module]}"
    return None


def read_header(weights: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype name, shape) of every tensor in ``weights``, without reading any."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {name: (handle.get_slice(name).get_dtype(), tuple(handle.get_slice(name).get_shape()))
                    for name in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types (truncated, bad JSON, ...)
        raise CheckpointError(f"{weights} is not a readable safetensors file: {type(exc).__name__}: {exc}") from exc


def check_widths(weights: Path, header: dict, config: CodecConfig) -> None:
    """The header's analysis layers must have the config's N and M: then the model built for the config
    is no larger than what the file holds."""
    for name, shape_of in _WIDTH_TENSORS:
        expected = shape_of(config.N, config.M)
        if name not in header:
            raise CheckpointError(f"{weights} does not hold the tensors of a codec: missing {name}")
        if header[name][1] != expected:
            raise CheckpointError(f"{weights}: {name} has shape {header[name][1]}; codec.json's config "
                                  f"(N={config.N}, M={config.M}) needs {expected}")


def check_header(weights: Path, header: dict, config: CodecConfig, expected: dict[str, torch.Tensor]) -> None:
    """Compare the header of ``weights`` (names, dtypes, shapes) with ``expected``, the state of a model
    built for ``config``."""
    missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"] if extra else [])
        raise CheckpointError(f"{weights} does not hold the tensors of {config.arch} N={config.N} M={config.M}: "
                              + "; ".join(parts))
    rows: dict[str, int] = {}
    for name in sorted(expected):
        dtype, shape = expected[name].dtype, tuple(expected[name].shape)
        stored_dtype, stored_shape = header[name]
        if stored_dtype != _DTYPES.get(dtype):
            raise CheckpointError(f"{weights}: {name} is {stored_dtype}; expected {_DTYPES.get(dtype, dtype)}")
        problem = _table_shape(name, stored_shape, config, rows) if _is_table(name) else (
            None if stored_shape == shape else f"has shape {stored_shape}; {config.arch} N={config.N} "
                                               f"M={config.M} needs {shape}")
        if problem:
            raise CheckpointError(f"{weights}: {name} {problem}")


def check_values(weights: Path, config: CodecConfig, state: dict[str, torch.Tensor]) -> None:
    """The values of a state whose header passed :func:`check_header`: finite floats, the architecture's
    constants, a usable scale table and coder tables."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{weights}: {name} holds values that are not finite")
    reference = _constants(config.arch)
    for name, value in reference.items():
        if not torch.equal(state[name], value):
            raise CheckpointError(f"{weights}: {name} is a constant of the architecture and was changed")
    scales = state["gaussian_conditional.scale_table"]
    if bool((scales <= 0).any()) or bool((scales[1:] <= scales[:-1]).any()):
        raise CheckpointError(f"{weights}: gaussian_conditional.scale_table must be positive and increasing")
    for module in ENTROPY_MODELS:
        problem = check_tables(*(state[f"{module}.{buffer}"] for buffer in TABLES))
        if problem:
            raise CheckpointError(f"{weights}: {module} coder tables: {problem}")


_CONSTANTS: dict[str, dict[str, torch.Tensor]] = {}


def _constants(arch: str) -> dict[str, torch.Tensor]:
    """Buffers that the architecture fixes (GDN's reparametrisation bounds and pedestals, the entropy
    models' lower bounds and targets): name -> value, from a real model. Their shapes do not depend on N
    or M, so a small model gives the values of every size."""
    if arch not in _CONSTANTS:
        model = build_model(CodecConfig(arch=arch, N=2, M=2))
        parameters = {name for name, _ in model.named_parameters()}
        _CONSTANTS[arch] = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
                            if name not in parameters and not _is_table(name)}
    return _CONSTANTS[arch]


def read_weights(weights: Path, config: CodecConfig) -> tuple[ScaleHyperprior, dict[str, torch.Tensor]]:
    """A fresh model of ``config`` and the tensors of ``weights``, checked for it (see the module
    docstring); the caller loads them (after checking the model id)."""
    from safetensors.torch import load_file

    if isinstance(config, GaussianVAEConfig):
        return read_vae_weights(weights, config)
    header = read_header(weights)
    check_widths(weights, header, config)
    model = build_model(config)
    check_header(weights, header, config, model.state_dict())
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - as in read_header
        raise CheckpointError(f"{weights} is not a readable safetensors file: {type(exc).__name__}: {exc}") from exc
    check_values(weights, config, state)
    return model, state
