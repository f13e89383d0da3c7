"""A codec directory's ``codec.json``: its file names and the validated card, without torch.

Reading a card is what ``latentzip zoo`` and the driver-side checks of a job need; loading the weights
(``checkpoint.py``) is what needs torch. Keeping the two apart keeps those commands fast.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "codec.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "latentzip-codec"
FORMAT_VERSION = 1
#: ``codec.json`` holds a config, a card and the integer prior's plan: kilobytes. Larger is refused unread.
MAX_CARD_BYTES = 16 * 2**20
#: The key of ``codec.json`` holding the integer prior's plan and the integer-mode model id
#: (``checkpoint.integer_prior_entry``).
PRIOR_KEY = "integer_prior"


def is_model_id(value) -> bool:
    """Whether ``value`` is a model id as a card writes it: 32 lower-case hex digits."""
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class CheckpointError(ValueError):
    """A codec directory is missing, of an unknown format, or its weights do not match its model id."""


def read_card(directory: str | Path) -> dict:
    """The parsed ``codec.json`` of a codec directory, validated: a JSON object of this format and version
    with a model id of 32 hex digits, a ``config`` object and, if present, a ``card`` object. The values
    of ``config`` are checked when weights are loaded (validation.py)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a codec directory (no {CONFIG_FILE})")
    if path.stat().st_size > MAX_CARD_BYTES:
        raise CheckpointError(f"{path} has {path.stat().st_size} bytes, more than a codec card's {MAX_CARD_BYTES}")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a latentzip codec card")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has codec format version {document.get('format_version')!r:.40}; this latentzip reads {FORMAT_VERSION}"
        )
    model_id = document.get("model_id")
    if not is_model_id(model_id):
        raise CheckpointError(f"{path}: model_id must be 32 lower-case hex digits, got {model_id!r:.40}")
    if not isinstance(document.get("config"), dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    if not isinstance(document.get("card", {}), dict):
        raise CheckpointError(f"{path}: card must be a JSON object")
    return document
