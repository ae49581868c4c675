"""A step's float32 product on the CPU: ``lass_cli.cpu_kernel``'s panels against MKL's pack.

For each row count and each of the full-size prior's product shapes (n_in x n_out: the attention's
input 1024 x 768 and output 256 x 1024, the MLP's 1024 x 1024, the logits' 1024 x 2048), the
microseconds of one product by each way, hot (one weight, from the cache) and streamed (cycling
through 600 MB of distinct weights, as a step reads a full-size prior's, so each weight comes from
memory), best of ``--repeats`` passes; the ratio is MKL's time over the kernel's. One row uses
``addmm`` in place of MKL's pack (which needs two rows or more). The two ways alternate pass by
pass, so both meet the same moments of a shared machine.

Usage:
    python benchmarks/cpu_product.py --rows 1,10,40,64,100 --threads 2
Prints one table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lass_cli import cpu_kernel

SHAPES = [(1024, 768), (256, 1024), (1024, 1024), (1024, 2048)]
STREAMED_BYTES = 600 << 20


def ways(rows: int, weights: list[torch.Tensor]) -> dict:
    """Per way, a function of i: the product of the rows by weight i."""
    x = torch.randn(rows, weights[0].shape[0])
    bias = torch.randn(weights[0].shape[1])
    panels = [cpu_kernel.pack(w) for w in weights]
    n_out = weights[0].shape[1]
    if rows > 1:
        transposed = [w.t().contiguous() for w in weights]
        packs = [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in transposed]

        def mkl(i: int) -> torch.Tensor:
            return torch.ops.mkl._mkl_linear(x, packs[i], transposed[i], bias, rows)
    else:

        def mkl(i: int) -> torch.Tensor:
            return torch.addmm(bias, x, weights[i])

    return {"mkl": mkl, "kernel": lambda i: cpu_kernel.product(x, panels[i], n_out, bias)}


def best_us(functions: dict, count: int, repeats: int) -> dict:
    """Each function's best microseconds per call over ``repeats`` passes of ``count`` calls each,
    the functions taking turns pass by pass."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, product in functions.items():
            start = time.perf_counter()
            for i in range(count):
                product(i)
            best[name] = min(best[name], (time.perf_counter() - start) / count * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,10,40,64,100", help="row counts, comma-separated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if cpu_kernel.load() is None:
        raise SystemExit("the CPU kernel does not run here (needs Linux x86-64, a C compiler, AVX-512)")
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for n_in, n_out in SHAPES:
            torch.manual_seed(0)
            weights = [torch.randn(n_in, n_out) / n_in**0.5 for _ in range(STREAMED_BYTES // (4 * n_in * n_out))]
            functions = ways(rows, weights)
            hot = best_us({name: lambda i, f=f: f(0) for name, f in functions.items()}, 100, args.repeats)
            streamed = best_us(functions, len(weights), args.repeats)
            results.append({"rows": rows, "n_in": n_in, "n_out": n_out, "hot_us": hot, "streamed_us": streamed,
                            "hot_ratio": hot["mkl"] / hot["kernel"],
                            "streamed_ratio": streamed["mkl"] / streamed["kernel"]})  # fmt: skip
            del weights, functions
    columns = ("hot mkl", 8), ("kernel", 7), ("ratio", 6), ("streamed mkl", 13), ("kernel", 7), ("ratio", 6)
    print(f"{'rows':>4} {'shape':>11} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for r in results:
        print(f"{r['rows']:>4} {r['n_in']:>5}x{r['n_out']:<5} {r['hot_us']['mkl']:>8.1f} {r['hot_us']['kernel']:>7.1f} "
              f"{r['hot_ratio']:>5.2f}x {r['streamed_us']['mkl']:>13.1f} {r['streamed_us']['kernel']:>7.1f} "
              f"{r['streamed_ratio']:>5.2f}x")  # fmt: skip
    print(json.dumps({"benchmark": "cpu_product", "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
