"""Parameter count and memory of the full-size models (random weights, nothing downloaded).

Usage: python benchmarks/model_size.py [--tokens 1024] [--rows 40]
Prints one table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from lass_cli.prior import Prior, PriorConfig
from lass_cli.vqvae import VQVAE, VQVAEConfig


def tensor_bytes(module: torch.nn.Module) -> int:
    tensors = {t.data_ptr(): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="context the cache is sized for")
    parser.add_argument("--rows", type=int, default=40, help="cache rows (windows x beams)")
    args = parser.parse_args()

    vqvae = VQVAE(VQVAEConfig())
    prior = Prior(PriorConfig())
    rows = {
        "vqvae_parameters": vqvae.num_parameters(),
        "vqvae_codebook_entries": sum(b.numel() for b in vqvae.buffers()),
        "vqvae_fp32_mb": tensor_bytes(vqvae) / 2**20,
        "prior_parameters": sum(p.numel() for p in prior.parameters()),
        "prior_fp32_mb": tensor_bytes(prior) / 2**20,
    }
    prior.set_compute_dtype(torch.float16)
    rows["prior_fp16_projections_mb"] = tensor_bytes(prior) / 2**20
    prior.set_compute_dtype(torch.float32)
    cache = prior.new_cache(rows=1, max_len=args.tokens)
    rows["prior_cache_mb_per_row_fp32"] = cache.nbytes() / 2**20
    rows["prior_cache_mb_fp32"] = rows["prior_cache_mb_per_row_fp32"] * args.rows

    start = time.perf_counter()
    audio = torch.randn(1, 131072) * 0.1
    tokens = vqvae.encode(audio)
    vqvae.decode(tokens)
    rows["vqvae_encode_decode_window_s_cpu"] = time.perf_counter() - start
    rows["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    width = max(len(k) for k in rows)
    for key, value in rows.items():
        shown = f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"
        print(f"{key:<{width}}  {shown}")
    print(json.dumps({"benchmark": "model_size", "tokens": args.tokens, "rows": args.rows, **rows}))


if __name__ == "__main__":
    main()
