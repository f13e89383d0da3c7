"""The model zoo shipped in the package (``codecs/zoo/<name>/``): adding a trained codec, listing them.

A zoo entry is an ordinary codec directory (``codec.json`` + ``model.safetensors``) whose card carries, on
top of what training wrote (data, steps, wall time, hardware, recipe), its **validation** rate–distortion:
every validation image encoded with the real range coder and decoded (bpp from the bytes written, PSNR and
MS-SSIM from the 8-bit decoded image). The card is not part of the model id, so adding it changes nothing
about the weights or the streams they write. ``MODEL_CARD.md`` beside it is the same card for people.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from latentzip.codecs.card import CONFIG_FILE, WEIGHTS_FILE, read_card
from latentzip.codecs.registry import ZOO_DIR, zoo_models

CARD_FILE = "MODEL_CARD.md"


def validate(codec, images: list[tuple[str, object]]) -> dict:
    """Real rate–distortion of ``codec`` (a LearnedCodec) on ``(id, PIL image)`` pairs: means over images,
    and per image."""
    from latentzip.codecs.metrics import ms_ssim, psnr_db

    rows = []
    for name, image in images:
        started = time.perf_counter()
        data = codec.encode(image)
        decoded = codec.decode(data)
        rows.append({"id": name, "bpp": len(data) * 8 / (image.width * image.height),
                     "psnr_db": psnr_db(image, decoded), "ms_ssim": ms_ssim(image, decoded),
                     "seconds": time.perf_counter() - started})
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return {"images": len(rows), "bpp": mean("bpp"), "psnr_db": mean("psnr_db"), "ms_ssim": mean("ms_ssim"),
            "per_image": rows}


def add(codec_dir: str | Path, name: str, val_images: list[tuple[str, object]], val_source: str,
        zoo_dir: str | Path = ZOO_DIR, history: str | None = None) -> Path:
    """Copy a trained codec into the zoo as ``name`` with its validation RD in the card. ``history``: how it
    was trained, in words, for a codec whose card has no record of its runs (``card["runs"]``). The card
    gets the integer prior's plan, derived afresh from the weights (checkpoint.integer_prior_entry)."""
    from latentzip.codecs.checkpoint import PRIOR_KEY, integer_prior_entry
    from latentzip.codecs.learned import LearnedCodec

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad zoo name {name!r}")
    codec_dir = Path(codec_dir)
    if read_card(codec_dir)["config"].get("arch") == "gaussian-vae":
        return _add_generative(codec_dir, name, val_images, val_source, Path(zoo_dir), history)
    codec = LearnedCodec.from_path(codec_dir, name=name)
    document = read_card(codec_dir)
    result = validate(codec, val_images)
    card = dict(document.get("card") or {})
    if history:
        card["history"] = history
    card["validation"] = {"source": val_source, "entropy_params": codec.config.entropy_params,
                          **{k: v for k, v in result.items() if k != "per_image"},
                          "per_image": result["per_image"]}
    document = {key: value for key, value in document.items() if key != PRIOR_KEY}
    prior = integer_prior_entry(codec.model)
    if prior is not None:
        document[PRIOR_KEY] = prior
    target = Path(zoo_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(codec_dir / WEIGHTS_FILE, target / WEIGHTS_FILE)
    (target / CONFIG_FILE).write_text(json.dumps({**document, "card": card}, indent=2, sort_keys=True) + "\n")
    (target / CARD_FILE).write_text(model_card(name, {**document, "card": card}))
    LearnedCodec.from_path(target)  # re-checks the model id against the copied weights
    return target


def _add_generative(codec_dir: Path, name: str, val_images: list[tuple[str, object]], val_source: str,
                    zoo_dir: Path, history: str | None) -> Path:
    """``add`` for a generative VAE: its card gets the mean -ELBO (bits per pixel) of the validation images."""
    from latentzip.codecs.checkpoint import load_vae
    from latentzip.codecs.vae_generative import score_images

    model, document = load_vae(codec_dir)
    scores = score_images(model, [image for _, image in val_images])
    card = dict(document.get("card") or {})
    if history:
        card["history"] = history
    card["validation"] = {"source": val_source, "images": len(scores),
                          "neg_elbo_bpp": float(sum(scores) / max(1, len(scores)))}
    document = {**document, "card": card}
    target = zoo_dir / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(codec_dir / WEIGHTS_FILE, target / WEIGHTS_FILE)
    (target / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    (target / CARD_FILE).write_text(model_card(name, document))
    load_vae(target)  # re-checks the model id against the copied weights
    return target


def summary_line(name: str, document: dict) -> str:
    """One line: name first, then architecture, λ, steps and validation RD."""
    config, card = document.get("config", {}), document.get("card") or {}
    training, validation = card.get("training") or {}, card.get("validation") or {}
    if config.get("arch") == "gaussian-vae":
        parts = [name, "gaussian-vae", f"latent_dims={config.get('latent_dims')} image_size={config.get('image_size')}",
                 *([f"{card['steps']} steps"] if "steps" in card else []),
                 *([f"val -ELBO {validation['neg_elbo_bpp']:.4f} bpp ({validation['images']} images)"]
                   if "neg_elbo_bpp" in validation else []),
                 "(generative: sample, interpolate, score; no bitstreams)"]
        return "  ".join(parts)
    parts = [name, config.get("arch", "?"), f"N={config.get('N')} M={config.get('M')}"]
    if "lmbda" in training:
        parts.append(f"lambda={training['lmbda']:g}")
    if "steps" in card:
        parts.append(f"{card['steps']} steps")
    if validation:
        parts.append(f"val {validation['bpp']:.3f} bpp (mean over images) {validation['psnr_db']:.2f} dB "
                     f"MS-SSIM {validation['ms_ssim']:.4f} ({validation['images']} images)")
    return "  ".join(parts)


def listing() -> list[str]:
    """One line per zoo model; a model whose card cannot be read says why on its line."""
    lines = []
    for name, path in zoo_models().items():
        try:
            lines.append(summary_line(name, read_card(path)))
        except (KeyError, TypeError, ValueError) as exc:  # CheckpointError is a ValueError
            lines.append(f"{name}  unreadable codec folder: {exc}")
    return lines


def model_card(name: str, document: dict) -> str:
    if document["config"].get("arch") == "gaussian-vae":
        return _generative_card(name, document)
    config, card = document["config"], document.get("card") or {}
    training, validation = card.get("training") or {}, card.get("validation") or {}
    data, hardware = card.get("data") or {}, card.get("hardware") or {}
    wall = card.get("wall_time_s")
    lines = [
        f"# {name}", "",
        f"`load_codec(\"{name}\")`, `--model {name}`. Model id `{document['model_id']}`.", "",
        "| | |", "|---|---|",
        f"| architecture | {config['arch']} (N={config['N']}, M={config['M']}), entropy parameters "
        f"{config.get('entropy_params', 'float')} |",
        f"| data | {data.get('images', '?')} images ({data.get('kind', '?')}) from "
        + " and ".join(f"`{Path(part).name}`" for part in str(data.get("source", "?")).split(", ")) + " |",
        f"| steps | {card.get('steps', '?')} on {card.get('num_workers', '?')} Ray Train worker(s) |",
        (f"| time | {card['train_time_s'] / 60:.1f} min of training steps over all runs; the last run "
         f"{wall / 60:.1f} min wall |" if isinstance(wall, (int, float)) and "train_time_s" in card
         else f"| wall time | {wall / 60:.1f} min |" if isinstance(wall, (int, float)) else "| wall time | ? |"),
        f"| hardware | {hardware.get('device', '?')}, {hardware.get('torch_threads', '?')} thread(s) per worker, "
        f"{hardware.get('cpu_count', '?')} CPUs, torch {hardware.get('torch', '?')} |",
        "| recipe | " + ", ".join(f"{key} {training[key]}" for key in
                                 ("lmbda", "lr", "aux_lr", "batch_size", "patch_size", "min_scale", "clip_max_norm",
                                  "lr_decay_at", "lr_decay", "lr_rsqrt_from", "precision") if key in training) + " |",
    ]
    runs = card.get("runs") or []
    if runs or card.get("history"):
        # Runs recorded after earlier, unrecorded ones (a codec resumed from one trained before runs were
        # kept): the history text, or a plain "not recorded", stands for the steps before them.
        before = card.get("history") or f"steps 0→{runs[0]['from_step']}: not recorded"
        parts = ([before] if not runs or runs[0]["from_step"] > 0 else []) + [_run_text(run) for run in runs]
        lines.append("| runs | " + "; ".join(parts) + " |")
    if validation:
        lines.append(f"| validation | {validation['images']} images of `{Path(validation['source']).name}`: "
                     f"{validation['bpp']:.4f} bpp (mean over images), {validation['psnr_db']:.3f} dB PSNR, "
                     f"MS-SSIM {validation['ms_ssim']:.4f} (real bitstreams, decoded) |")
        lines += ["", "| image | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|"]
        for row in validation["per_image"]:
            ssim = row["ms_ssim"]
            lines.append(f"| {row['id']} | {row['bpp']:.4f} | {row['psnr_db']:.3f} | "
                         f"{'–' if isinstance(ssim, float) and math.isnan(ssim) else f'{ssim:.4f}'} |")
    return "\n".join(lines) + "\n"


def _generative_card(name: str, document: dict) -> str:
    config, card = document["config"], document.get("card") or {}
    training, validation = card.get("training") or {}, card.get("validation") or {}
    data, hardware = card.get("data") or {}, card.get("hardware") or {}
    runs = card.get("runs") or []
    lines = [
        f"# {name}", "",
        f"`--model {name}` with `latentzip sample`, `interpolate`, `score`, `bench digits`, `bench anomaly` "
        f"(a generative VAE: no entropy coder, so no `encode`). Model id `{document['model_id']}`.", "",
        "| | |", "|---|---|",
        f"| architecture | gaussian-vae (codecs/gaussian_vae.py): latent_dims={config['latent_dims']}, "
        f"width={config['width']}, hidden={config['hidden']}, image_size={config['image_size']}, "
        f"channels={config['channels']}, {config['decoder']} decoder"
        + (f"; two-stage prior (codecs/two_stage.py: a second VAE over the latents, prior_hidden="
           f"{config.get('prior_hidden')}; samples are z = its decoder(u), u ~ N(0, I))"
           if config.get("prior") == "two-stage" else "") + " |",
        f"| data | {data.get('images', '?')} images ({data.get('kind', '?')}) from "
        f"`{Path(str(data.get('source', '?'))).name}` |",
        f"| steps | {card.get('steps', '?')} on {card.get('num_workers', '?')} Ray Train worker(s) |",
        f"| time | {card.get('train_time_s', 0) / 60:.1f} min of training steps |",
        f"| hardware | {hardware.get('device', '?')}, {hardware.get('torch_threads', '?')} thread(s) per worker, "
        f"torch {hardware.get('torch', '?')} |",
        "| recipe | loss -ELBO, " + ", ".join(f"{key} {training[key]}" + (" per worker" if key == "batch_size" else "")
                                             for key in ("beta", "kl_warmup", "lr", "lr_decay_at", "lr_decay",
                                                         "batch_size") if key in training)
        + (f", stage 2 from {training['prior_from']:.0%} of the steps" if config.get("prior") == "two-stage"
           and "prior_from" in training else "") + " |",
    ]
    if runs:
        lines.append("| runs | " + "; ".join(f"steps {run['from_step']}→{run.get('last_step', run['to_step'])} on "
                                            f"{run['num_workers']} worker(s), {run.get('train_time_s', 0) / 60:.1f} min"
                                            for run in runs) + " |")
    if "neg_elbo_bpp" in validation:
        lines.append(f"| validation | {validation['images']} images of `{Path(validation['source']).name}`: "
                     f"-ELBO {validation['neg_elbo_bpp']:.4f} bits per pixel (of the {config['image_size']}x"
                     f"{config['image_size']} input) |")
    if card.get("history"):
        lines.append(f"| notes | {card['history']} |")
    return "\n".join(lines) + "\n"


def _run_text(run: dict) -> str:
    """One training run of a card's ``runs``: its steps, learning-rate schedule, batch and machine."""
    decay = "/".join(f"{f:.0%}" for f in run.get("lr_decay_at", ()))
    minutes = run.get("train_time_s", 0) / 60
    rsqrt = f", ×√({run['lr_rsqrt_from']}/step) past step {run['lr_rsqrt_from']}" if run.get("lr_rsqrt_from") else ""
    extras = "".join(f", {text}" for text in (
        f"{run['precision']} transforms" if run.get("precision", "fp32") != "fp32" else "",
        {"fresh": "optimiser state fresh (Adam's moments lost)", "continued": "optimiser state kept"}.get(
            run.get("optimizer"), "")) if text)
    return (f"steps {run['from_step']}→{run.get('last_step', run['to_step'])}: lr {run['lr']:g} "
            f"(×{run['lr_decay']:g} at {decay} of {run['to_step']}{rsqrt}), batch {run['batch_size']}×"
            f"{run['patch_size']} px, {run['num_workers']} worker(s) on {run['device']}, {minutes:.1f} min{extras}")
