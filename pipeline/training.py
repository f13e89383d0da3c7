"""Train: a folder of images (or ingest's Parquet shards) -> a codec directory, on Ray Train.

Every Ray Train worker decodes its share of the images (``rank::world_size``) into memory once, then
samples random patches: a random downscale in ``[min_scale, 1]``, a random ``patch_size`` crop, a random
horizontal flip. The loop follows CompressAI's ``examples/train.py``: one Adam optimiser for the network,
one for the entropy bottleneck's ``quantiles`` (the "aux" loss), ``loss = lmbda * 255**2 * MSE + bpp``.
The network is wrapped in DDP (gloo on CPU); the aux loss bypasses DDP, so the quantiles' gradients are
averaged by hand.

Checkpoints (``model.safetensors``, ``optimizer.pt``, ``train_state.json``, ``metrics.jsonl``) are written
by rank 0 every ``checkpoint_every`` steps and at the end, under ``<out_dir>/ray/train``. Restoring: in
Ray 2.60 (Train V2) the controller keeps ``checkpoint_manager_snapshot.json`` in the run folder
(``RunConfig(storage_path, name)``); a new ``fit()`` with the same storage path and name loads it, and
``ray.train.get_checkpoint()`` then returns the latest checkpoint. So rerunning the same command on the same
``out_dir`` resumes; a larger ``steps`` continues from the last saved step. Worker failures restart the
group from the latest checkpoint too (``FailureConfig(max_failures)``).

Finally the driver loads the last checkpoint into a fresh model and exports it with
:func:`~latentzip.codecs.checkpoint.export_codec` to ``<out_dir>/codec``, and writes every reported metrics
row to ``<out_dir>/metrics.jsonl``. The history travels inside the checkpoints, so it survives restarts.
Rates reported while training (``bpp_estimate``, ``val_bpp_estimate``) are estimates from the
likelihoods; bits per pixel of real bitstreams come from the encode job and the report.

Data, validation images and ``out_dir`` are paths or fsspec URLs (pipeline/storage.py). Every worker reads
the data itself, so on a cluster use object storage (``s3://...``) or a shared file system. With a URL
``out_dir`` the checkpoints go there too: Ray Train's ``RunConfig.storage_path`` on the same URL (through
the same fsspec filesystem), so a rerun on any machine resumes from them; the codec and metrics follow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latentzip.codecs import bitstream
from latentzip.codecs.checkpoint import export_codec
from latentzip.codecs.hyperprior import CodecConfig, ScaleHyperprior, build_model
from latentzip.codecs.images import UnsupportedImageError, load_image, pad_to_multiple
from latentzip.codecs.registry import ARCHITECTURES
from latentzip.pipeline import storage
from latentzip.pipeline.inputs import DEFAULT_MAX_FILE_BYTES, InputFileError, read_file, resolve_input, split_names
from latentzip.pipeline.raycluster import cluster_cpus, ensure_ray
from latentzip.pipeline.shards import is_shards, shard_paths

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif", ".jxl",
                    ".ppm", ".pgm", ".pnm"}
RUN_NAME = "train"
PRECISIONS = ("fp32", "bf16")
WEIGHTS, OPTIMIZER, STATE, HISTORY = "model.safetensors", "optimizer.pt", "train_state.json", "metrics.jsonl"


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``batch_size`` is per worker."""

    arch: str = "scale-hyperprior"
    N: int = 128
    M: int = 192
    lmbda: float = 0.0130
    lr: float = 1e-4
    aux_lr: float = 1e-3
    batch_size: int = 8
    patch_size: int = 256
    steps: int = 10_000
    checkpoint_every: int = 1000
    log_every: int = 10
    clip_max_norm: float = 1.0
    num_workers: int = 2
    cpus_per_worker: int | None = None  # None: the cluster's CPUs split evenly over the workers
    use_gpu: bool = False
    seed: int = 0
    max_side: int = 1024
    min_scale: float = 0.5
    validate_every: int = 0
    max_failures: int = 0
    lr_decay_at: tuple[float, ...] = (0.8, 0.95)  # fractions of ``steps`` where both learning rates drop
    lr_decay: float = 0.1
    gpus_per_worker: float = 1.0  # below 1 when several trials of a sweep share a GPU
    precision: str = "fp32"  # "bf16": g_a/g_s convolutions under bf16 autocast (GDN, hyperprior, rate in fp32)
    lr_rsqrt_from: int = 0  # > 0: the learning rate also falls as sqrt(lr_rsqrt_from / step) past that step
    # arch "gaussian-vae" (codecs/gaussian_vae.py; pipeline/training_vae.py): its architecture, and the loss
    # -ELBO with beta on the KL term, ramped up linearly over the first kl_warmup steps. It trains on whole
    # images resized to image_size (patch_size, min_scale, lmbda, aux_lr and clip_max_norm do not apply).
    latent_dims: int = 16
    width: int = 32
    hidden: int = 256
    image_size: int = 16
    channels: int = 1
    decoder: str = "bernoulli"
    beta: float = 1.0
    kl_warmup: int = 0

    def __post_init__(self):
        codec_config = self.codec_config  # validates arch and widths
        for name in ("batch_size", "patch_size", "steps", "checkpoint_every", "log_every", "num_workers",
                     "max_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if isinstance(codec_config, CodecConfig) and self.patch_size % ScaleHyperprior.stride:
            raise ValueError(f"patch_size must be a multiple of {ScaleHyperprior.stride}, got {self.patch_size}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if self.validate_every < 0 or self.max_failures < 0:
            raise ValueError("validate_every and max_failures must not be negative")
        self.lr_decay_at = tuple(float(f) for f in self.lr_decay_at)
        if any(not 0 < f <= 1 for f in self.lr_decay_at) or not 0 < self.lr_decay <= 1:
            raise ValueError("lr_decay_at must be fractions in (0, 1] and lr_decay in (0, 1]")
        if not 0 < self.gpus_per_worker <= 1:
            raise ValueError(f"gpus_per_worker must be in (0, 1], got {self.gpus_per_worker}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lr_rsqrt_from < 0:
            raise ValueError(f"lr_rsqrt_from must not be negative, got {self.lr_rsqrt_from}")
        if not (self.beta >= 0 and math.isfinite(self.beta)) or self.kl_warmup < 0:
            raise ValueError(f"beta must be a finite number >= 0 and kl_warmup >= 0, got {self.beta}, {self.kl_warmup}")

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at ``step``: ``lr_decay`` once for every decay point passed, and with
        ``lr_rsqrt_from`` an inverse-square-root fall past that step. A function of the step alone, so a
        resumed run continues the same schedule, and with ``lr_rsqrt_from`` a run that resumes a long-trained
        model starts where the schedule has fallen to, not at the top."""
        factor = self.lr_decay ** sum(step > round(f * self.steps) for f in self.lr_decay_at)
        if self.lr_rsqrt_from and step > self.lr_rsqrt_from:
            factor *= math.sqrt(self.lr_rsqrt_from / step)
        return factor

    def checkpoints_at(self, step: int) -> bool:
        """Whether the run saves a checkpoint (and reports it to Ray Train) after ``step``."""
        return step % self.checkpoint_every == 0 or step == self.steps

    @property
    def codec_config(self):
        """The architecture's typed config (codecs/registry.py: ``ARCHITECTURES``)."""
        if ARCHITECTURES.get(self.arch) == "generative":
            from latentzip.codecs.gaussian_vae import GaussianVAEConfig

            return GaussianVAEConfig(self.arch, self.latent_dims, self.width, self.hidden, self.image_size,
                                     self.channels, self.decoder)
        return CodecConfig(self.arch, self.N, self.M)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class TrainResult:
    codec_dir: Path | str
    model_id: str
    steps: int
    start_step: int  # where this call resumed from (0: a fresh run)
    metrics: dict
    wall_s: float
    metrics_path: Path | str


# -- data -------------------------------------------------------------------------------------------

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
        sources = [resolve_data(p, follow_symlinks) for p in data]
        kinds = {source.kind for source in sources}
        if len(kinds) > 1:
            raise ValueError("training data mixes image folders and Parquet shards; give one kind")
        paths = tuple(path for source in sources for path in source.paths)
        return ImageSource(kinds.pop(), paths, sum(source.count for source in sources),
                           ", ".join(source.location for source in sources))
    if isinstance(data, (list, tuple)):
        paths = [storage.absolute(p) for p in data]
        location = ", ".join(map(str, paths))
    else:
        location = storage.absolute(data)
        if not storage.exists(location):
            raise FileNotFoundError(f"training data {location} does not exist")
        if not is_shards(location):
            files = [location] if storage.is_file(location) else _image_files(location, follow_symlinks)
            if not files:
                raise FileNotFoundError(f"no images in {location}")
            return ImageSource("files", tuple(map(str, files)), len(files), str(location))
        paths = shard_paths(location)
    count = sum(storage.parquet_file(p).metadata.num_rows for p in paths)
    if count == 0:
        raise FileNotFoundError(f"no images in {location}")
    return ImageSource("parquet", tuple(map(str, paths)), count, str(location))


def _image_files(location, follow_symlinks: bool = False) -> list:
    """The image files of a folder (by extension) that the input policy reads (pipeline/inputs.py: regular
    files, links only within the folder unless ``follow_symlinks``, names in UTF-8); the others are named
    and skipped. Local files are given by their real paths, so workers read what was checked here."""
    names, bad = split_names([name for name in storage.list_files(location)
                              if Path(name).suffix.lower() in IMAGE_EXTENSIONS])
    files, skipped = [], list(bad)
    for name in names:
        if storage.is_url(location):
            files.append(storage.join(location, name))
            continue
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


# -- one worker -------------------------------------------------------------------------------------

def bits_per_pixel(likelihoods: dict, x: torch.Tensor) -> torch.Tensor:
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    return sum(-torch.log2(lik).sum() for lik in likelihoods.values()) / pixels


def _optimizers(module: torch.nn.Module, config: TrainConfig):
    # As in CompressAI's train.py: the quantiles are trained by the aux loss alone, with their own Adam.
    params = dict(module.named_parameters())
    aux = [n for n in params if n.endswith(".quantiles")]
    net = [n for n in params if n not in aux]
    return (torch.optim.Adam([params[n] for n in net], lr=config.lr),
            torch.optim.Adam([params[n] for n in aux], lr=config.aux_lr))


def _params(optimizers) -> list[list[torch.nn.Parameter]]:
    return [[p for g in opt.param_groups for p in g["params"]] for opt in optimizers]


def _train_step(model, module, x, optimizers, config: TrainConfig, world: int, step: int) -> torch.Tensor:
    """One optimiser step of both losses. Returns detached (loss, mse, bpp, aux_loss)."""
    (net_opt, aux_opt), (net_params, quantiles) = optimizers, _params(optimizers)
    for optimizer, base in ((net_opt, config.lr), (aux_opt, config.aux_lr)):
        for group in optimizer.param_groups:
            group["lr"] = base * config.lr_factor(step)
    net_opt.zero_grad(set_to_none=True)
    aux_opt.zero_grad(set_to_none=True)
    out = model(x)
    mse, bpp = F.mse_loss(out["x_hat"], x), bits_per_pixel(out["likelihoods"], x)
    loss = config.lmbda * 255**2 * mse + bpp
    loss.backward()
    if config.clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(net_params, config.clip_max_norm)
    net_opt.step()
    aux_loss = module.aux_loss()
    # autograd.grad, not backward(): backward() would fire DDP's gradient hooks outside a DDP forward,
    # which breaks its unused-parameter bookkeeping on the next step. DDP never sees these gradients, so
    # they are averaged over the workers here.
    for p, grad in zip(quantiles, torch.autograd.grad(aux_loss, quantiles)):
        if world > 1:
            torch.distributed.all_reduce(grad)
            grad.div_(world)
        p.grad = grad
    aux_opt.step()
    return torch.stack([loss, mse, bpp, aux_loss]).detach()


def _summarise(sums: torch.Tensor, count: int, world: int) -> dict:
    """Mean of (loss, mse, bpp, aux_loss) over the last ``count`` steps of every worker."""
    if world > 1:
        torch.distributed.all_reduce(sums)
    loss, mse, bpp, aux = (sums / (count * world)).tolist()
    psnr = 10 * math.log10(1.0 / mse) if mse > 0 else math.inf
    return {"loss": loss, "mse": mse, "bpp_estimate": bpp, "psnr_db": psnr, "aux_loss": aux}


@torch.no_grad()
def evaluate(module: ScaleHyperprior, images: list[torch.Tensor], lmbda: float) -> dict:
    """Whole-image validation: the likelihood estimate in eval mode, and the real thing: every image
    compressed with the range coder (``val_bpp`` from the bytes of its bitstream container) and decoded
    (``val_psnr_db`` from the 8-bit decoded image). Means over images."""
    module.eval()
    device = next(module.parameters()).device
    coder = build_model(module.config)  # a copy with fresh entropy-coder tables; training state untouched
    coder.load_state_dict(module.state_dict())
    coder.update(force=True)
    coder = coder.to(device).eval()
    rows = []
    for image in images:
        x = image[None].float().div(255.0).to(device)
        height, width = x.shape[-2:]
        out = module(pad_to_multiple(x, module.stride))
        mse = F.mse_loss(out["x_hat"][..., :height, :width].clamp(0, 1), x).item()
        coded = coder.compress(pad_to_multiple(x, coder.stride))
        data = bitstream.pack(bitstream.Bitstream(bytes(bitstream.MODEL_ID_BYTES), height, width, coded["shape"],
                                                  tuple(strings[0] for strings in coded["strings"])))
        decoded = coder.synthesize(coded["y_hat"])[..., :height, :width]
        real_mse = F.mse_loss(decoded.mul(255).round().div(255), x).item()
        rows.append((lmbda * 255**2 * mse + bits_per_pixel(out["likelihoods"], x).item(),
                     bits_per_pixel(out["likelihoods"], x).item(), 10 * math.log10(1.0 / max(mse, 1e-10)),
                     len(data) * 8 / (height * width), 10 * math.log10(1.0 / max(real_mse, 1e-10))))
    module.train()
    loss, bpp_estimate, psnr, bpp, real_psnr = np.mean(rows, axis=0).tolist()
    return {"val_loss": loss, "val_bpp_estimate": bpp_estimate, "val_psnr_estimate_db": psnr,
            "val_bpp": bpp, "val_psnr_db": real_psnr}


def _hardware(device: torch.device, threads: int) -> dict:
    gpu = {"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {"device": str(device), **gpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "torch": torch.__version__}


def _save_checkpoint(directory: Path, module, optimizers, state: dict, history: list[dict]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              str(directory / WEIGHTS))
    torch.save({**{name: opt.state_dict() for name, opt in zip(("net", "aux"), optimizers)}, "step": state["step"]},
               directory / OPTIMIZER)
    (directory / STATE).write_text(json.dumps(state, indent=2) + "\n")
    (directory / HISTORY).write_text("".join(json.dumps(row) + "\n" for row in history))


def read_checkpoint(directory: Path) -> tuple[dict, dict, list[dict]]:
    """(weights, train state, metrics history) from a training checkpoint directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    history = [json.loads(line) for line in (directory / HISTORY).read_text().splitlines()]
    return load_file(str(directory / WEIGHTS)), json.loads((directory / STATE).read_text()), history


def _restore(module, optimizers) -> tuple[dict, list[dict]]:
    """Load the latest Ray Train checkpoint, if any, into the model and optimisers."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"step": 0, "train_time_s": 0.0}, []
    with checkpoint.as_directory() as directory:
        weights, state, history = read_checkpoint(directory)
        module.load_state_dict(weights)  # CompressAI's: resizes the entropy-coder buffers first
        saved = torch.load(Path(directory) / OPTIMIZER, weights_only=True)
    for name, optimizer in zip(("net", "aux"), optimizers):
        optimizer.load_state_dict(saved[name])
    return state, history


def _initialise(module, init: dict) -> dict:
    """Start from a trained codec's weights (fresh optimisers), counting its steps (and runs) as done."""
    from safetensors.torch import load

    module.load_state_dict(load(storage.read_bytes(init["weights"])))
    return {"step": init["step"], "train_time_s": init["train_time_s"], "runs": init.get("runs", [])}


#: The settings of a run kept in its record (``_runs``): what a model card needs to say how it was trained.
RUN_SETTINGS = ("lmbda", "lr", "aux_lr", "lr_decay", "lr_rsqrt_from", "batch_size", "patch_size", "min_scale",
                "clip_max_norm", "precision")


def _runs(state: dict, config: TrainConfig, start: int, world: int, device, optimizer: str = "continued",
          settings: tuple[str, ...] = RUN_SETTINGS) -> list[dict]:
    """The runs that led to this checkpoint, this one last. The learning-rate schedule is a function of
    the run's total ``steps``, so a resume with a larger ``steps`` is a new run (its own schedule), while
    rerunning the same command or a worker-group restart continues the last one. ``optimizer`` says
    whether a new run kept Adam's state ("continued", from its own checkpoint) or started it afresh
    ("fresh": a new model, or weights alone from ``init_from``)."""
    runs = [dict(run) for run in state.get("runs", [])]
    if not runs or runs[-1]["to_step"] != config.steps:
        runs.append({"from_step": start, "to_step": config.steps, "last_step": start, "train_time_s": 0.0,
                     **{name: getattr(config, name) for name in settings},
                     "lr_decay_at": list(config.lr_decay_at), "num_workers": world, "device": str(device),
                     "optimizer": optimizer})
    return runs


def initial_weights(codec_dir: str | Path, config: TrainConfig) -> dict:
    """What ``train(init_from=...)`` passes to the workers: the weights file and the steps already done."""
    from latentzip.codecs.checkpoint import WEIGHTS_FILE, read_card
    from latentzip.codecs.registry import config_from_dict, fetch_codec

    remote = storage.is_url(codec_dir)
    document = read_card(fetch_codec(str(codec_dir)) if remote else codec_dir)
    stored = config_from_dict(document["config"])
    if not isinstance(stored, CodecConfig) or not isinstance(config.codec_config, CodecConfig):
        if stored != config.codec_config:
            raise ValueError(f"{codec_dir} is {stored}; this run is {config.codec_config}")
    elif (stored.arch, stored.N, stored.M) != (config.arch, config.N, config.M):
        raise ValueError(f"{codec_dir} is {stored.arch} N={stored.N} M={stored.M}; this run is "
                         f"{config.arch} N={config.N} M={config.M}")
    card = document.get("card") or {}
    # Workers read the weights themselves (from the URL, or the path, which every node has for a zoo model).
    weights = storage.join(codec_dir, WEIGHTS_FILE) if remote else Path(codec_dir).resolve() / WEIGHTS_FILE
    return {"weights": str(weights), "step": int(card.get("steps", 0)),
            "train_time_s": float(card.get("train_time_s", 0.0)), "runs": card.get("runs", []),
            **({"history": card["history"]} if card.get("history") else {})}


def _init(init_from, config: TrainConfig) -> dict | None:
    if init_from is None:
        return None
    init = initial_weights(init_from, config)
    if init["step"] >= config.steps:
        raise ValueError(f"{init_from} already has {init['step']} steps; ask for more (--steps)")
    return init


def _report(row: dict, rank: int, checkpoint_args=None) -> None:
    """Every rank reports (it is a barrier); only rank 0 attaches the checkpoint it wrote."""
    import ray.train

    if checkpoint_args is None or rank != 0:
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as tmp:
        _save_checkpoint(Path(tmp), *checkpoint_args)
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{row['step']:08d}")


def _progress_line(row: dict, steps: int, lmbda: float) -> str:
    eta = (steps - row["step"]) / row["steps_per_s"] if row["steps_per_s"] > 0 else math.inf
    eta_text = f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}" if math.isfinite(eta) else "?"
    line = (f"train λ={lmbda:g}: step {row['step']}/{steps} loss {row['loss']:.4f} bpp~ {row['bpp_estimate']:.3f} "
            f"psnr {row['psnr_db']:.2f} dB {row['steps_per_s']:.2f} steps/s ETA {eta_text}")
    return line + (f" | val {row['val_bpp']:.3f} bpp {row['val_psnr_db']:.2f} dB (coded)" if "val_bpp" in row else "")


def _quiet_ray_train_logs() -> None:
    """Ray Train logs every report and checkpoint at INFO; our progress line already says it."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ray.train") or "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def train_worker(loop_config: dict) -> dict:
    """The Ray Train loop run by each worker (see the module docstring)."""
    import ray.train
    import ray.train.torch

    config = TrainConfig.from_dict(loop_config["config"])
    context = ray.train.get_context()
    _quiet_ray_train_logs()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop_config["threads"])
    device = ray.train.torch.get_device()
    if device.type == "cuda":  # TF32 matmuls and convolutions: the GPU's fast path for fp32 training
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    objective = objective_for(config)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    module = objective.build(config)
    model = ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})
    module = model.module if hasattr(model, "module") else model
    optimizers = objective.optimizers(module, config)
    state, history = _restore(module, optimizers)
    optimizer = "continued" if state["step"] > 0 else "fresh"
    if state["step"] == 0 and loop_config.get("init"):
        state = _initialise(module, loop_config["init"])
    start = state["step"]
    if start >= config.steps:
        return {"start_step": start}
    runs = _runs(state, config, start, world, device, optimizer, objective.run_settings)

    images = load_images(ImageSource(**loop_config["data"]), rank, world, config.max_side)
    val_images = load_images(ImageSource(**loop_config["val"]), max_side=config.max_side) \
        if loop_config["val"] and rank == 0 else []
    # Seeded by step too, so a resumed run does not replay the crops it has already trained on.
    rng = np.random.default_rng([config.seed, rank, start])
    sampler = objective.sampler(images, config, rng)
    hardware = _hardware(device, loop_config["threads"])
    width = len(objective.metrics)
    sums, count, tick, train_time = torch.zeros(width, device=device), 0, time.perf_counter(), state["train_time_s"]

    for step in range(start + 1, config.steps + 1):
        sums += objective.step(model, module, sampler.batch(config.batch_size).to(device), optimizers, config, world, step)
        count += 1
        validate = config.validate_every and step % config.validate_every == 0
        save = config.checkpoints_at(step)
        if not (save or validate or step % config.log_every == 0):
            continue
        # The interval since the last row includes that row's report and checkpoint: steps/s and the ETA
        # are what the run really achieves. Validation is left out (its time is in the row, as val_s).
        now = time.perf_counter()
        elapsed, tick = now - tick, now
        row = {"step": step, **objective.summarise(sums, count, world), "steps_per_s": count / elapsed}
        if validate and rank == 0:
            row.update(objective.evaluate(module, val_images, config))
            row["val_s"] = time.perf_counter() - now
            tick += row["val_s"]
        train_time += elapsed
        runs[-1]["last_step"], runs[-1]["train_time_s"] = step, runs[-1]["train_time_s"] + elapsed
        history.append(row)
        if rank == 0:
            _say(objective.progress_line(row, config))
        if save or validate:
            # ray.train.report is a barrier across workers that returns at the controller's next poll
            # (see _trainer): once per checkpoint or validation, not per logged row. The rows in between
            # travel in the checkpoint's metrics history.
            state = {"step": step, "train_time_s": train_time, "world_size": world, "hardware": hardware,
                     "runs": runs}
            _report(row, rank, (module, optimizers, state, history) if save else None)
        sums, count = torch.zeros(width, device=device), 0
    return {"start_step": start}  # rank 0's return value reaches the driver as Result.return_value


class HyperpriorObjective:
    """What the loop does for a hyperprior codec: ``lmbda * 255**2 * MSE + bpp`` on random patches, plus the
    aux loss. Each architecture has one such object (the gaussian-vae's is in training_vae.py): how to build
    the model, its optimisers, its batches, one step (returning detached ``metrics``), their summary, the
    validation and the progress line."""

    metrics = ("loss", "mse", "bpp", "aux_loss")
    run_settings = RUN_SETTINGS

    @staticmethod
    def build(config: TrainConfig) -> ScaleHyperprior:
        module = build_model(config.codec_config)
        module.transform_dtype = torch.bfloat16 if config.precision == "bf16" else None
        return module

    optimizers = staticmethod(_optimizers)
    step = staticmethod(_train_step)
    summarise = staticmethod(_summarise)

    @staticmethod
    def sampler(images, config: TrainConfig, rng) -> PatchSampler:
        return PatchSampler(images, config.patch_size, config.min_scale, rng)

    @staticmethod
    def evaluate(module, images, config: TrainConfig) -> dict:
        return evaluate(module, images, config.lmbda)

    @staticmethod
    def progress_line(row: dict, config: TrainConfig) -> str:
        return _progress_line(row, config.steps, config.lmbda)


def objective_for(config: TrainConfig):
    """The training objective of ``config.arch`` (see :class:`HyperpriorObjective`)."""
    if ARCHITECTURES.get(config.arch) == "generative":
        from latentzip.pipeline.training_vae import VAEObjective

        return VAEObjective
    return HyperpriorObjective


# -- the driver -------------------------------------------------------------------------------------

HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


def _trainer(config: TrainConfig, out_dir: str | Path, loop_config: dict):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    # A URL: Ray Train writes and restores checkpoints through the same fsspec filesystem as the data.
    filesystem, storage_path = storage.arrow_filesystem(storage.join(out_dir, "ray")) if storage.is_url(out_dir) \
        else (None, str(storage.join(out_dir, "ray")))
    resources = {"CPU": loop_config["threads"], **({"GPU": config.gpus_per_worker} if config.use_gpu else {})}
    # Ray Train V2's ray.train.report returns at the controller's next poll of the workers, every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): each checkpoint stalled training for up to 2 s. The
    # driver's value reaches the controller (Ray propagates it); one the user set wins.
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S)
    return TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            storage_path=storage_path, storage_filesystem=filesystem, name=RUN_NAME,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )


def check_output_dir(out_dir: str | Path) -> Path | str:
    """``out_dir`` made absolute and, if local, created and shown writable; a ValueError saying why not
    (under a regular file, a read-only file system, no permission) rather than a traceback later."""
    out_dir = storage.absolute(out_dir)
    if isinstance(out_dir, Path):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=out_dir):
                pass
        except OSError as exc:
            raise ValueError(f"cannot write the training output to {out_dir}: {exc.strerror or exc}") from exc
    return out_dir


def train(data, out_dir: str | Path, config: TrainConfig, val=None, init_from: str | Path | None = None,
          follow_symlinks: bool = False) -> TrainResult:
    """Train (or resume training) on ``data`` and export the codec to ``<out_dir>/codec``.

    ``init_from``: a codec directory (e.g. a zoo model) whose weights start a run that has no checkpoint
    yet; its steps count as done, so ``config.steps`` is the total. Optimiser state starts afresh.
    ``follow_symlinks``: read links in image folders that point outside them (pipeline/inputs.py)."""
    out_dir = check_output_dir(out_dir)
    if config.validate_every and val is None:
        raise ValueError("validate_every needs validation images (val=...)")
    source = resolve_data(data, follow_symlinks)
    val_source = resolve_data(val, follow_symlinks) if val is not None else None
    check_readable(source)
    if val_source is not None:
        check_readable(val_source)
    ensure_ray()
    threads = config.cpus_per_worker or max(1, cluster_cpus() // config.num_workers)
    loop_config = {"config": config.to_dict(), "threads": threads, "data": dataclasses.asdict(source),
                   "init": _init(init_from, config),
                   "val": dataclasses.asdict(val_source) if val_source else None}

    started = time.perf_counter()
    result = _trainer(config, out_dir, loop_config).fit()
    wall_s = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training under {out_dir} finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        weights, state, history = read_checkpoint(directory)

    model = objective_for(config).build(config)
    model.load_state_dict(weights)
    storage.write_bytes(storage.join(out_dir, HISTORY), "".join(json.dumps(row) + "\n" for row in history).encode())
    final = history[-1] if history else {}
    start_step = (result.return_value or {}).get("start_step", 0)
    card = {"training": config.to_dict(), "steps": state["step"], "resumed_from_step": start_step,
            "final_metrics": final, "wall_time_s": wall_s, "train_time_s": state["train_time_s"],
            "num_workers": state.get("world_size"), "hardware": state.get("hardware", {}),
            "runs": state.get("runs", []),
            "data": {"source": source.location, "kind": source.kind, "images": source.count}}
    if loop_config["init"] and loop_config["init"].get("history"):
        card["history"] = loop_config["init"]["history"]  # the unrecorded runs of the codec it started from
    codec_dir = storage.join(out_dir, "codec")
    if isinstance(codec_dir, Path):
        model_id = export_codec(model, codec_dir, card=card)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model_id = export_codec(model, tmp, card=card)
            storage.upload_dir(Path(tmp), codec_dir)
    return TrainResult(codec_dir, model_id.hex(), state["step"], start_step, final, wall_s,
                       storage.join(out_dir, HISTORY))
