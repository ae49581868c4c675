"""Beam search speed: our batched search next to a per-window loop in the upstream style.

Both run on the same priors (random weights, seeded) and the same random likelihood, each in a fresh
process of this one command, one after the other. Per step it reports the time inside the two prior
calls and the time in the rest (scoring, top-B, reordering), the time per token, and the memory
each search added at its peak.

Usage examples:
    python benchmarks/search.py --width 128 --depth 4 --beams 10 --windows 8            # small priors
    python benchmarks/search.py --full --beams 50 --windows 4 --steps 160 --no-upstream  # small_prior shape
Prints one table and one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from lass_cli.likelihood import Counts, Likelihood
from lass_cli.prior import Prior, PriorConfig
from lass_cli.search import beam_search


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedPrior:
    """Forwards the search interface to a prior and adds up the time spent in ``step``."""

    def __init__(self, prior: Prior) -> None:
        self.prior, self.seconds = prior, 0.0

    def new_cache(self, rows, max_len=None, capacity=None):
        return self.prior.new_cache(rows, max_len, capacity)

    def step(self, cache, previous):
        synchronize(self.prior.device)
        start = time.perf_counter()
        logits = self.prior.step(cache, previous)
        synchronize(self.prior.device)
        self.seconds += time.perf_counter() - start
        return logits


class SearchMemory:
    """Peak memory added while a block runs: CUDA's peak allocation, or on CPU the resident size
    sampled every 5 ms minus the size before the block."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> SearchMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._peak = self._rss()
        self._stop = threading.Event()

        def watch() -> None:
            while not self._stop.wait(0.005):
                self._peak = max(self._peak, self._rss())

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = (max(self._peak, self._rss()) - self._base) / 2**20


def randomize(prior: Prior) -> Prior:
    """Weights that make the priors decisive, as trained ones are (the default init gives nearly
    flat distributions, whose near-ties make any two float orders pick different beams)."""
    with torch.no_grad():
        for name, param in prior.named_parameters():
            if name.endswith(".w"):
                param.normal_(0, 1 / param.shape[0] ** 0.5)
            elif name.endswith(".b"):
                param.normal_(0, 0.05)
            elif "ln_" in name:
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            else:
                param.normal_(0, 0.3)
    return prior


def random_likelihood(bins: int, per_slice: int, seed: int, device: torch.device) -> Likelihood:
    """About ``per_slice`` distinct (z1, z2) pairs for every mixture token, random counts."""
    rng = np.random.default_rng(seed)
    m = np.repeat(np.arange(bins, dtype=np.int64), per_slice)
    z1, z2 = rng.integers(0, bins, (2, len(m)))
    keys, values = np.unique((z1 * bins + z2) * bins + m, return_counts=True)
    return Counts(bins, keys, values * rng.integers(1, 50, len(values))).likelihood(3.0, device)


def upstream_style(priors, likelihood: Likelihood, mixture: torch.Tensor, beams: int) -> tuple[torch.Tensor, ...]:
    """One window at a time: score the slice's pairs for every beam, sort all flattened scores
    ascending, keep the last B, reorder caches and concatenate histories (as the upstream loop).
    Scores are accumulated as in ``lass_cli.search`` (float64 totals), so the two can agree exactly."""
    outputs = []
    for window in mixture:
        caches = [p.new_cache(rows=1, max_len=len(window), capacity=beams) for p in priors]
        cum = torch.zeros(1, device=likelihood.device, dtype=torch.float64)
        h1 = h2 = torch.zeros(1, 0, dtype=torch.long, device=likelihood.device)
        previous = (None, None)
        for t, m in enumerate(window.tolist()):
            lp1, lp2 = (torch.log_softmax(p.step(c, x), -1) for p, c, x in zip(priors, caches, previous))
            start, end = int(likelihood.offsets[m]), int(likelihood.offsets[m + 1])
            z1, z2, ll = likelihood.z1[start:end], likelihood.z2[start:end], likelihood.scores[start:end]
            post = (ll[None] + lp1[:, z1] + lp2[:, z2]).flatten()
            base = (cum - cum.max()).float()  # rank in float32 near the best prefix, sum in float64
            order = torch.sort(base.repeat_interleave(len(z1)) + post).indices[-beams:]
            parent, pair = order // len(z1), order % len(z1)
            h1 = torch.cat((h1[parent], z1[pair][:, None]), 1)
            h2 = torch.cat((h2[parent], z2[pair][:, None]), 1)
            cum = cum[parent] + post[order].double()
            if t + 1 < len(window):
                for cache in caches:
                    cache.reorder(parent)
            previous = (z1[pair], z2[pair])
        best = int(cum.argmax())
        outputs.append((h1[best], h2[best]))
    return torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])


def build(args: argparse.Namespace) -> tuple[list[Prior], Likelihood, torch.Tensor, torch.device]:
    """Priors, likelihood and mixture tokens, the same in every process (seeded)."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.full:
        config = PriorConfig(l_bins=args.bins)
    else:
        config = PriorConfig(
            n_ctx=max(1024, args.steps), prior_width=args.width, prior_depth=args.depth, blocks=8, l_bins=args.bins
        )
    priors = [randomize(Prior(config)).to(device).set_compute_dtype(dtype) for _ in range(2)]
    likelihood = random_likelihood(args.bins, args.per_slice, 0, device)
    mixture = torch.randint(0, args.bins, (args.windows, args.steps), generator=torch.Generator().manual_seed(1))
    return priors, likelihood, mixture, device


def run(mode: str, args: argparse.Namespace) -> dict:
    """One search in this process; returns its timings, tokens and peak memory."""
    priors, likelihood, mixture, device = build(args)
    timed = [TimedPrior(p) for p in priors]
    gc.collect()
    with SearchMemory(device) as memory:
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            if mode == "batched":
                tokens = beam_search(timed, likelihood, mixture, args.beams).tokens
            else:
                tokens = upstream_style(timed, likelihood, mixture, args.beams)
        synchronize(device)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "prior_seconds": sum(t.seconds for t in timed),
        "peak_mb": memory.peak_mb,
        "tokens": [t.cpu().numpy() for t in tokens],
        "config": priors[0].config,
        "dtype": str(priors[0].compute_dtype).removeprefix("torch."),
    }


def in_fresh_process(mode: str, args: argparse.Namespace) -> dict:
    """Run ``mode`` in its own process so that each peak memory figure is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run, mode, args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="small_prior shape: width 1024, depth 48, blocks 64")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--bins", type=int, default=2048)
    parser.add_argument("--per-slice", type=int, default=5000, help="nonzero pairs per mixture token")
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=256, help="tokens per window (1024 in LASS)")
    parser.add_argument("--no-upstream", action="store_true", help="skip the per-window loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or float16/bfloat16 (CUDA default fp16)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    ours = in_fresh_process("batched", args)
    config, tokens = ours["config"], args.windows * args.steps
    total, prior_s = ours["seconds"], ours["prior_seconds"]
    row = {
        "device": args.device,
        "dtype": ours["dtype"],
        "prior_width": config.prior_width,
        "prior_depth": config.prior_depth,
        "bins": args.bins,
        "pairs_per_slice": args.per_slice,
        "beams": args.beams,
        "windows": args.windows,
        "steps": args.steps,
        "threads": args.threads or torch.get_num_threads(),
        "batched_s": total,
        "batched_ms_per_step": 1000 * total / args.steps,
        "batched_ms_per_token": 1000 * total / tokens,
        "prior_ms_per_step": 1000 * prior_s / args.steps,
        "rest_ms_per_step": 1000 * (total - prior_s) / args.steps,
        "rest_fraction": (total - prior_s) / total,
        "batched_peak_mb": ours["peak_mb"],
    }
    if not args.no_upstream:
        theirs = in_fresh_process("upstream", args)
        row.update(
            upstream_s=theirs["seconds"],
            upstream_ms_per_token=1000 * theirs["seconds"] / tokens,
            upstream_peak_mb=theirs["peak_mb"],
            speedup=theirs["seconds"] / total,
            identical_tokens=all((a == b).all() for a, b in zip(ours["tokens"], theirs["tokens"])),
        )
    width = max(map(len, row))
    for key, value in row.items():
        print(f"{key:<{width}}  {value:,.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(json.dumps({"benchmark": "search", **row}))


if __name__ == "__main__":
    main()
