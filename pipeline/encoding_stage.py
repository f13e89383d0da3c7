"""The encode job's Ray Data stage: an actor that loads the model once and turns a unit of work (a shard's
rows, or a group of an image folder's files) into one row per image: its bitstream, or why it has none.
The driver and the archive writer are in pipeline/encoding.py."""

from __future__ import annotations

import io
import json
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from latentzip.codecs.images import UnsupportedImageError, load_image
from latentzip.codecs.registry import load_codec
from latentzip.pipeline import storage
from latentzip.pipeline.inputs import DEFAULT_MAX_FILE_BYTES, read_input
from PIL import Image


PRECISIONS = ("fp32", "bf16")


def fast_analysis(model: torch.nn.Module) -> None:
    """Run the model's analysis transform ``g_a`` channels-last under bf16 autocast (float32 out).

    Only ``g_a``: the entropy parameters (``h_s`` from the z symbols) stay exact integer arithmetic, so
    streams still decode anywhere; bf16 only moves ``y`` slightly, i.e. which symbols are coded (a small
    RD change, measured by ``latentzip bench encode``). The weights are unchanged (same model id).
    """
    g_a = model.g_a.to(memory_format=torch.channels_last)
    plain = type(g_a).forward

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            y = plain(self, x.contiguous(memory_format=torch.channels_last))
        return y.float().contiguous()

    g_a.forward = types.MethodType(forward, g_a)


def _rows(unit: str, start: int, out: dict[str, list]) -> dict[str, np.ndarray]:
    """One chunk's result rows as a Ray Data batch: rows ``start``… of ``unit``."""
    dtypes = {"row": np.int64, "height": np.int64, "width": np.int64}
    columns = {"unit": [unit] * len(out["id"]), "row": list(range(start, start + len(out["id"]))), **out}
    return {name: np.array(values, dtype=dtypes.get(name, object)) for name, values in columns.items()}


class EncodeStage:
    """Ray Data callable class: a batch of units -> one row per image of those units.

    A unit is a shard (``{"unit": [path]}``) or a group of files (``{"unit": [name], "folder": [folder],
    "files": [ids joined by NUL], "refused": [JSON of id -> why it is not read]}``; "refused" optional). Runs without Ray too: ``EncodeStage(model)({"unit": np.array([path])})``,
    or ``encode_rows`` on bytes.
    """

    def __init__(self, model_ref: str, device: str = "cpu", max_batch: int = 16, threads: int | None = None,
                 precision: str = "fp32", refine_steps: int = 0, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 follow_symlinks: bool = False, model_id: str | None = None):
        self.refine_steps = refine_steps
        self.max_file_bytes, self.follow_symlinks = max_file_bytes, follow_symlinks
        if threads:
            torch.set_num_threads(threads)
        self.codec = load_codec(model_ref, device=device, max_batch=max_batch)
        if model_id is not None and self.codec.card["model_id"] != model_id:
            # The driver took the archive's model id from codec.json; these weights are another model's.
            raise ValueError(f"{model_ref} loads as model {self.codec.card['model_id']}, but its codec.json "
                             f"says {model_id}: the card does not match the weights (re-export the codec)")
        if precision == "bf16":
            fast_analysis(self.codec.model)
        self.readers = ThreadPoolExecutor(max_workers=max(1, threads or 1))
        self.chunk = max(1, max_batch)

    def __call__(self, batch: dict[str, np.ndarray]):
        """Yields the rows of each unit a chunk of ``max_batch`` images at a time, so the driver sees (and
        counts) images as they are encoded, not only when a whole unit is done."""
        for u, unit in enumerate(batch["unit"]):
            if "files" in batch:
                ids = str(batch["files"][u]).split("\0")
                folder = str(batch["folder"][u])
                refused = json.loads(str(batch["refused"][u])) if "refused" in batch else {}
                for start in range(0, len(ids), self.chunk):
                    chunk = ids[start:start + self.chunk]
                    read = list(self.readers.map(self._read_file, [folder] * len(chunk), chunk,
                                                 [refused.get(item_id, "") for item_id in chunk]))
                    out = self.encode_rows(chunk, [data for data, _ in read], [error for _, error in read])
                    yield _rows(str(unit), start, out)
            else:
                table = storage.read_table(str(unit), columns=["id", "image"])
                ids, images = table.column("id").to_pylist(), table.column("image")
                for start in range(0, len(ids), self.chunk):
                    out = self.encode_rows(ids[start:start + self.chunk],
                                           images.slice(start, self.chunk).to_pylist())
                    yield _rows(str(unit), start, out)

    def encode_rows(self, ids: list[str], blobs: list[bytes], read_errors: list[str] | None = None) -> dict[str, list]:
        """Decode (in parallel threads) and encode; per row: id, data, height, width, mode, error.
        ``read_errors``: per row, why its bytes could not be read ("" if they were)."""
        opened = [(None, "", error) if error else None for error in read_errors or [""] * len(blobs)]
        todo = [i for i, entry in enumerate(opened) if entry is None]
        for i, entry in zip(todo, self.readers.map(_open, [blobs[i] for i in todo])):
            opened[i] = entry
        errors = [error for _, _, error in opened]
        good = [i for i, (image, _, _) in enumerate(opened) if image is not None]
        streams = [b""] * len(ids)
        for i, data in zip(good, self._encode([opened[i][0] for i in good], good, errors)):
            streams[i] = data or b""
        return {
            "id": list(ids),
            "data": streams,
            "height": [image.height if image else 0 for image, _, _ in opened],
            "width": [image.width if image else 0 for image, _, _ in opened],
            "mode": [mode for _, mode, _ in opened],
            "error": errors,
        }

    def _encode(self, images, positions, errors):
        try:
            return self.codec.encode_batch(images, refine_steps=self.refine_steps)  # dense batches by padded size
        except Exception:  # noqa: BLE001 - retry one by one so one bad image cannot sink its batch
            out = []
            for image, position in zip(images, positions):
                try:
                    out.append(self.codec.encode(image, refine_steps=self.refine_steps))
                except Exception as exc:  # noqa: BLE001
                    errors[position] = f"encode failed: {type(exc).__name__}: {exc}"
                    out.append(None)
            return out

    def _read_file(self, folder: str, item_id: str, refused: str = "") -> tuple[bytes, str]:
        """(bytes, "") or (b"", why not): the input policy of pipeline/inputs.py, a per-file failure."""
        if refused:
            return b"", f"unreadable file: {refused}"
        try:
            return read_input(folder, item_id, self.max_file_bytes, self.follow_symlinks), ""
        except OSError as exc:  # vanished, unreadable, not a regular file, too large: a per-file failure
            return b"", f"unreadable file: {type(exc).__name__}: {exc}"


def _open(data: bytes) -> tuple[Image.Image | None, str, str]:
    """(8-bit RGB image or None, original mode, error)."""
    try:
        if not data:
            raise UnsupportedImageError("empty file")
        image = load_image(bytes(data))
        with Image.open(io.BytesIO(data)) as probe:
            return image, probe.mode, ""
    except UnsupportedImageError as exc:
        return None, "", str(exc)
    except Exception as exc:  # noqa: BLE001 - Pillow's probe raises more than load_image's guard
        return None, "", f"not a readable image: {type(exc).__name__}: {exc}"
