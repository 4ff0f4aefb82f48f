"""Latency of a running catvae_jax.serve: p50 / p99 of GET /grid.png at several concurrencies.

Start the service, then point this at it:

    python -m catvae_jax.serve --workdir runs/quickstart --port 8000 &
    python benchmarks/serve_latency.py --url http://127.0.0.1:8000 --n 64 --concurrency 1 8

Each client sends its requests back to back with a fresh random grid each time (no seed), after
a few warm-up requests; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np


def measure(url: str, n: int, requests: int, concurrency: int) -> dict:
    """Latencies (ms) of `requests` GET /grid.png?n=n sent by `concurrency` parallel clients."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as client:

        def one(_: int) -> float:
            start = time.perf_counter()
            r = client.get("/grid.png", params={"n": n})
            r.raise_for_status()
            return (time.perf_counter() - start) * 1000

        for _ in range(3):
            one(0)
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            times = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    p50, p99 = np.percentile(times, [50, 99])
    return {"concurrency": concurrency, "p50": p50, "p99": p99, "rps": requests / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--n", type=int, default=64, help="images per grid")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = p.parse_args()
    health = httpx.get(args.url + "/healthz", timeout=10).json()
    print(
        f"model: {health.get('model')} at {health.get('image_size')} px, step {health.get('step')}"
    )
    print(f"\n| GET /grid.png?n={args.n} | p50 (ms) | p99 (ms) | requests/s |\n|---|---|---|---|")
    for c in args.concurrency:
        r = measure(args.url, args.n, args.requests, c)
        print(f"| {c} concurrent | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
