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


class CheckpointError(ValueError):
    """A codec directory is missing, of an unknown format, or its weights do not match its model id."""


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
