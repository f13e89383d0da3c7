"""``latentzip bench serve``: a bounded load test of ``latentzip serve`` on 127.0.0.1, with dynamic batching
on and off, beside a plain static server of the same images pre-decoded as PNG files.

An archive of ``count`` crops (``size`` x ``size``) of the bundled samples is encoded with ``model`` (or
``archive=`` is measured as it is); its ids are decoded once to PNG files in a folder (what the static
server serves). Two Serve applications run side by side on one proxy, each one replica of one CPU: ``/on``
batches up to ``max_batch_size`` decodes (waiting at most ``batch_wait_ms``), ``/off`` decodes each request
alone (``max_batch_size=1``). A static server (``http.server``, HTTP/1.1 keep-alive, in its own process)
serves the PNG folder. ``clients`` concurrent keep-alive clients (aiohttp, in this process) ask for random
ids for ``seconds``, after a warm-up; runs alternate between the servers ``repeats`` times, and each
server's best run counts. Every answer must be 200 with the PNG of the id (checked by length against the
pre-decoded file): anything else is an error.

Where the time goes: each decoder's ``/stats`` gives the seconds it spent decoding and its batch sizes;
decode ms per request against the wall time per request tells decode from HTTP/Serve overhead, and
the per-image cost of the decode path is timed in this process at batch 1 and at ``max_batch_size``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def static_server(folder: str, port: int) -> None:
    """A plain static file server (stdlib), HTTP/1.1 so clients keep their connections."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=folder)).serve_forever()


async def _load(urls: list[str], sizes: list[int], clients: int, seconds: float, seed: int, headers: dict) -> dict:
    import aiohttp

    latencies, errors, examples = [], 0, []
    deadline = time.perf_counter() + seconds

    async def client(number: int):
        nonlocal errors
        rng = random.Random(seed * 1000 + number)
        async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=1)) as session:
            while time.perf_counter() < deadline:
                index = rng.randrange(len(urls))
                started = time.perf_counter()
                try:
                    async with session.get(urls[index]) as answer:
                        body = await answer.read()
                        ok = answer.status == 200 and len(body) == sizes[index]
                        if not ok and len(examples) < 3:
                            examples.append(f"{answer.status} {body[:200]!r}")
                except aiohttp.ClientError as exc:
                    ok = False
                    if len(examples) < 3:
                        examples.append(repr(exc))
                latencies.append(time.perf_counter() - started)
                errors += not ok

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": wall, "requests_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": errors, "error_examples": examples}


def load(base: str, ids: list[str], sizes: list[int], clients: int, seconds: float, seed: int = 0,
         suffix: str = "", token: str | None = None) -> dict:
    """``clients`` concurrent clients GETting ``base/<id><suffix>`` for random ids during ``seconds``."""
    urls = [f"{base}/{quote(i, safe='/')}{suffix}" for i in ids]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return asyncio.run(_load(urls, sizes, clients, seconds, seed, headers))


def _get_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def decode_costs(archive, ids: list[str], batch: int, rounds: int = 3) -> dict:
    """ms per image of the serve decode path (lookup, then decode + PNG) at batch 1 and at ``batch``."""
    from latentzip.pipeline.batch_decode import decode_pngs, read_items

    items = read_items(archive, ids[:batch])
    decode_pngs(archive, items[:2])
    out = {}
    started = time.perf_counter()
    for _ in range(rounds):
        read_items(archive, ids[:batch])
    out["lookup_ms"] = (time.perf_counter() - started) * 1000 / (rounds * len(items))
    for size in (1, batch):
        started = time.perf_counter()
        for _ in range(rounds):
            for start in range(0, len(items), size):
                decode_pngs(archive, items[start : start + size])
        out[f"decode_png_ms_batch{size}"] = (time.perf_counter() - started) * 1000 / (rounds * len(items))
    return out


def bench_serve(archive: Path | None = None, model: str = "mean-scale-q3", count: int = 256, size: int = 64,
                clients: int = 16, seconds: float = 20.0, warmup_s: float = 3.0, repeats: int = 2,
                max_batch_size: int = 16, batch_wait_ms: float = 5.0, port: int | None = None,
                workdir: Path | None = None, progress=print) -> dict:
    """Measure as the module says (Ray must be initialised); returns the figures as a dict."""
    from ray import serve

    from latentzip.pipeline.archive import open_archive
    from latentzip.pipeline.bench.decode import build_archive
    from latentzip.pipeline.bench.encode import generate_images
    from latentzip.pipeline.decoding import output_path
    from latentzip.pipeline.decoding_job import decode_archive
    from latentzip.pipeline.serving import start_server

    work = Path(workdir or tempfile.mkdtemp(prefix="latentzip-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    if archive is None:
        archive = work / "serve.zarr"
        if not archive.exists():
            images = work / "images"
            generate_images(images, count, sizes=((size, size),))
            build_archive(archive, model, count, images=images, progress=None)
    reader = open_archive(archive)
    ids = reader.ids
    static = work / "static"
    summary = decode_archive(archive, static, use_ray=False, progress=None)
    if summary.failures:
        raise ValueError(f"{len(summary.failures)} ids of {archive} do not decode, e.g. {next(iter(summary.failures.items()))}")
    sizes = [output_path(static, i).stat().st_size for i in ids]
    if progress:
        progress(f"bench serve: {len(ids)} images in {archive}, PNGs in {static}")
    port = port or _free_port()
    bases = {}
    for mode, batch in (("batching on", max_batch_size), ("batching off", 1)):
        prefix = "/on" if batch > 1 else "/off"
        bases[mode] = start_server(str(archive), port=port, name=f"bench-{prefix[1:]}", route_prefix=prefix,
                                   max_batch_size=batch, batch_wait_ms=batch_wait_ms) + "/images"
    static_port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=static_server, args=(str(static), static_port),
                                                          daemon=True)
    server.start()
    bases["static PNG files"] = f"http://127.0.0.1:{static_port}"
    time.sleep(1.0)
    runs: dict[str, list[dict]] = {mode: [] for mode in bases}
    stats_before = {}
    try:
        for mode, base in bases.items():  # warm-up: kernels, connections, caches
            load(base, ids, sizes, clients, warmup_s, seed=99, suffix=".png" if mode.startswith("static") else "")
        for mode in ("batching on", "batching off"):
            stats_before[mode] = _get_json(bases[mode].removesuffix("/images") + "/stats")
        for repeat in range(repeats):
            for mode, base in bases.items():
                suffix = ".png" if mode.startswith("static") else ""
                runs[mode].append(load(base, ids, sizes, clients, seconds, seed=repeat, suffix=suffix))
                if progress:
                    r = runs[mode][-1]
                    progress(f"bench serve: {mode} run {repeat + 1}: {r['requests_per_s']:.1f} requests/s, "
                             f"p50 {r['p50_ms']:.0f} ms, {r['errors']} errors")
        stats = {mode: _get_json(bases[mode].removesuffix("/images") + "/stats") for mode in stats_before}
    finally:
        server.terminate()
        server.join(10)
        for name in ("bench-on", "bench-off"):
            serve.delete(name)
    result = {"archive": str(archive), "model": reader.meta["model_ref"], "images": len(ids), "size": size,
              "clients": clients, "seconds": seconds, "repeats": repeats, "max_batch_size": max_batch_size,
              "batch_wait_ms": batch_wait_ms, "servers": {}, "costs": decode_costs(reader, ids, max_batch_size),
              "png_bytes_mean": statistics.mean(sizes)}
    for mode, mode_runs in runs.items():
        best = max(mode_runs, key=lambda r: r["requests_per_s"])
        entry = {**best, "errors": sum(r["errors"] for r in mode_runs), "all_requests_per_s":
                 [r["requests_per_s"] for r in mode_runs]}
        if mode in stats:
            after, before = stats[mode]["decoder"], stats_before[mode]["decoder"]
            served = after["images"] - before["images"]
            entry["decode_ms_per_request"] = (after["decode_s"] - before["decode_s"]) * 1000 / max(served, 1)
            counts = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
            batches = sum(counts.values())
            entry["mean_batch_size"] = sum(k * v for k, v in counts.items()) / max(batches, 1)
            entry["batch_sizes"] = {k: v for k, v in sorted(counts.items()) if v}
        result["servers"][mode] = entry
    on, off = result["servers"]["batching on"], result["servers"]["batching off"]
    result["speedup"] = on["requests_per_s"] / off["requests_per_s"]
    return result


def markdown(result: dict) -> str:
    lines = [f"{result['images']} images of {result['size']}x{result['size']} px, model {result['model']}; "
             f"{result['clients']} concurrent clients on 127.0.0.1 for {result['seconds']:.0f} s, best of "
             f"{result['repeats']} alternated runs; one replica of one CPU per Serve application; batching on: "
             f"up to {result['max_batch_size']} ids, {result['batch_wait_ms']:g} ms wait", "",
             "| server | requests/s | p50 ms | p95 ms | p99 ms | errors | mean batch | decode ms/request |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, r in result["servers"].items():
        batch = f"{r['mean_batch_size']:.1f}" if "mean_batch_size" in r else "-"
        decode = f"{r['decode_ms_per_request']:.1f}" if "decode_ms_per_request" in r else "-"
        lines.append(f"| {mode} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['errors']} | {batch} | {decode} |")
    c = result["costs"]
    b = result["max_batch_size"]
    lines += ["", f"batching on / off: {result['speedup']:.2f}x requests/s",
              f"decode path in one process, ms per image: lookup {c['lookup_ms']:.2f}; decode + PNG "
              f"{c['decode_png_ms_batch1']:.1f} alone, {c[f'decode_png_ms_batch{b}']:.1f} in batches of {b}"]
    return "\n".join(lines) + "\n"


def write_result(result: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n" if out.suffix == ".json"
                   else "# Serve benchmark\n\n" + markdown(result))
    return out
