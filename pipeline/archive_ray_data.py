"""Archives as a Ray Data ``Dataset``: ids in, decoded rows out, decoding in ``map_batches`` actors.

:func:`read_archive` lists the ids (all, or ``ids``), and :class:`ArchiveDecodeStage`, a callable class that
opens the archive and loads its model once per actor, decodes each batch in one codec call (same-sized
images share a ``decompress``). Rows: ``id`` and ``image`` (``uint8`` H x W x 3, the pixels of
:func:`~latentzip.pipeline.decoding.decode_image`), ``tensor`` (float32 3 x H x W in [0, 1]) or ``latents``
(``y_hat``, float32 M x h x w, no synthesis), plus ``height`` and ``width`` of the image. A corrupt item
fails the dataset with an error naming the id.
"""

from __future__ import annotations

import numpy as np

from latentzip.pipeline.batch_decode import check_output, decode_items, read_items


class ArchiveDecodeStage:
    """Ray Data callable class: a batch of ids -> decoded rows (runs without Ray in a unit test too)."""

    def __init__(self, archive: str, output: str = "image", model: str | None = None, allow_model_urls=()):
        from latentzip.pipeline.decoding import open_archive

        self.archive = open_archive(archive, model=model, allow_model_urls=allow_model_urls)
        self.output = check_output(output)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"]]
        items = read_items(self.archive, ids)
        for item in items:
            if isinstance(item, Exception):
                raise item
        values = decode_items(self.archive, items, self.output)
        for value in values:
            if isinstance(value, Exception):
                raise value
        if self.output == "image":
            values = [np.asarray(value, dtype=np.uint8) for value in values]
        else:
            values = [value.numpy() for value in values]
        column = np.empty(len(values), dtype=object)
        column[:] = values
        if len({v.shape for v in values}) == 1:  # one shape: a plain tensor column
            column = np.stack(values)
        return {"id": np.array(ids, dtype=object), self.output: column,
                "height": np.array([item.height for item in items], np.int32),
                "width": np.array([item.width for item in items], np.int32)}


def read_archive(path, ids: list[str] | None = None, output: str = "image", batch_size: int = 16,
                 concurrency: int | None = None, model: str | None = None, allow_model_urls=()):
    """A Ray Data ``Dataset`` of the archive's ids (or ``ids``), decoded lazily by ``concurrency`` actors
    (default: the cluster's CPUs less one, at least one). Starts an embedded Ray unless one runs."""
    import ray

    from latentzip.pipeline.decoding import open_archive
    from latentzip.pipeline.cluster import cluster_cpus, ensure_ray

    check_output(output)
    archive = open_archive(path, model=model, allow_model_urls=allow_model_urls)  # a bad path fails here
    wanted = archive.ids if ids is None else list(ids)
    location = str(archive.path.resolve() if hasattr(archive.path, "resolve") else archive.path)  # actors' cwd differs
    ensure_ray()
    actors = concurrency or max(1, min(cluster_cpus() - 1, -(-len(wanted) // batch_size)))
    ds = ray.data.from_items([{"id": i} for i in wanted],
                             override_num_blocks=max(1, min(len(wanted), -(-len(wanted) // batch_size))))
    return ds.map_batches(ArchiveDecodeStage, fn_constructor_kwargs={
        "archive": location, "output": output, "model": model, "allow_model_urls": tuple(allow_model_urls)},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1)
