"""The learned codec as users call it: PIL images in, bitstream containers out, and back."""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image

from latentzip.codecs import bitstream
from latentzip.codecs.checkpoint import load_model, model_id, switch_entropy_params
from latentzip.codecs.hyperprior import Analysis, ScaleHyperprior
from latentzip.codecs.images import pad_to_multiple, padded_size, to_pil, to_rgb8, to_tensor


class LearnedCodec:
    """A trained hyperprior with ``encode``/``decode`` on PIL images.

    ``encode_batch`` groups images by padded size so each ``compress`` call is one dense batch;
    ``max_batch`` bounds the batch (memory grows with batch x pixels). Decoded pixels do not depend on how
    streams are batched; in integer mode (the default) streams decode on any machine (docs/determinism.md).
    """

    kind = "learned"

    def __init__(self, model: ScaleHyperprior, card: dict, name: str | None = None,
                 device: str | torch.device = "cpu", max_batch: int = 16):
        self.model = model.to(device).eval()
        self.card = card
        self.model_id = bytes.fromhex(card["model_id"])
        self.name = name or f"{model.config.arch}-{card['model_id'][:8]}"
        self.device = torch.device(device)
        self.max_batch = max_batch

    @classmethod
    def from_path(cls, directory: str | Path, name: str | None = None, entropy_params: str | None = None,
                  **options) -> "LearnedCodec":
        """Load a codec directory; ``entropy_params="float"`` for the float prior (default integer)."""
        model, card = load_model(directory, entropy_params=entropy_params)
        return cls(model, card, name=name, **options)

    @classmethod
    def from_model(cls, model: ScaleHyperprior, name: str | None = None, **options) -> "LearnedCodec":
        """A codec of in-memory weights (e.g. a model being trained, its entropy-coder tables already
        built with ``update()``): its card holds only the model id of these weights."""
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return cls(model, {"model_id": model_id(model.config, state).hex()}, name=name, **options)

    def with_entropy_params(self, entropy_params: str, name: str | None = None) -> "LearnedCodec":
        """The same weights in the other arithmetic (its own model id), e.g. to benchmark one against the other."""
        model, card = switch_entropy_params(self.model, self.card, entropy_params)
        return LearnedCodec(model, card, name=name, device=self.device, max_batch=self.max_batch)

    @property
    def config(self):
        return self.model.config

    @property
    def lmbda(self) -> float | None:
        """The rate-distortion trade-off the model was trained for (what refinement optimises), if recorded."""
        value = ((self.card.get("card") or {}).get("training") or {}).get("lmbda")
        return float(value) if value is not None else None

    def refinement(self, refine_steps: int, lmbda: float | None = None):
        """The :class:`~latentzip.codecs.refine.Refinement` that ``refine_steps`` asks for (None for 0)."""
        if refine_steps is None or refine_steps == 0:
            return None
        from latentzip.codecs.refine import Refinement

        lmbda = lmbda if lmbda is not None else self.lmbda
        if lmbda is None:
            raise ValueError(f"{self.name} records no training lambda; pass lmbda= to refine its latents")
        # bf16 synthesis while refining where the hardware has it (1.25x on this project's AVX-512-BF16 CPU).
        fast = self.device.type == "cuda" or (
            self.device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return Refinement(steps=int(refine_steps), lmbda=lmbda, synthesis_dtype=torch.bfloat16 if fast else None)

    def encode(self, image: Image.Image, refine_steps: int = 0) -> bytes:
        """One image's stream. ``refine_steps`` > 0 refines its latents first (codecs/refine.py): smaller
        or better streams for the same decoder, at the cost of encode time."""
        return self.encode_batch([image], refine_steps=refine_steps)[0]

    def decode(self, data: bytes) -> Image.Image:
        return self.decode_batch([data])[0]

    def encode_batch(self, images: list[Image.Image], refine_steps: int = 0, clock=None) -> list[bytes]:
        """The streams of ``images``. ``clock``: for profiling, a function of a stage name returning a context
        manager each stage runs inside (``"decode"``, ``"pad"``, ``"pack"`` here, the model's stages in
        :meth:`~latentzip.codecs.hyperprior.ScaleHyperprior.compress`)."""
        return [data for data, _, _ in self._encode(images, refine_steps=refine_steps, clock=clock)]

    def encode_with_reconstruction(self, images: list[Image.Image],
                                   refine_steps: int = 0) -> list[tuple[bytes, Image.Image]]:
        """Each image's stream and the image that decoding it gives, computed on the encoder's side."""
        return [(data, to_pil(x_hat))
                for data, x_hat, _ in self._encode(images, reconstruct=True, refine_steps=refine_steps)]

    def encode_analysed(self, image: Image.Image, refine_steps: int = 0) -> tuple[bytes, Analysis]:
        """``encode(image, refine_steps)`` and the :class:`~latentzip.codecs.hyperprior.Analysis` (symbols and
        entropy parameters, a batch of one) that its stream codes: what rate measurements read."""
        data, _, analysis = self._encode([image], refine_steps=refine_steps, analysed=True)[0]
        return data, analysis

    def _encode(self, images: list[Image.Image], reconstruct: bool = False, refine_steps: int = 0,
                analysed: bool = False, clock=None) -> list[tuple[bytes, torch.Tensor | None, Analysis | None]]:
        clock = clock or (lambda stage: nullcontext())
        refinement = self.refinement(refine_steps)
        with clock("decode"):
            tensors = [to_tensor(to_rgb8(image)) for image in images]
        groups = defaultdict(list)
        for index, x in enumerate(tensors):
            groups[padded_size(*x.shape[-2:], self.model.stride)].append(index)
        out: list[tuple | None] = [None] * len(tensors)
        for indexes in groups.values():
            for start in range(0, len(indexes), self.max_batch):
                chunk = indexes[start : start + self.max_batch]
                with clock("pad"):
                    batch = torch.cat([pad_to_multiple(tensors[i][None], self.model.stride) for i in chunk])
                sizes = [tuple(tensors[i].shape[-2:]) for i in chunk]
                analysis = self.model.analyse(batch.to(self.device), refinement, sizes, clock)
                coded = self.model.code(analysis, clock)
                x_hat = self.model.synthesize(coded["y_hat"]).cpu() if reconstruct else None
                with clock("pack"):
                    streams = bitstream.pack_batch(self.model_id, sizes, coded)
                for j, (i, (height, width)) in enumerate(zip(chunk, sizes)):
                    out[i] = (streams[j], None if x_hat is None else x_hat[j, :, :height, :width],
                              analysis.item(j) if analysed else None)
        return out

    def decode_batch(self, streams: list[bytes]) -> list[Image.Image]:
        """Decode streams of this model; raises a :class:`~latentzip.codecs.bitstream.BitstreamError` subclass."""
        return [to_pil(x) for x in self.decode_tensors(streams)]

    def decode_tensors(self, streams: list[bytes]) -> list[torch.Tensor]:
        """Each stream's image as a float tensor (3, H, W) in [0, 1]; streams sharing a latent shape are
        decoded in one ``decompress`` call."""
        return self._decode_groups(streams, latents=False)

    def decode_latents(self, streams: list[bytes]) -> list[torch.Tensor]:
        """Each stream's ``y_hat`` (M, H / 16, W / 16 of the padded image), float32, without synthesis."""
        return self._decode_groups(streams, latents=True)

    def _decode_groups(self, streams: list[bytes], latents: bool) -> list[torch.Tensor]:
        parsed = [self._parse(data) for data in streams]
        groups = defaultdict(list)
        for index, stream in enumerate(parsed):
            groups[stream.latent_shape].append(index)
        out: list[torch.Tensor | None] = [None] * len(parsed)
        for shape, indexes in groups.items():
            for start in range(0, len(indexes), self.max_batch):
                chunk = indexes[start : start + self.max_batch]
                strings = [[parsed[i].strings[k] for i in chunk] for k in range(2)]
                if latents:
                    y_hat = self.model.decompress_latents(strings, shape).cpu()
                    for j, i in enumerate(chunk):
                        out[i] = y_hat[j]
                    continue
                x_hat = self.model.decompress(strings, shape)["x_hat"].cpu()
                for j, i in enumerate(chunk):
                    out[i] = x_hat[j, :, : parsed[i].height, : parsed[i].width]
        return out

    def _parse(self, data: bytes) -> bitstream.Bitstream:
        stream = bitstream.unpack(data, expected_model_id=self.model_id)
        padded_h, padded_w = padded_size(stream.height, stream.width, self.model.stride)
        if len(stream.strings) != 2 or stream.latent_shape != (padded_h // self.model.stride, padded_w // self.model.stride):
            raise bitstream.MalformedStreamError(
                f"stream for a {stream.height}x{stream.width} image has hyper-latent shape "
                f"{stream.latent_shape} and {len(stream.strings)} strings; expected "
                f"{(padded_h // self.model.stride, padded_w // self.model.stride)} and 2"
            )
        return stream
