"""VQ-VAE decoding: the transposed convs by phases (and the last one fused with the output conv)
against the plain transposed convs, side by side in one process.

``lass_cli.vqvae._Upsample`` computes each transposed conv of the decoder as s phases of one
two-tap conv, and the decoder composes its last one with the output conv; with
``_Upsample.phases`` answering None both fall back to ``nn.ConvTranspose1d`` and the plain output
conv, the original computation. Each way decodes the same random tokens, alternating, ``--repeats``
times; the table gives the median milliseconds per window of 1024 tokens, the ratio and the largest
difference between the two outputs. Models: the embedded VQ-VAE (``synth-drums-bass``) and, with
``--full``, the Jukebox 5B VQ-VAE's top level with random weights (44.1 kHz, hop 128).

Usage:
    python benchmarks/decode.py --windows 2 --threads 2 --full
Prints one table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lass_cli import vqvae as vqvae_module
from lass_cli.allocator import keep_freed_memory
from lass_cli.registry import load_registry, require
from lass_cli.vqvae import VQVAE, VQVAEConfig

TOKENS = 1024
JUKEBOX = dict(levels=3, downs_t=(3, 2, 2), strides_t=(2, 2, 2), emb_width=64, l_bins=2048, width=32, depth=4,
               m_conv=1.0, dilation_growth_rate=3, hvqvae_multipliers=(2, 1, 1), sr=44100)  # fmt: skip


def time_decode(model: VQVAE, tokens: torch.Tensor, phased: bool) -> tuple[float, torch.Tensor]:
    """Seconds of one decode of ``tokens``, by phases or by the plain transposed convs."""
    original = vqvae_module._Upsample.phases
    if not phased:
        vqvae_module._Upsample.phases = lambda self: None
    try:
        start = time.perf_counter()
        audio = model.decode(tokens)
        return time.perf_counter() - start, audio
    finally:
        vqvae_module._Upsample.phases = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2, help="windows decoded at once")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--full", action="store_true", help="also the Jukebox 5B VQ-VAE's top level (random weights)")
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = load_registry()["synth-drums-bass"]
    models = {"synth-drums-bass": VQVAE.from_checkpoint(require(spec, spec.vqvae))}
    if args.full:
        models["jukebox 5b top level (random)"] = VQVAE(VQVAEConfig(**JUKEBOX))
    results = []
    for name, model in models.items():
        tokens = torch.randint(0, model.config.l_bins, (args.windows, TOKENS))
        times: dict[bool, list[float]] = {True: [], False: []}
        outputs = {}
        for round_ in range(args.repeats + 1):  # the first round warms up, untimed
            for phased in (False, True):
                seconds, outputs[phased] = time_decode(model, tokens, phased)
                if round_:
                    times[phased].append(seconds)
        plain, phased = (1e3 * statistics.median(times[p]) / args.windows for p in (False, True))
        difference = float((outputs[True] - outputs[False]).abs().max())
        results.append({"model": name, "windows": args.windows, "plain_ms_per_window": plain,
                        "phased_ms_per_window": phased, "speedup": plain / phased,
                        "max_abs_difference": difference})  # fmt: skip
    print(f"{'model':<32} {'windows':>7} {'plain ms':>9} {'phased ms':>10} {'speed-up':>9} {'max |diff|':>11}")
    for r in results:
        print(f"{r['model']:<32} {r['windows']:>7} {r['plain_ms_per_window']:>9.1f} {r['phased_ms_per_window']:>10.1f} "
              f"{r['speedup']:>8.2f}x {r['max_abs_difference']:>11.2e}")  # fmt: skip
    print(json.dumps({"benchmark": "decode", "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
