"""Codec checkpoints: safetensors weights plus a JSON card, never pickle.

A codec directory holds ``codec.json`` (format, architecture config, model id, and whatever the producer
recorded: training recipe, data, metrics) and ``model.safetensors`` (every parameter and buffer, the
entropy-coder tables included, refreshed by ``update(force=True)`` before export).

The model id is the first 16 bytes of a SHA-256 over the canonical config and every tensor (name, dtype,
shape, bytes). It travels in every bitstream, so a stream is never decoded by weights other than the ones
that wrote it, and it is re-checked on load, so edited weights are caught.

The config includes ``entropy_params`` (integer or float arithmetic for the prior), which is chosen when
loading: every codec loads in integer mode unless asked for float. The stored id is verified against the
config as written; the returned card then carries the id of the mode actually loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentzip.codecs.bitstream import MODEL_ID_BYTES
from latentzip.codecs.hyperprior import CodecConfig, ScaleHyperprior, build_model
from latentzip.codecs.integer_prior import FixedPointOverflowError

CONFIG_FILE = "codec.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "latentzip-codec"
FORMAT_VERSION = 1
#: The arithmetic every codec loads with unless told otherwise (see docs/determinism.md).
DEFAULT_ENTROPY_PARAMS = "integer"


class CheckpointError(ValueError):
    """A codec directory is missing, of an unknown format, or its weights do not match its model id."""


def model_id(config: CodecConfig, state: dict[str, torch.Tensor]) -> bytes:
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.digest()[:MODEL_ID_BYTES]


def export_codec(model: ScaleHyperprior, directory: str | Path, card: dict | None = None) -> bytes:
    """Refresh the entropy-coder tables and write a loadable codec directory. Returns the model id."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    model.update(force=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    mid = model_id(model.config, state)
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"model_id": mid.hex()})
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": mid.hex(),
        "config": model.config.to_dict(),
        "card": card or {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return mid


def read_card(directory: str | Path) -> dict:
    """The parsed ``codec.json`` of a codec directory, validated."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a codec directory (no {CONFIG_FILE})")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a latentzip codec card")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has codec format version {document.get('format_version')}; this latentzip reads {FORMAT_VERSION}"
        )
    return document


def load_model(directory: str | Path, entropy_params: str | None = None) -> tuple[ScaleHyperprior, dict]:
    """Load a codec directory written by :func:`export_codec`. Returns ``(model in eval mode, card)``.

    ``entropy_params``: ``"integer"`` (default) or ``"float"``; the card returned has that mode's config
    and model id.
    """
    directory = Path(directory)
    document = read_card(directory)
    config = CodecConfig.from_dict(document["config"])
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    state = load_file(str(weights))
    if model_id(config, state).hex() != document["model_id"]:
        raise CheckpointError(f"weights in {weights} do not match model id {document['model_id']}")
    model = build_model(config)
    model.load_state_dict(state)
    try:
        return switch_entropy_params(model.eval(), document, entropy_params or DEFAULT_ENTROPY_PARAMS)
    except FixedPointOverflowError as exc:
        raise CheckpointError(f"{directory}: the prior cannot be computed in exact integers: {exc}") from exc


def switch_entropy_params(model: ScaleHyperprior, card: dict, entropy_params: str) -> tuple[ScaleHyperprior, dict]:
    """The same weights with ``entropy_params`` set: a new model (or ``model`` itself if already in that
    mode) and a copy of ``card`` with that mode's config and model id. Integer mode derives its fixed-point
    prior here, so a model that cannot have one is refused now rather than at the first image."""
    config = dataclasses.replace(model.config, entropy_params=entropy_params)
    if config != model.config:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        switched = build_model(config)
        switched.load_state_dict(state)
        model = switched.to(next(model.parameters()).device).eval()
        card = {**card, "config": config.to_dict(), "model_id": model_id(config, state).hex()}
    if config.entropy_params == "integer":
        model.integer_prior()
    return model, card
