"""``latentzip serve``: an archive's images over HTTP, decoded on demand by a Ray Serve deployment.

Two deployments: :class:`ArchiveImages`, a FastAPI ingress, answers HTTP (lookups, ETags, parameters,
errors) and hands each image to :class:`Decoder`, whose replicas open the archive and load its model once.
Decodes wait in a ``@serve.batch`` queue (up to ``max_batch_size`` ids, at most ``batch_wait_ms`` after the
first) and each batch is decoded in one call of the project's decode path
(:func:`~latentzip.pipeline.batch_decode.decode_pngs`: streams grouped by latent shape, one
``decompress`` per group). A PNG is byte for byte what ``latentzip decode ARCHIVE --id ID -o x.png`` writes.

HTTP API (every route but ``/healthz`` needs ``Authorization: Bearer TOKEN`` when a token is set):

- ``GET /images/{id}``: PNG; ``?format=webp|jpeg&quality=Q`` (1-100, default 90) re-encodes. ``ETag`` from
  the model id and the item's checksum, ``Cache-Control: public, max-age=31536000, immutable``;
  ``If-None-Match`` with that tag answers 304 without decoding. Ids are the archive's, URL-encoded (``/`` may
  stay as it is or be ``%2F``; unicode as UTF-8 percent escapes).
- ``GET /ids?offset=0&limit=100`` (limit at most 10000): ids in commit order and the total.
- ``GET /info``: provenance (model ref and id, codec, counts, format version, jobs) and the batching set-up.
- ``GET /stats``: how many batches of each size this replica decoded (and requests served).
- ``GET /healthz``: ``{"status": "ok"}``.

Errors are JSON ``{"error": ..., "id": ...}``: 404 for an unknown id, 500 for an item that cannot be decoded
(a failed checksum, a damaged stream, a model that is not available: the specific error, never an image),
400 for bad parameters, 401 without the token.

On a cluster: ``serve deploy`` with a config whose application has ``import_path:
latentzip.pipeline.serving:app_builder`` and ``args`` naming the archive (see README), or ``latentzip submit
... serve ARCHIVE --host 0.0.0.0``.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' parameter annotations (Request) at
# run time, from the methods Serve's ingress wraps.
import asyncio
import hashlib
import hmac
import io
import os
import time
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from latentzip.pipeline.archive import ItemNotFoundError, open_archive
from latentzip.pipeline.decoding import open_archive as open_decodable
from latentzip.pipeline.batch_decode import decode_pngs, etag
from latentzip.pipeline.decoding import archive_codec

APP_NAME = "latentzip"
FORMATS = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
DEFAULT_QUALITY = 90
MAX_IDS = 10_000
CACHE_CONTROL = "public, max-age=31536000, immutable"

app = FastAPI(title="latentzip archive images", docs_url=None, redoc_url=None, openapi_url=None)


class BadRequest(ValueError):
    """A parameter the API does not take (answered 400)."""


def token_digest(token: str) -> str:
    """What the deployment keeps of a bearer token: its SHA-256, so the token itself is not in Ray's state."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_token_file(path) -> str:
    token = open(path, encoding="utf-8").read().strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"token file {path} must hold one token (non-empty, no spaces)")
    return token


def _error(status: int, message: str, item_id: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": message} if item_id is None else {"error": message, "id": item_id}
    return JSONResponse(body, status_code=status, headers=headers)


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return f"{type(exc).__name__}: {text}"


def _int_param(params, name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


def _check_params(params, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadRequest(f"unknown parameter(s) {', '.join(unknown)}; this route takes "
                         f"{', '.join(sorted(allowed)) or 'none'}")


def image_format(params) -> tuple[str, int | None]:
    """(format, quality) of an image request's query; BadRequest for anything else."""
    _check_params(params, {"format", "quality"})
    name = params.get("format", "png").lower()
    if name == "jpg":
        name = "jpeg"
    if name not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}, got {params.get('format')!r}")
    if name == "png":
        if "quality" in params:
            raise BadRequest("quality applies to format=webp or format=jpeg, not to PNG (lossless)")
        return name, None
    return name, _int_param(params, "quality", DEFAULT_QUALITY, 1, 100)


def reencode(png: bytes, name: str, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, format=name.upper(), quality=quality)
    return buffer.getvalue()


def _matches(header: str | None, tag: str) -> bool:
    if not header:
        return False
    candidates = [part.strip() for part in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == tag for c in candidates)


@serve.deployment(name="Decoder")
class Decoder:
    """Decodes ids in batches: the archive opened and its model loaded once per replica.

    The batch is decoded in the replica's event loop, blocking it: requests that arrive meanwhile wait in
    Ray's queue and all join the next batch (a decode in a worker thread would hold the GIL against the
    loop's hand-over of each request, and batches stay small)."""

    def __init__(self, archive: str, max_batch_size: int = 16, batch_wait_ms: float = 5.0, model: str | None = None,
                 allow_model_urls=(), device: str = "cpu", threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.archive = open_decodable(archive, model=model, allow_model_urls=allow_model_urls)
        try:  # the archive keeps this codec for every decode
            self.archive.codec(device=device, max_batch=max(16, max_batch_size))
        except Exception:  # noqa: BLE001 - archive_codec below raises it with the archive and model named
            pass
        archive_codec(self.archive, "<start-up>")  # the model loads now: a replica that cannot decode fails to start
        self.settings = {"max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_ms, "device": device}
        self.decode.set_max_batch_size(max_batch_size)
        self.decode.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        self.batch_sizes: Counter = Counter()
        self.decode_s = 0.0

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def decode(self, items: list) -> list[tuple[bytes | None, str | None]]:
        self.batch_sizes[len(items)] += 1
        started = time.perf_counter()
        results = decode_pngs(self.archive, items)
        self.decode_s += time.perf_counter() - started
        return [(None, _message(r)) if isinstance(r, Exception) else (r, None) for r in results]

    def stats(self) -> dict:
        return {"batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "batches": sum(self.batch_sizes.values()), "images": sum(k * v for k, v in self.batch_sizes.items()),
                "decode_s": self.decode_s, "pid": os.getpid(), **self.settings}


@serve.deployment(name="ArchiveImages")
@serve.ingress(app)
class ArchiveImages:
    """The HTTP side: lookups, ETags, parameters and errors here; decodes go to the :class:`Decoder`."""

    def __init__(self, decoder, archive: str, token_sha256: str | None = None, settings: dict | None = None):
        self.decoder = decoder
        self.archive = open_archive(archive)  # lookups and listings only: the model is the decoder's
        self.token_sha256 = token_sha256
        self.settings = settings or {}
        self.requests = 0
        self.started = time.time()

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if self.token_sha256 is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token_digest(token.strip()), self.token_sha256):
            return None
        return _error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                      headers={"WWW-Authenticate": 'Bearer realm="latentzip"'})

    @app.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}

    @app.get("/info")
    async def info(self, request: Request):
        if (denied := self._unauthorized(request)) is not None:
            return denied
        meta = self.archive.meta
        return {"archive": str(self.archive.path), "format_version": meta["format_version"],
                "count": meta["count"], "failures": meta["failures"], "model_ref": meta["model_ref"],
                "model_id": meta["model_id"], "codec": meta["codec"], "package_version": meta["package_version"],
                "created": meta["created"], "jobs": meta.get("jobs", []), "server": self.settings}

    @app.get("/stats")
    async def stats(self, request: Request):
        if (denied := self._unauthorized(request)) is not None:
            return denied
        decoder = await self.decoder.stats.remote()
        return {"requests": self.requests, "uptime_s": time.time() - self.started, "decoder": decoder}

    @app.get("/ids")
    async def ids(self, request: Request):
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            _check_params(request.query_params, {"offset", "limit"})
            offset = _int_param(request.query_params, "offset", 0, 0, 1 << 62)
            limit = _int_param(request.query_params, "limit", 100, 0, MAX_IDS)
        except BadRequest as exc:
            return _error(400, str(exc))
        try:
            listed = await asyncio.to_thread(lambda: self.archive.ids)
        except Exception as exc:  # noqa: BLE001 - a damaged listing
            return _error(500, _message(exc))
        return {"ids": listed[offset : offset + limit], "offset": offset, "limit": limit, "total": len(listed)}

    @app.get("/images/{item_id:path}")
    async def image(self, item_id: str, request: Request):
        if (denied := self._unauthorized(request)) is not None:
            return denied
        self.requests += 1
        try:
            name, quality = image_format(request.query_params)
        except BadRequest as exc:
            return _error(400, str(exc), item_id)
        try:
            item = self.archive.item(item_id)
        except ItemNotFoundError as exc:
            return _error(404, _message(exc), item_id)
        except Exception as exc:  # noqa: BLE001 - a failed checksum, a damaged chunk: never an image
            return _error(500, _message(exc), item_id)
        tag = etag(self.archive, item)
        if name != "png":
            tag = f'{tag[:-1]}-{name}-q{quality}"'
        headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
        if _matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
        png, error = await self.decoder.decode.remote(item)
        if error is not None:
            return _error(500, error, item_id)
        body = png if name == "png" else await asyncio.to_thread(reencode, png, name, quality)
        return Response(body, media_type=FORMATS[name], headers=headers)


def build_app(archive: str, *, replicas: int = 1, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
              token: str | None = None, num_gpus: float = 0, num_cpus: float = 1, model: str | None = None,
              allow_model_urls=()):
    """The Serve application for ``archive`` (not yet running)."""
    if replicas < 1 or max_batch_size < 1 or batch_wait_ms < 0:
        raise ValueError("replicas and max_batch_size must be at least 1, batch_wait_ms at least 0")
    # Enough requests per replica to fill a batch while the previous one decodes (Serve's default is 5).
    if "://" not in str(archive):
        archive = Path(archive).resolve()  # replicas may run in another working directory
    # Enough requests per decoder replica to fill a batch while the previous one decodes (Serve's default is 5).
    decoder = Decoder.options(num_replicas=replicas, max_ongoing_requests=max(32, 4 * max_batch_size),
                              ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus}).bind(
        str(archive), max_batch_size, batch_wait_ms, model, tuple(allow_model_urls), "cuda" if num_gpus else "cpu")
    settings = {"replicas": replicas, "max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_ms,
                "num_gpus": num_gpus}
    # The HTTP side parses, looks up and forwards: no CPU reserved, so N decoders fit on N CPUs.
    return ArchiveImages.options(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}).bind(
        decoder, str(archive), None if token is None else token_digest(token), settings)


def app_builder(args: dict):
    """``serve run`` / ``serve deploy`` entry (``import_path: latentzip.pipeline.serving:app_builder``);
    ``args``: archive (required), replicas, max_batch_size, batch_wait_ms, token_file, num_gpus, model."""
    args = dict(args)
    if "archive" not in args:
        raise ValueError("args must name the archive (archive: /path/or/s3://url)")
    token_file = args.pop("token_file", None)
    return build_app(args.pop("archive"), token=read_token_file(token_file) if token_file else None,
                     **{k: v for k, v in args.items()})


def start_server(archive: str, host: str = "127.0.0.1", port: int = 8000, timeout_s: float = 300,
                 name: str = APP_NAME, route_prefix: str = "/", **options) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (unless Serve runs already) and the application ``name`` at
    ``route_prefix`` (Ray must be initialised); returns the application's base URL once ``/healthz`` answers."""
    import urllib.request

    import logging

    from latentzip.pipeline.cluster import verbose

    # Serve logs every start-up step and (at INFO) every request; quiet unless `latentzip --verbose`.
    level = "INFO" if verbose() else "WARNING"
    logging.getLogger("ray.serve").setLevel(level)
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": level})
    serve.run(build_app(archive, **options), name=name, route_prefix=route_prefix, blocking=False,
              logging_config={"log_level": level})
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}{route_prefix.rstrip('/')}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    return url
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not answer on {url}/healthz within {timeout_s:.0f} s") from None
        time.sleep(0.2)


def stop_server() -> None:
    """Delete the application and stop Serve (its proxy closes the port)."""
    serve.shutdown()
