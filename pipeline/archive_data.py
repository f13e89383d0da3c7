"""Archives as PyTorch training data: images decoded on the fly from the archive, or their latents.

:class:`ArchiveDataset` is a map-style ``Dataset`` (index -> decoded id, the index over the archive's ids in
commit order or over ``ids``); :class:`IterableArchiveDataset` shards the ids by DDP rank and by
``DataLoader`` worker, shuffles them by ``seed + epoch`` and yields every id exactly once per epoch across
all ranks and workers (ranks may differ by one item). Both open the archive lazily, in the process that
reads (each ``DataLoader`` worker its own handle and model), and pickle without it, so ``num_workers > 0``
works, with local folders and object storage (``s3://``, ``memory://``: any fsspec URL the archive opens).

``output``: ``"tensor"`` (float32 (3, H, W) in [0, 1], exactly the pixels of
:func:`~latentzip.pipeline.decoding.decode_image`), ``"image"`` (that PIL image) or ``"latents"`` (the
decoder's ``y_hat``, float32 (M, H / 16, W / 16) of the padded image, without synthesis: for latent-space
models). The iterable variant decodes ``decode_batch`` ids per call of the codec (same-sized images share
one batch). A corrupt item or a missing model raises an error naming the id.
"""

from __future__ import annotations

import os
import random

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from latentzip.pipeline.batch_decode import check_output, decode_items, read_items


class _ArchiveSource:
    """What both datasets share: the path, the id list, and an archive opened once per process."""

    def __init__(self, path, ids=None, output: str = "tensor", transform=None, model: str | None = None,
                 return_ids: bool = False):
        from latentzip.pipeline.decoding import open_archive

        self.path = str(path)
        self.output = check_output(output)
        self.transform = transform
        self.model = model
        self.return_ids = return_ids
        archive = open_archive(self.path, model=model)  # fails here, in the main process, for a bad path
        self.ids = list(archive.ids if ids is None else ids)
        self._archive = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_archive"] = None  # each process opens its own handle (file handles, model, fsspec sessions)
        return state

    @property
    def archive(self):
        if self._archive is None:
            from latentzip.pipeline.decoding import open_archive

            self._archive = open_archive(self.path, model=self.model)
        return self._archive

    def _decode(self, ids: list[str]) -> list:
        items = read_items(self.archive, ids)
        found = [item for item in items if not isinstance(item, Exception)]
        decoded = iter(decode_items(self.archive, found, self.output))
        out = []
        for item_id, item in zip(ids, items):
            value = item if isinstance(item, Exception) else next(decoded)
            if isinstance(value, Exception):
                raise value
            if self.transform is not None:
                value = self.transform(value)
            out.append((item_id, value) if self.return_ids else value)
        return out


class ArchiveDataset(_ArchiveSource, Dataset):
    """Map-style: ``dataset[i]`` is the ``i``-th id decoded (``(id, value)`` with ``return_ids=True``)."""

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self._decode([self.ids[index]])[0]

    def __getitems__(self, indexes: list[int]) -> list:
        """A DataLoader batch decoded in one codec call (torch uses this when it exists)."""
        return self._decode([self.ids[i] for i in indexes])


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of torch.distributed if initialised, else $RANK / $WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class IterableArchiveDataset(_ArchiveSource, IterableDataset):
    """Iterable: this rank's and this worker's share of the ids, shuffled by ``seed + epoch``.

    Call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``) for a new order; with
    ``persistent_workers=True`` the workers keep the epoch they were started with. ``rank`` and
    ``world_size`` default to :func:`distributed_rank`."""

    def __init__(self, path, ids=None, output: str = "tensor", transform=None, model: str | None = None,
                 return_ids: bool = False, shuffle: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, decode_batch: int = 8):
        super().__init__(path, ids, output, transform, model, return_ids)
        detected = distributed_rank()
        self.rank = detected[0] if rank is None else rank
        self.world_size = detected[1] if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.shuffle, self.seed, self.epoch, self.decode_batch = shuffle, seed, 0, max(1, decode_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, worker: int = 0, workers: int = 1) -> list[str]:
        """The ids (rank, worker) reads this epoch, in order: the epoch's permutation of all ids, every
        ``world_size``-th from ``rank``, then every ``workers``-th of those from ``worker``."""
        order = list(self.ids)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return order[self.rank :: self.world_size][worker::workers]

    def __len__(self) -> int:
        """Ids this rank reads per epoch (all its workers together)."""
        return len(self.ids[self.rank :: self.world_size])

    def __iter__(self):
        info = get_worker_info()
        mine = self.shard(info.id, info.num_workers) if info is not None else self.shard()
        for start in range(0, len(mine), self.decode_batch):
            yield from self._decode(mine[start : start + self.decode_batch])
