"""Codec checkpoints: safetensors weights plus a JSON card, never pickle.

A codec directory holds ``codec.json`` (format, architecture config, model id, and whatever the producer
recorded: training recipe, data, metrics) and ``model.safetensors`` (every parameter and buffer, the
entropy-coder tables included, refreshed by ``update(force=True)`` before export).

The model id is the first 16 bytes of a SHA-256 over the canonical config and every tensor (name, dtype,
shape, bytes). It travels in every bitstream, so a stream is never decoded by weights other than the ones
that wrote it, and it is re-checked on load, so edited weights are caught. A crafted folder can recompute
it, so loading also checks every value before a model or the range coder sees it (validation.py).

The config includes ``entropy_params`` (integer or float arithmetic for the prior), which is chosen when
loading: every codec loads in integer mode unless asked for float. The stored id is verified against the
config as written; the returned card then carries the id of the mode actually loaded.

Deriving the integer prior (``integer_prior.py``) searches fixed-point scales with exact bounds, seconds per
model; ``codec.json`` stores the result of that search under the integer-mode model id, so loading builds the
prior directly. A codec without it (or with one for other weights) is derived on load, as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from latentzip.codecs.bitstream import MODEL_ID_BYTES
from latentzip.codecs.card import (CONFIG_FILE, FORMAT, FORMAT_VERSION, PRIOR_KEY,  # noqa: F401 - re-exported
                                   WEIGHTS_FILE, CheckpointError, read_card)
from latentzip.codecs.gaussian_vae import GaussianVAE, GaussianVAEConfig
from latentzip.codecs.hyperprior import CodecConfig, ScaleHyperprior, build_model
from latentzip.codecs.integer_prior import FixedPointOverflowError
from latentzip.codecs.validation import check_config, read_weights

#: The arithmetic every codec loads with unless told otherwise (see docs/determinism.md).
DEFAULT_ENTROPY_PARAMS = "integer"


def model_id(config: CodecConfig, state: dict[str, torch.Tensor]) -> bytes:
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.digest()[:MODEL_ID_BYTES]


def integer_prior_entry(model: ScaleHyperprior, state: dict[str, torch.Tensor] | None = None) -> dict | None:
    """What ``codec.json`` stores of the integer prior: the plan of its derivation (its fixed-point scales
    and proven bounds, a few numbers per layer; the integers follow from the weights in milliseconds) under
    the integer-mode model id of these weights, so that a plan is only ever used with the weights it was
    derived from. None when the weights cannot have an integer prior."""
    if state is None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = dataclasses.replace(model.config, entropy_params="integer")
    fresh = build_model(config)  # derived afresh, never from a plan the model may have been loaded with
    fresh.load_state_dict(state)
    try:
        plan = fresh.integer_prior().plan()
    except FixedPointOverflowError:
        return None
    return {"model_id": model_id(config, state).hex(), "plan": plan}


def stored_plan(card: dict) -> list[dict] | None:
    """The stored integer-prior plan of ``card`` if it was derived from the weights ``card["model_id"]``
    names (in integer mode), else None: a stale plan is never used."""
    entry = card.get(PRIOR_KEY)
    if isinstance(entry, dict) and entry.get("model_id") == card.get("model_id"):
        return entry.get("plan")
    return None


def store_integer_prior(directory: str | Path) -> dict | None:
    """Derive a codec directory's integer prior afresh and (re)write its plan into ``codec.json`` (for codecs
    exported before plans were stored, or to refresh one). Returns the entry written, or None."""
    directory = Path(directory)
    document = read_card(directory)
    model, _ = load_model(directory, entropy_params="float")
    entry = integer_prior_entry(model)
    document.pop(PRIOR_KEY, None)
    if entry is not None:
        document[PRIOR_KEY] = entry
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return entry


def export_codec(model: ScaleHyperprior, directory: str | Path, card: dict | None = None) -> bytes:
    """Refresh the entropy-coder tables and write a loadable codec directory. Returns the model id.
    A :class:`~latentzip.codecs.gaussian_vae.GaussianVAE` (no entropy coder) is written the same way,
    without tables or integer prior."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    if isinstance(model, GaussianVAE):
        return _export_vae(model, directory, card)
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
    prior = integer_prior_entry(model, state)
    if prior is not None:
        document[PRIOR_KEY] = prior
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return mid


def check_weights(directory: str | Path) -> tuple[dict, CodecConfig | GaussianVAEConfig]:
    """The folder's card and checked config, raising :class:`CheckpointError` unless its weights pass every
    check :func:`load_model` makes of them (validation.py, and the model id) — without building the codec
    (no coder tables, no integer prior): for a job's driver, before Ray, which takes its card from
    ``codec.json``."""
    directory = Path(directory)
    document = read_card(directory)
    config = check_config(document["config"], str(directory / CONFIG_FILE))
    _checked_weights(directory, document, config)
    return document, config


def _checked_weights(directory: Path, document: dict, config):
    """The folder's weights read into a model of ``config`` (validation.py) and shown to be the ones its
    model id names: (model, state, weights path). Shared by the codec and the VAE loaders."""
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    model, state = read_weights(weights, config)
    if model_id(config, state).hex() != document["model_id"]:
        raise CheckpointError(f"weights in {weights} do not match model id {document['model_id']}")
    return model, state, weights


def load_model(directory: str | Path, entropy_params: str | None = None) -> tuple[ScaleHyperprior, dict]:
    """Load a codec directory written by :func:`export_codec`. Returns ``(model in eval mode, card)``.

    ``entropy_params``: ``"integer"`` (default) or ``"float"``; the card returned has that mode's config
    and model id. Every value of the folder is checked (validation.py) before it is used; a folder that
    fails raises :class:`CheckpointError` saying why.
    """
    directory = Path(directory)
    document = read_card(directory)
    config = check_config(document["config"], str(directory / CONFIG_FILE))
    if isinstance(config, GaussianVAEConfig):
        raise CheckpointError(f"{directory} holds a {config.arch}, a generative VAE with no entropy coder: it "
                              f"writes no bitstreams (it samples, interpolates and scores; see load_vae)")
    if entropy_params not in (None, "integer", "float"):
        raise ValueError(f"entropy_params must be 'integer' or 'float', got {entropy_params!r}")
    model, state, weights = _checked_weights(directory, document, config)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:  # what validation lets through should load; said if not
        raise CheckpointError(f"{weights} does not load into {config.arch}: {exc}") from exc
    try:
        return switch_entropy_params(model.eval(), document, entropy_params or DEFAULT_ENTROPY_PARAMS)
    except FixedPointOverflowError as exc:
        raise CheckpointError(f"{directory}: the prior cannot be computed in exact integers: {exc}") from exc
    except ValueError as exc:
        raise CheckpointError(f"{directory}: the prior cannot be built: {exc}") from exc


def _export_vae(model: GaussianVAE, directory: Path, card: dict | None) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    mid = model_id(model.config, state)
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"model_id": mid.hex()})
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_id": mid.hex(),
                "config": model.config.to_dict(), "card": card or {}}
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return mid


def load_vae(directory: str | Path) -> tuple[GaussianVAE, dict]:
    """Load a gaussian-vae folder written by :func:`export_codec`: ``(model in eval mode, card)``, every value
    checked first (validation.py), as for codecs."""
    directory = Path(directory)
    document = read_card(directory)
    config = check_config(document["config"], str(directory / CONFIG_FILE))
    if not isinstance(config, GaussianVAEConfig):
        raise CheckpointError(f"{directory} holds a {config.arch} codec, not a generative VAE")
    model, state, weights = _checked_weights(directory, document, config)
    model.load_state_dict(state)
    return model.eval(), document


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
        plan = stored_plan(card)
        try:
            model.integer_prior(plan)
        except ValueError:
            if plan is None:
                raise
            model.integer_prior()  # a plan that does not fit these modules: derive (and raise what that raises)
    return model, card
