"""The loop each Ray Train worker runs. It follows CompressAI's ``examples/train.py``: one Adam optimiser for
the network, one for the entropy bottleneck's ``quantiles`` (the "aux" loss), ``loss = lmbda * 255**2 * MSE
+ bpp``. The network is wrapped in DDP (gloo on CPU); the aux loss bypasses DDP, so the quantiles'
gradients are averaged by hand. Rates reported while training (``bpp_estimate``) are estimates from the
likelihoods; validation (``val_bpp``) codes real bitstreams."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latentzip.codecs.hyperprior import ScaleHyperprior, build_model
from latentzip.codecs.images import pad_to_multiple, to_tensor
from latentzip.codecs.learned import LearnedCodec
from latentzip.codecs.losses import bits_per_pixel, rate_distortion
from latentzip.codecs.registry import ARCHITECTURES
from latentzip.pipeline.training.checkpoints import RUN_SETTINGS, _hardware, _restore, _runs, _save_checkpoint, initialise
from latentzip.pipeline.training.config import TrainConfig
from latentzip.pipeline.training.data import ImageSource, PatchSampler, _say, load_images


def make_optimizers(module: torch.nn.Module, config: TrainConfig):
    # As in CompressAI's train.py: the quantiles are trained by the aux loss alone, with their own Adam.
    params = dict(module.named_parameters())
    aux = [n for n in params if n.endswith(".quantiles")]
    net = [n for n in params if n not in aux]
    return (torch.optim.Adam([params[n] for n in net], lr=config.lr),
            torch.optim.Adam([params[n] for n in aux], lr=config.aux_lr))


def _params(optimizers) -> list[list[torch.nn.Parameter]]:
    return [[p for g in opt.param_groups for p in g["params"]] for opt in optimizers]


def train_step(model, module, x, optimizers, config: TrainConfig, world: int, step: int) -> torch.Tensor:
    """One optimiser step of both losses. Returns detached (loss, mse, bpp, aux_loss)."""
    (net_opt, aux_opt), (net_params, quantiles) = optimizers, _params(optimizers)
    for optimizer, base in ((net_opt, config.lr), (aux_opt, config.aux_lr)):
        for group in optimizer.param_groups:
            group["lr"] = base * config.lr_factor(step)
    net_opt.zero_grad(set_to_none=True)
    aux_opt.zero_grad(set_to_none=True)
    rd = rate_distortion(model(x), x, config.lmbda)
    loss, mse, bpp = rd["loss"], rd["mse"], rd["bpp"]
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
    codec = LearnedCodec.from_model(coder, device=device)  # encoded as `encode` does, bpp from its bytes
    rows = []
    for image in images:
        x = image[None].float().div(255.0).to(device)
        height, width = x.shape[-2:]
        out = module(pad_to_multiple(x, module.stride))
        mse = F.mse_loss(out["x_hat"][..., :height, :width].clamp(0, 1), x).item()
        data, decoded = codec.encode_with_reconstruction([Image.fromarray(image.permute(1, 2, 0).cpu().numpy())])[0]
        # contiguous, as the tensor this was computed from before: the sum order of the float32 MSE stays put
        real_mse = F.mse_loss(to_tensor(decoded)[None].contiguous().to(device), x).item()
        rows.append((lmbda * 255**2 * mse + bits_per_pixel(out["likelihoods"], x).item(),
                     bits_per_pixel(out["likelihoods"], x).item(), 10 * math.log10(1.0 / max(mse, 1e-10)),
                     len(data) * 8 / (height * width), 10 * math.log10(1.0 / max(real_mse, 1e-10))))
    module.train()
    loss, bpp_estimate, psnr, bpp, real_psnr = np.mean(rows, axis=0).tolist()
    return {"val_loss": loss, "val_bpp_estimate": bpp_estimate, "val_psnr_estimate_db": psnr,
            "val_bpp": bpp, "val_psnr_db": real_psnr}


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
        state = initialise(module, loop_config["init"])
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
    aux loss. Each architecture has one such object (the gaussian-vae's is in training/vae.py): how to build
    the model, its optimisers, its batches, one step (returning detached ``metrics``), their summary, the
    validation and the progress line."""

    metrics = ("loss", "mse", "bpp", "aux_loss")
    run_settings = RUN_SETTINGS

    @staticmethod
    def build(config: TrainConfig) -> ScaleHyperprior:
        module = build_model(config.codec_config)
        module.transform_dtype = torch.bfloat16 if config.precision == "bf16" else None
        return module

    optimizers = staticmethod(make_optimizers)
    step = staticmethod(train_step)
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
        from latentzip.pipeline.training.vae import VAEObjective

        return VAEObjective
    return HyperpriorObjective
