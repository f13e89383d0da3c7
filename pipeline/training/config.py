"""What defines a training run (:class:`TrainConfig`, validated on construction) and what it returns."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from latentzip.codecs.hyperprior import CodecConfig, ScaleHyperprior
from latentzip.codecs.registry import ARCHITECTURES


RUN_NAME = "train"


PRECISIONS = ("fp32", "bf16")


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
    # arch "gaussian-vae" (codecs/gaussian_vae.py; pipeline/training/vae.py): its architecture, and the loss
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
    prior: str = "normal"  # "two-stage": a second VAE over the latents, trained beside (codecs/two_stage.py)
    prior_hidden: int = 256
    # The two-stage prior's stage 2 learns from this fraction of ``steps`` on (before, its loss has weight 0 and
    # its weights stay as initialised): on stage 1's settled latents, as Dai & Wipf train it after stage 1.
    prior_from: float = 0.5

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
        if not 0 <= self.prior_from < 1:
            raise ValueError(f"prior_from must be a fraction of the steps in [0, 1), got {self.prior_from}")
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
                                     self.channels, self.decoder, self.prior, self.prior_hidden)
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


def build_config(options: dict | None = None, config_file: Path | None = None,
                 recipe: dict | None = None) -> TrainConfig:
    """The one way a run's :class:`TrainConfig` is made from options (train, bench train, the demo): the
    defaults, then a ``recipe`` (a command's own defaults), then a TOML file (flat keys named like the
    fields, e.g. ``steps = 5000``), then ``options`` (a None value means "not given")."""
    import tomllib

    values = dict(recipe or {})
    if config_file is not None:
        values.update(tomllib.loads(Path(config_file).read_text()))
    values.update({name: value for name, value in (options or {}).items() if value is not None})
    return TrainConfig.from_dict(values)
