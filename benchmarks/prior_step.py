"""One prior step against the machine's own matrix-multiply throughput.

For the full ``small_prior`` shape (random weights: width 1024, depth 48, 1 head, attn_order 2,
blocks 64, K 2048, a cache for 1024 tokens) and the embedded model's priors, at several row counts:
the time of one incremental step early (t < 128) and late (t > 896) in the window, the step's FLOPs
(projections, MLPs, attention over what each layer reads, the output projection) and the GFLOP/s it
achieves; in the same run, the GFLOP/s of a plain matmul of the step's largest shape (rows x width
by width x K, the output projection) at the same row count; their ratio is the efficiency. Steps
and rounds of that matmul alternate (timed apart, the matmul gave 191 and 281 GFLOP/s in two runs
of one hour, the steps moved far less), and the lines of a row count take turns, one step each per
round, so that every line meets the same moments of the shared machine as the reference does; the
reference is the best round of all, the step its best of ``--repeats`` ("eff", the least disturbed
by the shared machine) and its median ("(med)"). "streamed" is the same matmul cycling through as
many bytes of distinct weights as the prior has, so that, as in a step, the weights come from
memory rather than from the cache; on a machine with little memory bandwidth per core it is the
nearer limit. It and "packed" (the step's own product, hot: the CPU kernel's up to 64 rows where it
runs, else MKL's pack) are timed once per row count, before the steps. The late position is reached
by filling the cache with random keys and setting its position, not by stepping through the window
(the step's cost does not depend on the keys), with three ancestries (which earlier row each row's
key at each position comes from): "shared", every window's beams one history (the keys a layer
gathers come from the cache); "search", the ancestry a real beam search has at that position (the
bundled model's, B = 10, on the example's first windows, its reorders replayed), where a window's
beams share most of their keys and differ in the last few positions; "distinct", every row its own
history from the first position, as in a sampler's search (which never reorders its rows, so its
layers read their keys where they lie, without a gather; no beam search has such rows)
(``ancestry_of``). Last, "x2": both priors of a model (two full-size priors of random weights; the
embedded drums and bass) stepped at once as a search steps them (``lass_cli.search``: side by side
in two threads on a CPU where their weights are large, as twins, one stacked computation, where
they are small), with a real search's ancestry, their FLOPs both priors'. The C allocator keeps
freed blocks, as the `lass` command sets it (``lass_cli.allocator``): a step's activations are
reused, not faulted in anew.

It then derives, from the same FLOP count and a count of the bytes a step moves, an estimate for
the full-size model at B = 100 (both priors, 1 and 8 windows at once) on one H100 SXM and one RTX
3090 from their published peak figures: the step cannot be faster than its FLOPs at peak tensor
throughput nor than its bytes at peak memory bandwidth; without CUDA graphs each of its kernels
also costs a launch (about 5 us). An estimate, not a measurement.

Usage:
    python benchmarks/prior_step.py --rows 1,10,40,100 --threads 2
Prints one table and one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable

import torch

from lass_cli.allocator import keep_freed_memory
from lass_cli.prior import COLUMN, PREVIOUS_ROW, ROW, Prior, PriorCache, PriorConfig, _linear, _PackedWeight
from lass_cli.registry import load_registry, require
from lass_cli.search import _both_priors, beam_search

WINDOW = 1024
POSITIONS = {"early": 100, "late": 900}
HISTORIES = ("shared", "search", "distinct")
BEAMS = 10  # rows per window, for shared histories
ROUNDS = 5  # the reference matmuls' best of five timings: on a shared machine, the nearest to the limit


def attended(config: PriorConfig, t: int) -> dict[int, int]:
    """Positions each kind of layer attends to at position t."""
    row, col = divmod(t, config.block_ctx)
    return {ROW: col + 1, COLUMN: row + 1, PREVIOUS_ROW: config.block_ctx if row else 0}


def step_flops(config: PriorConfig, t: int) -> float:
    """Multiply-adds x 2 of one step of one row at position t."""
    width, state, hidden = config.prior_width, config.n_state, int(config.m_mlp * config.prior_width)
    keys = attended(config, t)
    total = 0.0
    for layer in range(config.prior_depth):
        attends = keys[config.layer_kind(layer)]
        total += 2 * width * 3 * state + 2 * 2 * width * hidden  # qkv, MLP
        # the attention's output projection, scores and weighted values (row 0's previous-row
        # layers attend to nothing: their output is the projection's bias, no product)
        total += (2 * state * width + 2 * 2 * attends * state) if attends else 0
    return total + 2 * width * config.bins  # the output projection


def step_bytes(config: PriorConfig, t: int, rows: int, size: int) -> float:
    """Bytes one step of ``rows`` rows moves at position t with ``size``-byte projections: every
    weight read once, each layer's new keys written, and what attention reads gathered (read,
    written) and read again; the float32 output projection (the tied embedding) read once."""
    width, state, hidden = config.prior_width, config.n_state, int(config.m_mlp * config.prior_width)
    keys = attended(config, t)
    total = 4.0 * width * config.bins
    for layer in range(config.prior_depth):
        attends = keys[config.layer_kind(layer)]
        total += size * (3 * width * state + (state * width if attends else 0) + 2 * width * hidden)
        total += size * rows * 2 * state * (1 + 3 * attends)
    return total


# Published peaks: dense fp16 tensor FLOP/s (fp32 accumulate) and memory bandwidth.
GPUS = {"H100 SXM": (989e12, 3.35e12), "RTX 3090": (71e12, 936e9)}
KERNELS_PER_LAYER = 20  # launches of one layer's step (projections, norms, attention, adds)
LAUNCH_S = 5e-6


def gpu_estimates(beams: int = 100, windows: tuple[int, ...] = (1, 8)) -> list[dict]:
    """Per step and per 1024-token window, both priors, fp16, at B = ``beams``."""
    config, out = PriorConfig(), []
    for w in windows:
        rows = w * beams
        ts = range(0, WINDOW, 64)
        flops = 2 * sum(rows * step_flops(config, t) for t in ts) / len(ts)
        moved = 2 * sum(step_bytes(config, t, rows, 2) for t in ts) / len(ts)
        launches = 2 * config.prior_depth * KERNELS_PER_LAYER * LAUNCH_S
        for gpu, (peak, bandwidth) in GPUS.items():
            bound = max(flops / peak, moved / bandwidth)
            out.append({"gpu": gpu, "windows": w, "rows_per_prior": rows, "gflop_per_step": flops / 1e9,
                        "gb_per_step": moved / 1e9, "bound_ms": 1e3 * bound,
                        "with_launches_ms": 1e3 * (bound + launches),
                        "seconds_per_window": WINDOW * (bound + launches) / w})  # fmt: skip
    return out


def search_ancestries(rows: int, positions: list[int]) -> dict[int, torch.Tensor]:
    """The ancestry tables (rows, t) of a real beam search at each position t: the bundled model's
    search (B = ``BEAMS``, fewer for fewer rows) over ``rows // B`` windows of the example, its
    reorders noted and replayed. Entry (i, p): the row slot that wrote the key row i reads at p."""
    from search import model_parts  # benchmarks/search.py

    beams = min(rows, BEAMS)
    spec = argparse.Namespace(model="synth-drums-bass", windows=rows // beams, steps=max(positions) + 1)
    priors, likelihood, observed, _ = model_parts(spec, torch.device("cpu"), torch.float32)
    reorders: list[torch.Tensor] = []
    beam_search((_Noted(priors[0], reorders), priors[1]), likelihood, observed, beams)
    ancestry, tables = torch.zeros(rows // beams, 0, dtype=torch.long), {}
    for t, index in enumerate(reorders, start=1):
        ancestry = torch.cat((ancestry, torch.arange(len(ancestry))[:, None]), 1)[index]
        if t in positions:
            tables[t] = ancestry
    return tables


class _Noted:
    """A prior whose caches note every reorder (a search's parent rows, step by step) in ``log``."""

    def __init__(self, prior: Prior, log: list[torch.Tensor]) -> None:
        self.prior, self.log = prior, log

    def new_cache(self, rows: int, max_len: int | None = None, capacity: int | None = None):
        cache = self.prior.new_cache(rows, max_len, capacity)
        reorder = cache.reorder

        def noted(index: torch.Tensor) -> None:
            self.log.append(index.clone())
            reorder(index)

        cache.reorder = noted
        return cache

    def step(self, cache, previous: torch.Tensor | None) -> torch.Tensor:
        return self.prior.step(cache, previous)


def ancestry_of(histories: str, rows: int, t: int, searched: dict[int, torch.Tensor]) -> torch.Tensor:
    """(rows, t): "shared", every ``BEAMS`` rows (a window's beams) descend from one row at every
    earlier position; "distinct", each row from itself; "search", the recorded search's."""
    if histories == "search":
        return searched[t]
    slots = torch.arange(rows)
    return (slots if histories == "distinct" else slots // BEAMS * BEAMS)[:, None].expand(rows, t)


def filled(caches: list[PriorCache]) -> list[PriorCache]:
    """``caches`` (new, for a whole window) with random keys; every line's timing then sets their
    position and ancestry (:func:`_clocked`)."""
    for cache in caches:
        for store in cache._stores.values():
            store.normal_()
    return caches


def _clocked(
    caches: list[PriorCache], t: int, ancestry: torch.Tensor, step: Callable[[], object]
) -> Callable[[], float]:
    """A function timing ``step`` in seconds, its caches set to position t and ``ancestry`` (rows,
    t) each time (lines share caches); called twice first, to warm up (the second packs the
    weights for these rows). Rows that each descend from themselves are those of a cache never
    reordered (a sampler's), which reads its keys in place; any other ancestry is a reordered one's."""
    rows = len(ancestry)
    reordered = not torch.equal(ancestry, torch.arange(rows)[:, None].expand(rows, t))

    def one() -> float:
        for cache in caches:
            cache.t, cache.reordered = t, reordered
            cache._ancestry[:rows, :t] = ancestry
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    one(), one()
    return one


def step_timer(prior: Prior, cache: PriorCache, t: int, ancestry: torch.Tensor) -> Callable[[], float]:
    """A function timing one step of ``cache``'s rows at position t, in seconds, with the
    ancestry (rows, t) given (:func:`ancestry_of`)."""
    previous = torch.randint(0, prior.config.bins, (cache.rows,))
    return _clocked([cache], t, ancestry, lambda: prior.step(cache, previous))


def pair_timer(priors: tuple[Prior, Prior], caches: list, t: int, ancestry: torch.Tensor, steps) -> Callable[[], float]:
    """:func:`step_timer` for both priors at once, stepped by ``steps`` (``lass_cli.search``'s own:
    side by side or as twins where the search steps them so) with its ``caches``."""
    previous = tuple(torch.randint(0, prior.config.bins, (caches[0].rows,)) for prior in priors)
    return _clocked(caches, t, ancestry, lambda: steps.step(caches, previous))


def matmul_timer(
    rows: int, n_in: int, n_out: int, repeats: int, weight_bytes: int = 0, packed: bool = False
) -> Callable[[], float]:
    """A function timing ``repeats`` products (rows x n_in) by (n_in x n_out), in GFLOP/s. With
    ``weight_bytes``, the products cycle through that many bytes of distinct weight matrices, so
    each one comes from memory, not from the cache, as in a prior step, which reads every layer's
    weights once. ``packed``: by the step's own projection (``lass_cli.cpu_kernel``'s panels or
    MKL's pack where they apply) instead of ``torch.mm``."""
    count = max(1, weight_bytes // (4 * n_in * n_out))
    a, weights = torch.randn(rows, n_in), [torch.randn(n_in, n_out) for _ in range(count)]
    packs = [_PackedWeight.of(w.t(), rows, None) if packed else None for w in weights]
    products = max(repeats, 2 * count)

    def one() -> float:
        start = time.perf_counter()
        for i in range(products):
            if packed:
                _linear(a, weights[i % count].t(), None, packs[i % count])
            else:
                torch.mm(a, weights[i % count])
        return 2 * rows * n_in * n_out * products / (time.perf_counter() - start) / 1e9

    one()  # to warm up
    return one


def interleaved(
    steps: list[Callable[[], float]], hot: Callable[[], float], repeats: int
) -> tuple[list[list[float]], float]:
    """``repeats`` rounds, each timing every line's step once, each step after a round of the hot
    matmul, so that every line and the reference see the machine's same moments (a shared machine
    drifts by 10 % and more within minutes; lines timed one after the other each met another
    phase of it, their reference the best of all): each line's seconds and the best matmul GFLOP/s."""
    times, best = [[] for _ in steps], 0.0
    for _ in range(repeats):
        for step, kept in zip(steps, times):
            best = max(best, hot())
            kept.append(step())
    return times, best


def table_line(model: str, priors: int, rows: int, histories: str, where: str, t: int, times: list[float],
         config: PriorConfig) -> dict:  # fmt: skip
    """One line of the table: ``priors`` priors of ``config``'s shape, ``rows`` rows each."""
    flops = priors * rows * step_flops(config, t)
    return {"model": model, "priors": priors, "rows": rows, "histories": histories, "position": where, "t": t,
            "ms_best": 1000 * min(times), "ms_median": 1000 * sorted(times)[len(times) // 2],
            "gflop": flops / 1e9, "gflops": flops / min(times) / 1e9}  # fmt: skip


def best_gflops(timer: Callable[[], float]) -> float:
    return max(timer() for _ in range(ROUNDS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,10,40,100")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7, help="steps per line, each after a hot matmul")
    parser.add_argument("--no-full", action="store_true", help="only the embedded model's priors")
    args = parser.parse_args()
    if any(int(r) > BEAMS and int(r) % BEAMS for r in args.rows.split(",")):
        parser.error(f"--rows: above {BEAMS}, multiples of {BEAMS} (windows of {BEAMS} beams)")
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models, pairs = {}, {}
    if not args.no_full:
        models["small_prior (full)"] = Prior(PriorConfig()).requires_grad_(False)
        pairs["small_prior (full)"] = tuple(Prior(PriorConfig()).requires_grad_(False) for _ in range(2))
    spec = load_registry()["synth-drums-bass"]
    models["synth-drums-bass drums"] = Prior.from_checkpoint(require(spec, spec.priors["drums"]))
    pairs["synth-drums-bass drums"] = tuple(Prior.from_checkpoint(require(spec, spec.priors[s])) for s in spec.stems)
    results, searched = [], {}
    for name, prior in models.items():
        config = prior.config
        for rows in [int(r) for r in args.rows.split(",")]:
            if rows not in searched:
                searched[rows] = search_ancestries(rows, list(POSITIONS.values()))
            hot = matmul_timer(rows, config.prior_width, config.bins, 20)
            streamed = best_gflops(matmul_timer(rows, config.prior_width, config.bins, 20, prior.weight_bytes))
            packed = best_gflops(matmul_timer(rows, config.prior_width, config.bins, 20, packed=True))
            labels, timers = [], []  # every line of a row count, timed in turns (:func:`interleaved`)
            [cache] = filled([prior.new_cache(rows=rows, max_len=WINDOW)])
            for histories, (where, t) in itertools.product(HISTORIES, POSITIONS.items()):
                labels.append((name, 1, histories, where, t))
                timers.append(step_timer(prior, cache, t, ancestry_of(histories, rows, t, searched[rows])))
            with _both_priors(pairs[name], torch.device("cpu"), 1.0) as steps:
                caches = filled(steps.new_caches(rows, WINDOW))
                for where, t in POSITIONS.items():
                    labels.append((f"{name.split()[0]} x2", 2, "search", where, t))
                    ancestry = ancestry_of("search", rows, t, searched[rows])
                    timers.append(pair_timer(pairs[name], caches, t, ancestry, steps))
                times, limit = interleaved(timers, hot, args.repeats)  # one reference per row count
            lines = [table_line(model, priors, rows, histories, where, t, kept, config)
                     for (model, priors, histories, where, t), kept in zip(labels, times)]  # fmt: skip
            del cache, caches, timers
            for line in lines:
                gflops, median_gflops = line["gflops"], line["gflop"] / line["ms_median"] * 1e3
                line.update({"matmul_gflops": limit, "efficiency": gflops / limit,
                             "efficiency_median": median_gflops / limit, "matmul_streamed_gflops": streamed,
                             "efficiency_streamed": gflops / streamed, "matmul_packed_gflops": packed,
                             "efficiency_packed": gflops / packed})  # fmt: skip
            results.extend(lines)
    print(
        f"{'model':<24} {'rows':>5} {'histories':>9} {'pos':>6} {'best ms':>8} {'median':>7} {'GFLOP':>7} "
        f"{'GFLOP/s':>8} {'matmul':>7} {'eff':>5} {'(med)':>5} {'streamed':>9} {'eff':>5} {'packed':>7} {'eff':>5}"
    )
    for r in results:
        print(f"{r['model']:<24} {r['rows']:>5} {r['histories']:>9} {r['position']:>6} {r['ms_best']:>8.2f} "
              f"{r['ms_median']:>7.2f} {r['gflop']:>7.3f} {r['gflops']:>8.1f} {r['matmul_gflops']:>7.1f} "
              f"{r['efficiency']:>5.0%} {r['efficiency_median']:>5.0%} "
              f"{r['matmul_streamed_gflops']:>9.1f} {r['efficiency_streamed']:>5.0%} "
              f"{r['matmul_packed_gflops']:>7.1f} {r['efficiency_packed']:>5.0%}")  # fmt: skip
    estimates = gpu_estimates()
    print("\nEstimate (not measured), full-size model, B = 100, both priors, fp16:")
    print(f"{'gpu':<10} {'windows':>7} {'GFLOP':>8} {'GB':>6} {'bound ms':>9} {'+launch ms':>11} {'s/window':>9}")
    for e in estimates:
        print(f"{e['gpu']:<10} {e['windows']:>7} {e['gflop_per_step']:>8.1f} {e['gb_per_step']:>6.2f} "
              f"{e['bound_ms']:>9.2f} {e['with_launches_ms']:>11.2f} {e['seconds_per_window']:>9.2f}")  # fmt: skip
    print(json.dumps({"benchmark": "prior_step", "threads": torch.get_num_threads(), "results": results,
                      "gpu_estimates": estimates}))  # fmt: skip


if __name__ == "__main__":
    main()
