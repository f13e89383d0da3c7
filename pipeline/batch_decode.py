"""Several archived ids decoded together, each with its own result: what the image service
(``pipeline/serving.py``) and the training-data readers (``pipeline/archive_data.py``,
``pipeline/archive_ray_data.py``) share.

The streams go to the codec in one call (:meth:`~latentzip.codecs.learned.LearnedCodec.decode_batch`,
which groups them by latent shape and runs one ``decompress`` per group), so a batch of same-sized images
is entropy-decoded and its hyper-synthesis run as one batch. Pixels do not depend on the batch (the codec's
integer prior and per-image synthesis, docs/determinism.md): an id decodes to exactly what
:func:`~latentzip.pipeline.decoding.decode_image` gives, so its PNG is the byte string ``latentzip decode
--id`` writes. When the batch call fails, each id is decoded alone so that the failure lands on the id it
belongs to and the others still decode.
"""

from __future__ import annotations

from latentzip.codecs.images import to_tensor
from latentzip.pipeline.archive import Item, id_bytes, item_checksum
from latentzip.pipeline.decoding import DecodeError, archive_codec, png_bytes

OUTPUTS = ("image", "tensor", "latents")


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return output


def etag(archive, item: Item) -> str:
    """A strong HTTP entity tag for an item's decoded image: its stored CRC-32C (format 3 binds the id
    too) and the archive's model id, which together fix the decoded pixels."""
    crc = item_checksum(archive.version, id_bytes(item.id), item.data)
    return f'"{archive.model_id[:16]}-{crc:08x}"'


def read_items(archive, ids: list[str]) -> list[Item | Exception]:
    """Each id's stored item (checksum verified), or the error naming it (ItemNotFoundError, ItemCorruptError)."""
    out: list[Item | Exception] = []
    for item_id in ids:
        try:
            out.append(archive.item(item_id))
        except Exception as exc:  # noqa: BLE001 - per id, reported to whoever asked for that id
            out.append(exc)
    return out


def decode_items(archive, items: list[Item], output: str = "image") -> list:
    """Each item decoded: a PIL image (``image``), a float32 tensor (3, H, W) in [0, 1] of those very pixels
    (``tensor``), or ``y_hat`` (``latents``: float32 (M, h, w), no synthesis); or a :class:`DecodeError`
    (a :class:`~latentzip.pipeline.decoding.ModelUnavailableError` when the model cannot be loaded) naming
    the item."""
    check_output(output)
    if not items:
        return []
    try:
        codec = archive_codec(archive, items[0].id, f"{len(items)} ids (first {items[0].id!r})")
    except DecodeError as exc:
        return [exc] * len(items)
    try:
        return [_checked(archive, item, value, output) for item, value in zip(items, _decode(codec, items, output))]
    except Exception:  # noqa: BLE001 - find the id(s) at fault: each alone
        pass
    out = []
    for item in items:
        try:
            out.append(_checked(archive, item, _decode(codec, [item], output)[0], output))
        except DecodeError as exc:
            out.append(exc)
        except Exception as exc:  # noqa: BLE001
            out.append(DecodeError(item.id, f"cannot decode {item.id!r} from {archive.path}: "
                                            f"{type(exc).__name__}: {exc}"))
    return out


def decode_pngs(archive, items: list[Item]) -> list[bytes | Exception]:
    """Each item as the PNG bytes ``latentzip decode --id`` writes for it, or the error naming it."""
    return [value if isinstance(value, Exception) else png_bytes(value)
            for value in decode_items(archive, items, "image")]


def _decode(codec, items: list[Item], output: str) -> list:
    streams = [item.data for item in items]
    return codec.decode_latents(streams) if output == "latents" else codec.decode_batch(streams)


def _checked(archive, item: Item, value, output: str):
    if output == "latents":
        return value
    if value.size != (item.width, item.height):  # as decode_image checks
        raise DecodeError(item.id, f"{item.id!r} in {archive.path} decodes to {value.size[0]}x{value.size[1]}, "
                                   f"the archive records {item.width}x{item.height}")
    return to_tensor(value) if output == "tensor" else value
