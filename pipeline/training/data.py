"""Training data: which images (pipeline/sources.py decides), each worker's share decoded into memory once,
and random patches from them: a random downscale in ``[min_scale, 1]``, a random ``patch_size`` crop, a
random horizontal flip."""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latentzip.codecs.images import UnsupportedImageError, load_image
from latentzip.pipeline import sources, storage
from latentzip.pipeline.inputs import DEFAULT_MAX_FILE_BYTES, InputFileError, read_file, resolve_input


@dataclass(frozen=True)
class ImageSource:
    """Where images come from: ``kind`` is ``"files"`` (image paths) or ``"parquet"`` (shard paths)."""

    kind: str
    paths: tuple[str, ...]
    count: int
    location: str


def resolve_data(data, follow_symlinks: bool = False) -> ImageSource:
    """Sniff ``data`` (paths or URLs): a folder with ``*.parquet`` or Parquet files -> shards; else a folder
    of images. A list: several such folders (all images, or all shards), or a list of shard files."""
    if isinstance(data, (list, tuple)) and len(data) == 1:
        data = data[0]
    if isinstance(data, (list, tuple)) and all(storage.is_dir(storage.absolute(p)) for p in data):
        parts = [resolve_data(p, follow_symlinks) for p in data]
        kinds = {part.kind for part in parts}
        if len(kinds) > 1:
            raise ValueError("training data mixes image folders and Parquet shards; give one kind")
        paths = tuple(path for part in parts for path in part.paths)
        return ImageSource(kinds.pop(), paths, sum(part.count for part in parts),
                           ", ".join(part.location for part in parts))
    if isinstance(data, (list, tuple)):
        paths = [storage.absolute(p) for p in data]
        location = ", ".join(map(str, paths))
    else:
        source = sources.resolve(storage.absolute(data), "training data")
        location = source.location
        if source.kind == "images":
            files = _image_files(source, follow_symlinks)
            if not files:
                raise FileNotFoundError(f"no images in {location}")
            return ImageSource("files", tuple(map(str, files)), len(files), str(location))
        paths = source.shards
    count = sum(storage.parquet_file(p).metadata.num_rows for p in paths)
    if count == 0:
        raise FileNotFoundError(f"no images in {location}")
    return ImageSource("parquet", tuple(map(str, paths)), count, str(location))


def _image_files(source: sources.Source, follow_symlinks: bool = False) -> list:
    """The image entries of a folder (pipeline/sources.py) that the input policy reads (pipeline/inputs.py:
    regular files, links only within the folder unless ``follow_symlinks``); the others are named and
    skipped. Local files are given by their real paths, so workers read what was checked here."""
    location, files, skipped = source.location, [], source.refused
    if storage.is_url(location) or storage.is_file(location):
        return [source.path(name) for name in source.ids]
    for name in source.ids:
        try:
            path = resolve_input(location, name, follow_symlinks)
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                raise InputFileError("not a regular file")
            files.append(path)
        except OSError as exc:
            skipped.append((name, str(exc)))
    for name, reason in skipped[:10]:
        _say(f"train: skipping {name}: {reason}")
    if len(skipped) > 10:
        _say(f"train: skipping {len(skipped) - 10} more files")
    return files


def check_readable(source: ImageSource, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
    """Raise a ValueError naming the first problems unless at least one image of ``source`` decodes: in
    the driver, before Ray starts, so that data of only unreadable files is a clear error (usually the
    first image decodes and this costs one image)."""
    reasons = []
    for data in _encoded_images(source, set(range(source.count)), max_file_bytes):
        try:
            if isinstance(data, OSError):
                raise data
            load_image(data)
            return
        except (UnsupportedImageError, OSError) as exc:
            reasons.append(str(exc))
    shown = "; ".join(dict.fromkeys(reasons[:50]))
    raise ValueError(f"none of the {source.count} images in {source.location} can be read ({shown:.300})")


def _say(line: str) -> None:
    # Not print(): in a Train V2 worker print() both logs and echoes, so every line came out twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _share(count: int, rank: int, world: int) -> list[int]:
    # With fewer images than workers, a worker reuses one image rather than training on nothing.
    return list(range(rank, count, world)) or [rank % count]


def _encoded_images(source: ImageSource, wanted: set[int], max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
    """Yield the encoded bytes of each wanted image, in order; Parquet rows are streamed, not all held. A
    file is read as the input policy says (pipeline/inputs.py): a regular file of at most
    ``max_file_bytes``; for one that is not read, the OSError saying why is yielded in its place."""
    if source.kind == "files":
        for i in sorted(wanted):
            try:
                yield (storage.read_bytes(source.paths[i]) if storage.is_url(source.paths[i])
                       else read_file(source.paths[i], max_file_bytes))
            except OSError as exc:
                yield exc
        return
    index = 0
    for path in source.paths:
        for batch in storage.parquet_file(path).iter_batches(columns=["image"], batch_size=64):
            for data in batch.column("image").to_pylist():
                if index in wanted:
                    yield data
                index += 1


def load_images(source: ImageSource, rank: int = 0, world: int = 1, max_side: int = 1024) -> list[torch.Tensor]:
    """This worker's share of the images as uint8 (3, H, W) tensors, the longer side at most ``max_side``."""
    images = []
    for data in _encoded_images(source, set(_share(source.count, rank, world))):
        try:
            if isinstance(data, OSError):
                raise data
            image = load_image(data)
        except (UnsupportedImageError, OSError) as exc:
            _say(f"train: skipping unreadable image: {exc}")
            continue
        if max(image.size) > max_side:
            factor = max_side / max(image.size)
            size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    if not images:
        raise ValueError(f"worker {rank} has no readable images from {source.location}")
    return images


class PatchSampler:
    """Random training patches: downscale by a factor in [min_scale, 1], square crop, horizontal flip."""

    def __init__(self, images: list[torch.Tensor], patch: int, min_scale: float, rng: np.random.Generator):
        self.images, self.patch, self.min_scale, self.rng = images, patch, min_scale, rng

    def batch(self, size: int) -> torch.Tensor:
        return torch.stack([self._one() for _ in range(size)])

    def _one(self) -> torch.Tensor:
        image = self.images[self.rng.integers(len(self.images))]
        _, height, width = image.shape
        # Cut a window of patch/scale pixels and resize it to the patch: cheaper than resizing the image.
        # Images smaller than that window give their largest square, which is then upscaled.
        side = min(height, width, max(1, round(self.patch / self.rng.uniform(self.min_scale, 1.0))))
        top, left = self.rng.integers(height - side + 1), self.rng.integers(width - side + 1)
        crop = image[None, :, top : top + side, left : left + side].float().div_(255.0)
        if side != self.patch:
            crop = F.interpolate(crop, size=(self.patch, self.patch), mode="bilinear", align_corners=False,
                                 antialias=side > self.patch).clamp_(0, 1)
        if self.rng.random() < 0.5:
            crop = crop.flip(-1)
        return crop[0]
