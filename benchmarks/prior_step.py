"""One prior step against the machine's own matrix-multiply throughput.

For the full ``small_prior`` shape (random weights: width 1024, depth 48, 1 head, attn_order 2,
blocks 64, K 2048, a cache for 1024 tokens) and the embedded model's priors, at several row
counts: the time of one incremental step early (t < 128) and late (t > 896) in the window, the
step's FLOPs (projections, MLPs, attention over what each layer reads, the output projection) and
the GFLOP/s it achieves; in the same run, the GFLOP/s of a plain matmul of the step's largest
shape (rows x width by width x K, the output projection) at the same row count; their ratio is
the efficiency. The late position is reached by filling the cache with random keys and setting
its position, not by stepping through the window (the step's cost does not depend on the keys).

Usage:
    python benchmarks/prior_step.py --rows 1,10,40,100 --threads 2
Prints one table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lass_cli.prior import COLUMN, PREVIOUS_ROW, ROW, Prior, PriorConfig
from lass_cli.registry import load_registry, require

WINDOW = 1024
POSITIONS = {"early": 100, "late": 900}


def step_flops(config: PriorConfig, t: int) -> float:
    """Multiply-adds x 2 of one step of one row at position t."""
    width, state, hidden, bc = (
        config.prior_width,
        config.n_state,
        int(config.m_mlp * config.prior_width),
        config.block_ctx,
    )
    row, col = divmod(t, bc)
    keys = {ROW: col + 1, COLUMN: row + 1, PREVIOUS_ROW: bc if row else 0}
    total = 0.0
    for layer in range(config.prior_depth):
        total += 2 * width * 3 * state + 2 * state * width + 2 * 2 * width * hidden  # qkv, proj, MLP
        total += 2 * 2 * keys[config.layer_kind(layer)] * state  # scores and weighted values
    return total + 2 * width * config.bins  # the output projection


def time_step(prior: Prior, rows: int, t: int, repeats: int) -> float:
    """Seconds of one step of ``rows`` rows at position t (median of ``repeats``)."""
    cache = prior.new_cache(rows=rows, max_len=WINDOW)
    for store in cache._stores.values():
        store.normal_()
    cache.t = t
    previous = torch.randint(0, prior.config.bins, (rows,))
    times = []
    for _ in range(repeats + 1):
        cache.t = t
        start = time.perf_counter()
        prior.step(cache, previous)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def matmul_gflops(rows: int, n_in: int, n_out: int, repeats: int) -> float:
    a, b = torch.randn(rows, n_in), torch.randn(n_in, n_out)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * rows * n_in * n_out * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,10,40,100")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-full", action="store_true", help="only the embedded model's priors")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {}
    if not args.no_full:
        models["small_prior (full)"] = Prior(PriorConfig()).requires_grad_(False)
    spec = load_registry()["synth-drums-bass"]
    models["synth-drums-bass drums"] = Prior.from_checkpoint(require(spec, spec.priors["drums"]))
    results = []
    for name, prior in models.items():
        config = prior.config
        for rows in [int(r) for r in args.rows.split(",")]:
            limit = matmul_gflops(rows, config.prior_width, config.bins, 20)
            for where, t in POSITIONS.items():
                seconds = time_step(prior, rows, t, args.repeats)
                flops = rows * step_flops(config, t)
                gflops = flops / seconds / 1e9
                results.append({"model": name, "rows": rows, "position": where, "t": t, "ms": 1000 * seconds,
                                "gflop": flops / 1e9, "gflops": gflops, "matmul_gflops": limit,
                                "efficiency": gflops / limit})  # fmt: skip
    print(f"{'model':<24} {'rows':>5} {'pos':>6} {'ms/step':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'matmul':>8} {'eff':>6}")
    for r in results:
        print(f"{r['model']:<24} {r['rows']:>5} {r['position']:>6} {r['ms']:>9.2f} {r['gflop']:>8.3f} "
              f"{r['gflops']:>8.1f} {r['matmul_gflops']:>8.1f} {r['efficiency']:>6.0%}")  # fmt: skip
    print(json.dumps({"benchmark": "prior_step", "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
