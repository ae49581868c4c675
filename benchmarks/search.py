"""Beam search speed: our batched search next to a per-window loop in the upstream style.

Both run on the same priors (random weights, seeded, or a registry model's with ``--model``) and the
same likelihood (random counts with about ``--per-slice`` pairs per mixture token, or the model's),
each in a fresh process of this one command, one after the other. The upstream loop is a
straightforward port of the original: one window at a time, caches grown by concatenation and
copied on every reorder (:class:`ConcatCache`), all candidates' scores sorted. Per step it reports
the time inside the two prior calls (their union where they step side by side) and the time in
the rest (scoring, top-B, reordering), the time per token, the memory each search added at its
peak, the speed-up and whether the tokens agree.
Each timed search follows an untimed one of the first ``WARM_UP_STEPS`` steps (compiled: of all
of them), so that one-time costs are in neither figure.
Both processes keep freed memory in the C allocator, as the `lass` command does (``lass_cli.allocator``).

Usage examples:
    python benchmarks/search.py --width 128 --depth 4 --beams 10 --windows 8            # small priors
    python benchmarks/search.py --full --beams 10 --windows 4 --steps 64                # small_prior shape
    python benchmarks/search.py --model synth-drums-bass --beams 10 --windows 4 --steps 1024
    python benchmarks/search.py --full --beams 50 --windows 4 --steps 160 --no-upstream
    python benchmarks/search.py --model synth-drums-bass --beams 100 --windows 8 --steps 1024 --compile  # a GPU
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
from pathlib import Path

import numpy as np
import torch

from lass_cli.allocator import keep_freed_memory
from lass_cli.likelihood import Counts, Likelihood
from lass_cli.prior import COLUMN, PREVIOUS_ROW, ROW, Prior, PriorConfig
from lass_cli.search import beam_search
from lass_cli.separate import pick_dtype
from lass_cli.twins import TwinPriors

WARM_UP_STEPS = 8  # of an untimed search before the timed one


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PriorClock:
    """The time spent inside the priors' steps: the union of their intervals, as two priors may
    step side by side (``lass_cli.search``, on a CPU with two or more threads)."""

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float]] = []

    @property
    def seconds(self) -> float:
        total, reached = 0.0, float("-inf")
        for start, stop in sorted(self.intervals):
            total += max(0.0, stop - max(start, reached))
            reached = max(reached, stop)
        return total


def clock_steps(clock: PriorClock, device: torch.device) -> None:
    """Record on ``clock`` every prior step this process makes from now on, however the search
    steps the priors (one after the other, side by side or as twins, ``lass_cli.search``): the
    priors it is given are the real ones, so it chooses as `lass separate` does."""
    for kind in (Prior, TwinPriors):

        def timed(self, cache, previous, step=kind.step):
            synchronize(device)
            start = time.perf_counter()
            logits = step(self, cache, previous)
            synchronize(device)
            clock.intervals.append((start, time.perf_counter()))
            return logits

        kind.step = timed


class UpstreamPrior:
    """A prior as the upstream loop uses it: its caches the upstream :class:`ConcatCache` (the
    step is the same code); with ``clock_steps`` its steps are timed."""

    def __init__(self, prior: Prior) -> None:
        self.prior = prior

    def new_cache(self, rows, max_len=None, capacity=None):
        return ConcatCache(self.prior.config, rows, max_len or self.prior.config.n_ctx)

    def step(self, cache, previous):
        return self.prior.step(cache, previous)


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


class ConcatCache:
    """The upstream cache (Jukebox's ``_append_cache`` and ``_suff_cache_len``, reordered the way
    LASS does): per layer one tensor of keys and values (rows, positions, 2 x n_state) grown by
    ``torch.cat`` at every step and trimmed to what its kind reads (row layers the current row,
    previous-row layers the previous and current rows, column layers every position); a reorder
    indexes every layer's tensor, a copy of the whole cache. Same interface as ``PriorCache``."""

    fixed_shapes = False  # PriorCache's variable-length steps
    groups: dict = {}  # every row attends to its own copy of its keys

    def __init__(self, config: PriorConfig, rows: int, max_len: int) -> None:
        self.rows, self.max_len, self.t, self.block_ctx = rows, max_len, 0, config.block_ctx
        self._kind = [config.layer_kind(d) for d in range(config.prior_depth)]
        self._kv: list[torch.Tensor | None] = [None] * config.prior_depth

    def begin_step(self) -> None:
        pass

    def store(self, layer: int, kv: torch.Tensor) -> torch.Tensor | None:
        kind, bc, t = self._kind[layer], self.block_ctx, self.t
        row, col = divmod(t, bc)
        old = self._kv[layer]
        cached = kv[:, None] if old is None else torch.cat((old, kv[:, None]), 1)
        keep = {ROW: col + 1, PREVIOUS_ROW: t + 1 if t < bc else bc + col + 1, COLUMN: t + 1}[kind]
        self._kv[layer] = cached = cached[:, -keep:]
        if kind == ROW:
            return cached
        if kind == COLUMN:
            return cached[:, col::bc]
        return cached[:, :bc] if row else None

    def reorder(self, index: torch.Tensor) -> None:
        self._kv = [None if kv is None else kv[index] for kv in self._kv]
        self.rows = len(index)


def upstream_style(priors, likelihood, mixture: torch.Tensor, beams: int) -> tuple[torch.Tensor, ...]:
    """The upstream loop: one window at a time, caches grown by concatenation and copied on every
    reorder, every beam's candidate pairs scored, all flattened scores sorted ascending and the
    last B kept, histories concatenated. Scores are accumulated as in ``lass_cli.search`` (float64
    totals, float32 ranking offsets), so the two searches can agree token for token."""
    outputs = []
    for w in range(len(mixture)):
        plan = likelihood.plan(mixture[w : w + 1])
        length = plan.fallback.shape[1]
        caches = [p.new_cache(rows=1, max_len=length) for p in priors]
        cum = torch.zeros(1, device=likelihood.device, dtype=torch.float64)
        h1 = h2 = torch.zeros(1, 0, dtype=torch.long, device=likelihood.device)
        previous = (None, None)
        for t in range(length):
            lp1, lp2 = (torch.log_softmax(p.step(c, x), -1)[None] for p, c, x in zip(priors, caches, previous))
            z1, z2, post = (x[0] for x in likelihood.pairs(plan, t, lp1, lp2, beams))
            width = post.shape[1]
            base = (cum - cum.max()).float()
            order = torch.sort((base[:, None] + post).flatten()).indices[-beams:]
            parent, pair = order // width, order % width
            chosen = (z1[parent, pair], z2[parent, pair])
            h1 = torch.cat((h1[parent], chosen[0][:, None]), 1)
            h2 = torch.cat((h2[parent], chosen[1][:, None]), 1)
            cum = cum[parent] + post[parent, pair].double()
            if t + 1 < length:
                for cache in caches:
                    cache.reorder(parent)
            previous = chosen
        best = int(cum.argmax())
        outputs.append((h1[best], h2[best]))
    return torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])


def build(args: argparse.Namespace) -> tuple[list[Prior], Likelihood, torch.Tensor, torch.device]:
    """Priors, likelihood and mixture tokens, the same in every process (seeded)."""
    keep_freed_memory()
    device = torch.device(args.device)
    dtype = pick_dtype(device, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        return model_parts(args, device, dtype)
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


def model_parts(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """A registry model's priors and likelihood, and what that likelihood observes of W windows
    of the bundled example (``examples/mix.flac``, its windows repeated if it has fewer)."""
    from lass_cli import audio
    from lass_cli.registry import load_registry
    from lass_cli.separate import Separator

    spec = load_registry()[args.model]
    separator = Separator.load(spec, device, dtype)
    mix, rate = audio.load(Path(__file__).resolve().parents[1] / "examples" / "mix.flac")
    y = audio.resample(audio.to_mono(mix), rate, spec.sample_rate) / 2
    y = y * audio.gain_to(y, spec.input_rms)
    windows = audio.cut_windows(y.astype(np.float32), separator.window_samples, separator.window_samples)
    windows = np.resize(windows, (args.windows, windows.shape[1]))
    with torch.inference_mode():
        observed = separator.observe(torch.from_numpy(windows).to(device))[:, : args.steps]
    return list(separator.priors), separator.likelihood, observed, device


def run(mode: str, args: argparse.Namespace) -> dict:
    """One search in this process; returns its timings, tokens and peak memory."""
    priors, likelihood, mixture, device = build(args)
    search = beam_search if mode == "batched" else upstream_style
    compiled = args.compile and mode == "batched"
    if compiled:
        priors = [prior.compile_step() for prior in priors]
    clock = PriorClock()
    clock_steps(clock, device)
    timed = [UpstreamPrior(p) for p in priors] if mode == "upstream" else priors
    with torch.inference_mode():  # untimed, so that one-time costs (a GPU's libraries and kernels
        # loaded, memory pools grown: seconds, once; compiled, the tracing) are in neither figure
        search(timed, likelihood, mixture if compiled else mixture[:, :WARM_UP_STEPS], args.beams)
    clock.intervals.clear()
    gc.collect()
    with SearchMemory(device) as memory:
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            found = search(timed, likelihood, mixture, args.beams)
        tokens = found.tokens if mode == "batched" else found
        synchronize(device)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "prior_seconds": clock.seconds,
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
    parser.add_argument("--model", default=None, help="a registry model (e.g. synth-drums-bass)")
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
    parser.add_argument("--dtype", default="auto", help="auto (CPU float32, CUDA float16), float32, float16, bfloat16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="batched search with the priors' step compiled "
        "(Prior.compile_step: CUDA graphs on CUDA); timed after one untimed search that compiles",
    )
    args = parser.parse_args()

    ours = in_fresh_process("batched", args)
    config, tokens = ours["config"], args.windows * args.steps
    total, prior_s = ours["seconds"], ours["prior_seconds"]
    row = {
        "device": args.device,
        "dtype": ours["dtype"],
        "model": args.model or ("small_prior shape" if args.full else "small random priors"),
        "prior_width": config.prior_width,
        "prior_depth": config.prior_depth,
        "bins": config.bins,
        "pairs_per_slice": None if args.model else args.per_slice,
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
