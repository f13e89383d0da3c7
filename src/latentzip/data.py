"""Archives as training data: decoded on the fly, by a PyTorch ``DataLoader`` or by Ray Data::

    from torch.utils.data import DataLoader
    from latentzip.data import ArchiveDataset, IterableArchiveDataset, read_archive

    loader = DataLoader(ArchiveDataset("photos.zarr"), batch_size=16, shuffle=True, num_workers=2)
    for x in loader: ...                       # float32 (B, 3, H, W) in [0, 1], the archive's decoded pixels

    shards = IterableArchiveDataset("s3://bucket/photos.zarr", seed=0)  # by DDP rank and worker
    shards.set_epoch(epoch)                    # a new order each epoch, every id once per epoch

    latents = ArchiveDataset("photos.zarr", output="latents")  # y_hat, no synthesis: latent-space models
    ds = read_archive("photos.zarr", output="image")           # a Ray Data Dataset: rows id, image, ...

Implementation: ``latentzip.pipeline.archive_data`` (PyTorch) and ``latentzip.pipeline.archive_ray_data``.
"""

from latentzip.pipeline.archive_data import ArchiveDataset, IterableArchiveDataset, distributed_rank
from latentzip.pipeline.archive_ray_data import ArchiveDecodeStage, read_archive

__all__ = ["ArchiveDataset", "ArchiveDecodeStage", "IterableArchiveDataset", "distributed_rank", "read_archive"]
