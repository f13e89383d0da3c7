"""Archives as training data: latentzip.data's PyTorch datasets (DataLoader workers, simulated DDP ranks)
and its Ray Data reader, on a tiny codec and 64 px images."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

COUNT = 10


@pytest.fixture(scope="module")
def archive(tmp_path_factory, tiny_codec_dir, _sample_image_cache):
    from latentzip.codecs.registry import load_codec
    from latentzip.pipeline.archive import ArchiveWriter, Item

    base = _sample_image_cache[4]  # 128x128: 64x64 crops of it
    images = [base.crop((8 * i, 4 * i, 8 * i + 64, 4 * i + 64)) for i in range(COUNT)]
    codec = load_codec(str(tiny_codec_dir))
    path = tmp_path_factory.mktemp("data") / "a.zarr"
    writer = ArchiveWriter.open_or_create(path, codec.card, str(tiny_codec_dir))
    writer.start_job("test", {})
    streams = codec.encode_batch(images)
    writer.append([Item(f"d/{i:02d}.png", s, 64, 64, "t") for i, s in enumerate(streams)], unit="u0")
    writer.finish_job({"images": COUNT})
    return path


def _expected(archive):
    from latentzip.codecs.images import to_tensor
    from latentzip.pipeline.archive import open_archive
    from latentzip.pipeline.decoding import decode_image

    reader = open_archive(archive)
    return {i: to_tensor(decode_image(reader, i)) for i in reader.ids}


def test_iterable_dataset_two_workers_two_ranks_every_id_once_per_epoch(archive):
    from latentzip.data import IterableArchiveDataset

    expected = _expected(archive)
    orders = []
    for epoch in range(2):
        seen = []
        for rank in range(2):
            dataset = IterableArchiveDataset(archive, return_ids=True, seed=7, rank=rank, world_size=2,
                                             decode_batch=2)
            dataset.set_epoch(epoch)
            for ids, batch in DataLoader(dataset, batch_size=2, num_workers=2):
                for item_id, x in zip(ids, batch):
                    assert torch.equal(x, expected[item_id]), item_id
                    seen.append(item_id)
        assert Counter(seen) == Counter(expected.keys()), f"epoch {epoch}"
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled by seed + epoch


def test_map_dataset_with_workers_and_latents(archive):
    from latentzip.data import ArchiveDataset
    from latentzip.pipeline.decoding import open_archive

    expected = _expected(archive)
    dataset = ArchiveDataset(archive, return_ids=True)
    got = {}
    for ids, batch in DataLoader(dataset, batch_size=3, shuffle=True, num_workers=2):
        got.update(zip(ids, batch))
    assert got.keys() == expected.keys() and all(torch.equal(got[i], expected[i]) for i in expected)
    image = ArchiveDataset(archive, output="image")[0]
    assert np.array_equal(np.asarray(image), (expected["d/00.png"] * 255).round().byte().permute(1, 2, 0).numpy())

    latents = ArchiveDataset(archive, output="latents", ids=["d/03.png"])
    y_hat = latents[0]
    assert y_hat.dtype == torch.float32 and y_hat.shape == (24, 4, 4)  # M=24, 64 px / 16
    codec = open_archive(archive).codec()
    x_hat = codec.model.synthesize(y_hat[None])[0]  # the synthesis the latents skipped
    assert torch.equal((x_hat * 255).round() / 255, expected["d/03.png"])


def test_dataset_errors_name_the_id(archive):
    from latentzip.data import ArchiveDataset
    from latentzip.pipeline.archive import ItemNotFoundError

    with pytest.raises(ItemNotFoundError, match="nope"):
        ArchiveDataset(archive, ids=["nope"])[0]
    with pytest.raises(ValueError, match="output"):
        ArchiveDataset(archive, output="pixels")


def test_read_archive_on_ray(ray_local, archive):
    from latentzip.data import read_archive

    expected = _expected(archive)
    dataset = read_archive(archive, batch_size=4, concurrency=1).materialize()
    rows = dataset.take_all()
    assert len(rows) == dataset.count() == COUNT
    for row in rows:
        assert np.array_equal(row["image"], (expected[row["id"]] * 255).round().byte().permute(1, 2, 0).numpy())


def test_decode_stage_latents_without_ray(archive):
    from latentzip.data import ArchiveDecodeStage

    batch = ArchiveDecodeStage(str(archive), output="latents")({"id": np.array(["d/01.png", "d/02.png"], dtype=object)})
    assert batch["latents"].shape == (2, 24, 4, 4) and list(batch["height"]) == [64, 64]
