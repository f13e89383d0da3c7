"""Hyperprior VAEs: the learned codecs, built on CompressAI's layers and entropy models.

Two architectures share one contract:

- ``scale-hyperprior``: J. Ballé, D. Minnen, S. Singh, S. J. Hwang, N. Johnston, "Variational image
  compression with a scale hyperprior", ICLR 2018.
- ``mean-scale-hyperprior``: D. Minnen, J. Ballé, G. Toderici, "Joint autoregressive and hierarchical
  priors for learned image compression", NeurIPS 2018, without the autoregressive context model (so
  decoding stays parallel).

Tensor shapes for a batch ``x`` of shape (B, 3, H, W), H and W multiples of 64::

    y, y_hat  = g_a(x)        (B, M, H/16, W/16)   latents
    z, z_hat  = h_a(y)        (B, N, H/64, W/64)   hyper-latents
    params    = h_s(z_hat)    (B, M, ...) scales, or (B, 2M, ...) scales and means
    x_hat     = g_s(y_hat)    (B, 3, H, W)

``forward`` is the training path (additive uniform noise instead of rounding, likelihoods for the rate
term). The coding path is one chain, and everything that codes or measures real rates goes through it:
``analyse`` (``latents`` then ``quantise``: x -> the integer symbols of ``y`` and ``z`` and their entropy
parameters, an :class:`Analysis`), ``code`` (the range coder: symbols -> strings), ``compress`` (the two);
``decompress`` inverts it and ``synthesize`` gives the image.

Entropy-coding parameters (the scale index and mean of every latent) decide how the range coder splits its
interval, so encoder and decoder must compute them bit for bit alike. With ``entropy_params="integer"``
(the default) they come from a fixed-point ``h_s`` evaluated in exact integer arithmetic on the integer
symbols of ``z`` (``integer_prior.py``), the same on any machine, batch or thread count;
``entropy_params="float"`` keeps the float32 ``h_s`` of the same weights, for comparison and for streams
written before the integer prior existed. See docs/determinism.md.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from torch import nn

from latentzip.codecs.entropy_coding import decode_symbols, encode_symbols, require_usable, unchanged
from latentzip.codecs.integer_prior import BACKEND_LOCK, FixedPointHyperSynthesis, native_cpu_convolutions

ARCHITECTURES = ("scale-hyperprior", "mean-scale-hyperprior")
ENTROPY_PARAMS = ("integer", "float")


@dataclass(frozen=True)
class CodecConfig:
    """Architecture, channel widths and entropy-parameter arithmetic of a learned codec.

    ``N`` is the width of the hidden layers and of the hyper-latents, ``M`` the number of latent channels.
    ``entropy_params`` is ``"integer"`` (fixed-point ``h_s``, streams decode anywhere) or ``"float"``
    (float32 ``h_s``). It is part of the hashed config, so the two modes of the same weights have different
    model ids and a stream of one is never decoded by the other.

    Dicts without ``entropy_params`` predate the field, when every codec was float: :meth:`from_dict` reads
    them as float, and :meth:`to_dict` leaves the key out for float, so such codecs keep their model ids
    (and their streams and archives stay decodable in float mode).
    """

    arch: str = "scale-hyperprior"
    N: int = 128
    M: int = 192
    entropy_params: str = "integer"

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.N < 1 or self.M < 1:
            raise ValueError(f"channel widths must be positive, got N={self.N}, M={self.M}")
        if self.entropy_params not in ENTROPY_PARAMS:
            raise ValueError(f"unknown entropy_params {self.entropy_params!r}; choose one of {', '.join(ENTROPY_PARAMS)}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data["entropy_params"] == "float":
            del data["entropy_params"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "CodecConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown codec config keys: {', '.join(sorted(unknown))}")
        return cls(**{"entropy_params": "float", **data})


@dataclass(frozen=True)
class Analysis:
    """What the range coder codes for a padded batch of B images, as :meth:`ScaleHyperprior.analyse` gives it.

    ``y_symbols`` (B, M, h, w) int32, ``round(y - means)``, coded under the Gaussian tables ``y_indexes``
    (same shape, int32); ``means_hat`` (same shape, float32) or None for the scale hyperprior; ``y_hat``
    (float32) the latents the decoder reconstructs, ``y_symbols + means_hat``; ``z_symbols`` (B, N, h/4,
    w/4) int32, ``round(z - medians)``, coded under the bottleneck's per-channel tables ``z_indexes``.
    """

    y_symbols: torch.Tensor
    y_indexes: torch.Tensor
    means_hat: torch.Tensor | None
    y_hat: torch.Tensor
    z_symbols: torch.Tensor
    z_indexes: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """The hyper-latent grid (h/4, w/4): with the image size, all a decoder needs besides the strings."""
        return tuple(self.z_symbols.shape[-2:])

    def item(self, index: int) -> "Analysis":
        """Batch item ``index`` as a batch of one."""
        values = (getattr(self, field.name) for field in dataclasses.fields(self))
        return Analysis(*(None if t is None else t[index : index + 1] for t in values))


def _no_clock(stage: str):
    return nullcontext()


def _analysis(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


def _synthesis(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(
        deconv(M, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True),
        deconv(N, 3),
    )


class ScaleHyperprior(CompressionModel):
    """Scale hyperprior (Ballé et al. 2018): zero-mean Gaussian latents whose scales come from ``h_s``."""

    #: g_a downsamples by 16 and h_a by 4 more: inputs are padded to multiples of this.
    stride = 64
    #: Whether ``h_s`` predicts means after the scales (``_split_params``).
    predicts_means = False

    def __init__(self, config: CodecConfig):
        super().__init__()
        N, M = config.N, config.M
        self.config = config
        self.g_a = _analysis(N, M)
        self.g_s = _synthesis(N, M)
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.ReLU(inplace=True),
            conv(N, N), nn.ReLU(inplace=True),
            conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, N), nn.ReLU(inplace=True),
            deconv(N, N), nn.ReLU(inplace=True),
            conv(N, M, stride=1, kernel_size=3), nn.ReLU(inplace=True),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        self._integer_prior = None  # (the tensors it was derived from and their versions, the prior)
        #: Training only: run the convolutions of g_a and g_s under this autocast dtype (``torch.bfloat16``);
        #: GDN, the hyper transforms, the likelihoods and the rate stay float32. Coding never uses it.
        self.transform_dtype: torch.dtype | None = None

    # -- the pieces the two architectures differ in ------------------------------------------------
    def _hyper_input(self, y: torch.Tensor) -> torch.Tensor:
        return torch.abs(y)

    def _split_params(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return params, None

    # -- training ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict:
        y = _transform(self.g_a, x, self.transform_dtype)
        z = self.h_a(self._hyper_input(y))
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales_hat, means_hat = self._split_params(self.h_s(z_hat))
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        x_hat = _transform(self.g_s, y_hat, self.transform_dtype)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    # -- real coding: analyse (x -> symbols and entropy parameters), then the range coder ----------------
    @torch.no_grad()
    def entropy_parameters(self, z_symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale indexes and means (None for the scale hyperprior) of the Gaussian conditional, from the
        integer symbols of ``z``: the prior ``p(y | z_hat)`` as the range coder sees it.

        The one place that decides entropy-coding parameters; encoder and decoder both call it with the
        symbols that the z string codes. Integer mode: the fixed-point ``h_s``, exact everywhere. Float
        mode: float32 ``h_s`` on contiguous tensors, one image at a time, so at least the batch does not
        change the result.
        """
        if self.config.entropy_params == "integer":
            return self.integer_prior()(z_symbols)
        z_hat = dequantize(z_symbols.to(self._device()), self._z_medians())
        params = torch.cat([self.h_s(z_hat[i : i + 1].contiguous()) for i in range(z_hat.shape[0])])
        scales_hat, means_hat = self._split_params(params)
        return self.gaussian_conditional.build_indexes(scales_hat), means_hat

    def integer_prior(self, plan: list[dict] | None = None) -> FixedPointHyperSynthesis:
        """The fixed-point ``h_s`` of the current weights and tables, derived on first use and re-derived
        whenever one of them is replaced or changed in place. ``plan``: the stored choices of a derivation
        from these very weights (checkpoint.py keys them by model id), which makes deriving a quick build."""
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        sources = [*self.h_s.parameters(), eb.quantiles, eb._offset, eb._cdf_length, gc.scale_table,
                   gc.lower_bound_scale.bound]
        if self._integer_prior is not None and unchanged(sources, self._integer_prior[0]):
            return self._integer_prior[1]
        if eb._offset.numel() == 0 or gc.scale_table.numel() == 0:
            raise ValueError("entropy-coder tables are not built; run update() first")
        width = eb._cdf_length.to(torch.int64) - 2
        offset = eb._offset.to(torch.int64)
        # Symbols beyond the bottleneck's tables (bypass-coded tail events) are clamped one table width out.
        z_range = (offset - width, offset + 2 * width - 1)
        prior = FixedPointHyperSynthesis.derive(
            self.h_s, eb.quantiles[:, 0, 1], z_range, gc.scale_table, float(gc.lower_bound_scale.bound),
            with_means=self.predicts_means, plan=plan,
        ).to(self._device())
        self._integer_prior = ([(t.detach(), t._version) for t in sources], prior)
        return prior

    def _device(self) -> torch.device:
        return self.entropy_bottleneck.quantiles.device

    def _z_medians(self) -> torch.Tensor:
        return self.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)

    @torch.no_grad()
    def latents(self, x: torch.Tensor, refinement=None, sizes: list[tuple[int, int]] | None = None,
                clock=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``y = g_a(x)`` and ``z = h_a(y)`` of a padded batch, refined when ``refinement`` asks for steps
        (codecs/refine.py; ``sizes``: the images' true sizes): what :meth:`quantise` quantises.
        ``clock``: see :meth:`compress`."""
        clock = clock or _no_clock
        with clock("g_a"):
            y = self.g_a(x).float()
        with clock("h_a"):
            z = self.h_a(self._hyper_input(y))
        if refinement is not None and refinement.steps > 0:
            from latentzip.codecs.refine import refine_latents

            with clock("refine"), torch.enable_grad():
                y, z = refine_latents(self, x, y, z, refinement, sizes)
        return y, z

    @torch.no_grad()
    def quantise(self, y: torch.Tensor, z: torch.Tensor, clock=None) -> "Analysis":
        """The symbols and entropy parameters of latents ``y`` and hyper-latents ``z`` (any values: those of
        :meth:`latents`, or blends of them), exactly as :meth:`compress` codes them."""
        clock = clock or _no_clock
        require_usable(self.entropy_bottleneck, self.gaussian_conditional)  # tables edited after loading
        with clock("z coding"):
            z_symbols = self.entropy_bottleneck.quantize(z, "symbols", self._z_medians())
        with clock("h_s"):
            y_indexes, means_hat = self.entropy_parameters(z_symbols)
        with clock("y coding"):
            y_symbols = self.gaussian_conditional.quantize(y, "symbols", means_hat)
            y_hat = dequantize(y_symbols, means_hat)
        return Analysis(y_symbols, y_indexes, means_hat, y_hat, z_symbols,
                        EntropyBottleneck._build_indexes(z.size()))

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, refinement=None, sizes: list[tuple[int, int]] | None = None,
                clock=None) -> "Analysis":
        """A padded batch ``x`` to what the range coder codes: :meth:`latents`, then :meth:`quantise`. The
        one analysis path: :meth:`compress` codes its result, rate measurements read it."""
        return self.quantise(*self.latents(x, refinement, sizes, clock), clock=clock)

    @torch.no_grad()
    def code(self, analysis: "Analysis", clock=None) -> dict:
        """Entropy-code an :class:`Analysis`: ``{"strings": [y_strings, z_strings], "shape": (h, w), "y_hat"}``,
        one string per batch item in each list (CompressAI's ``compress`` contract, plus ``y_hat``)."""
        clock = clock or _no_clock
        with clock("z coding"):
            z_strings = encode_symbols(self.entropy_bottleneck, analysis.z_symbols, analysis.z_indexes)
        with clock("y coding"):
            y_strings = encode_symbols(self.gaussian_conditional, analysis.y_symbols, analysis.y_indexes)
        return {"strings": [y_strings, z_strings], "shape": analysis.shape, "y_hat": analysis.y_hat}

    @torch.no_grad()
    def compress(self, x: torch.Tensor, refinement=None, sizes: list[tuple[int, int]] | None = None,
                 clock=None) -> dict:
        """Entropy-code a batch: :meth:`code` of :meth:`analyse`. Returns ``{"strings": [y_strings,
        z_strings], "shape": (h, w), "y_hat"}``.

        ``refinement``: a :class:`~latentzip.codecs.refine.Refinement` that improves ``y`` and ``z`` of each
        image before they are quantised (``sizes``: the images' true sizes inside the padded batch). The
        coding below is the same either way. ``clock``: for profiling, a function of a stage name
        (``"g_a"``, ``"h_a"``, ``"refine"``, ``"z coding"``, ``"h_s"``, ``"y coding"``) returning a context
        manager that each stage runs inside."""
        return self.code(self.analyse(x, refinement, sizes, clock), clock)

    @torch.no_grad()
    def decompress(self, strings: list, shape) -> dict:
        """Inverse of :meth:`compress` for a batch of strings that share one latent ``shape``.

        Raises :class:`~latentzip.codecs.bitstream.EntropyStreamError` unless each string is exactly the
        encoding of what it decodes to.
        """
        y_hat = self.decompress_latents(strings, shape)
        return {"x_hat": self.synthesize(y_hat), "y_hat": y_hat}

    @torch.no_grad()
    def decompress_latents(self, strings: list, shape) -> torch.Tensor:
        """``y_hat`` (N, M, 4 * h, 4 * w) of a batch of strings sharing the latent ``shape`` (h, w): the
        entropy decoding of :meth:`decompress` without the synthesis (for latent-space consumers)."""
        if not (isinstance(strings, (list, tuple)) and len(strings) == 2 and len(strings[0]) == len(strings[1])):
            raise ValueError("expected strings as [y_strings, z_strings] of equal length")
        y_strings, z_strings = strings
        z_size = (len(z_strings), self.entropy_bottleneck.channels, *shape)
        z_symbols = decode_symbols(self.entropy_bottleneck, z_strings, EntropyBottleneck._build_indexes(z_size))
        indexes, means_hat = self.entropy_parameters(z_symbols)
        y_symbols = decode_symbols(self.gaussian_conditional, y_strings, indexes)
        return dequantize(y_symbols.to(self._device()), means_hat)

    @torch.no_grad()
    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        """``g_s(y_hat)`` clamped to [0, 1], the same for an image whatever batch it arrives in.

        One image at a time, contiguous float32, contiguous weights, and on CPU the native convolutions
        rather than oneDNN (whose transposed convolution sums in an order that depends on the thread count).
        The encoder's reconstruction comes from here too, so it matches every decode on the same machine.
        """
        for parameter in self.g_s.parameters():
            if not parameter.is_contiguous():  # a channels-last model would take other kernels
                parameter.data = parameter.data.contiguous()
        backend = native_cpu_convolutions() if y_hat.device.type == "cpu" else nullcontext()
        with BACKEND_LOCK, backend:
            x_hat = [self.g_s(y_hat[i : i + 1].float().contiguous()) for i in range(y_hat.shape[0])]
        return torch.cat(x_hat).clamp_(0, 1)


def _transform(layers: nn.Sequential, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``layers(x)``; with ``dtype``, each convolution under autocast to it and each GDN in float32."""
    if dtype is None:
        return layers(x)
    for layer in layers:
        if isinstance(layer, GDN):
            x = layer(x.float())
        else:
            with torch.autocast(x.device.type, dtype=dtype):
                x = layer(x)
    return x.float()


def dequantize(symbols: torch.Tensor, means: torch.Tensor | None) -> torch.Tensor:
    """``symbols + means`` in float32, exactly as CompressAI's ``dequantize`` (encoder and decoder share it)."""
    values = symbols.float()
    if means is not None:
        values += means
    return values


class MeanScaleHyperprior(ScaleHyperprior):
    """Mean-scale hyperprior (Minnen et al. 2018, no context model): ``h_s`` predicts means and scales."""

    predicts_means = True

    def __init__(self, config: CodecConfig):
        super().__init__(config)
        N, M = config.N, config.M
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
            conv(N, N), nn.LeakyReLU(inplace=True),
            conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, M), nn.LeakyReLU(inplace=True),
            deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, stride=1, kernel_size=3),
        )

    def _hyper_input(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def _split_params(self, params: torch.Tensor):
        scales_hat, means_hat = params.chunk(2, 1)
        return scales_hat, means_hat


_MODELS = {"scale-hyperprior": ScaleHyperprior, "mean-scale-hyperprior": MeanScaleHyperprior}


def build_model(config: CodecConfig) -> ScaleHyperprior:
    """A freshly initialised model for ``config`` (entropy-coder tables not yet built)."""
    return _MODELS[config.arch](config)
