"""The quality table of docs/quality.md: baselines and every LASS variant on the same mixtures.

Runs ``lass evaluate`` once per variant, all on the same seeded selection of chunks (so every row of
the table is measured on the same mixtures, in this one command), and writes each report plus a
markdown table of mean SDR (museval, 1 s frames, median per mixture) per stem:

- the baselines of the first report: the mixture itself, the low/high-pass split, the VQ-VAE oracle;
- counted LASS (``--counted MODEL``: a model with the counted likelihood), beam search;
- the LQ-VAE latent likelihood (``--latent MODEL``): beam search; sampling with the soft masks
  averaged over all samples (the model's ``wiener`` setting); and sampling with prior-based
  rejection (``--select priors``, the LQ-VAE paper's alpha = 0) decoded without masks, the paper's
  procedure (with masks over all samples the selection does not change the stems).

With ``--compat-beams 1,5,10,20`` it measures instead what the original code's beam-search
bookkeeping costs (docs/upstream.md): the ``--latent`` model's beam search at each B, by default
and with ``--compat upstream``, the search's answer decoded without masks (so that only the
search differs), in OUT/compat-table.md.

With ``--levels -18,-6,0,6`` it measures instead how the input level matters (issue 12): the
``--latent`` model with its shipped settings, every mixture fed at each level (dB relative to its
native one), with and without the input-level normalisation, in OUT/level-table.md.

A variant whose report is already complete in OUT (same settings) is read, not run again.

Usage:
    python benchmarks/quality.py DATA --counted synth-counted --latent synth-drums-bass --num-mixtures 50 \\
        --out quality/
Prints the table; writes OUT/<variant>.json and OUT/table.md. Seconds per mixture are the rows'
own (each group's search time over its rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lass_cli.evaluate import EvaluateRequest, run_evaluate

BASELINES = [("mixture", "mixture baseline"), ("lowpass", "low/high-pass split"), ("oracle", "VQ-VAE oracle")]


def variants(args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """(file name, table label, evaluate settings) of every LASS row asked for."""
    if args.compat_beams:
        return [
            (f"{compat}-beam{b}", f"{label}, beam B={b}", dict(model=args.latent, sampler="beam", beams=b,
                                                                compat=compat, wiener=False))
            for b in args.compat_beams for compat, label in (("none", "lass"), ("upstream", "--compat upstream"))
        ]  # fmt: skip
    if args.levels:
        return [
            (f"level{db:+g}-{mode}", f"{mode}, fed at {db:+g} dB",
             dict(model=args.latent, level_db=db, normalize=mode == "normalised"))
            for mode in ("normalised", "raw") for db in args.levels
        ]  # fmt: skip
    rows = []
    if args.counted:
        rows.append(("counted-beam", f"counted LASS, beam B={args.beams}", dict(model=args.counted, sampler="beam")))
    if args.latent:
        sample = dict(model=args.latent, sampler="sample", samples=args.samples, select="priors")
        rows += [
            ("latent-beam", f"LQ-VAE likelihood, beam B={args.beams}", dict(model=args.latent, sampler="beam")),
            ("latent-samples", f"LQ-VAE likelihood, {args.samples} samples, masks over all", sample),
            ("latent-rejection", f"LQ-VAE likelihood, {args.samples} samples + prior rejection, no masks",
             {**sample, "wiener": False}),
        ]  # fmt: skip
    return rows


def mean_sdr(report: dict, method: str, stem: str) -> float | None:
    return report["aggregates"].get(method, {}).get(stem, {}).get("sdr", {}).get("mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="Slakh-layout root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--counted", help="model with the counted likelihood")
    parser.add_argument("--latent", help="model with the LQ-VAE latent likelihood")
    parser.add_argument("--registry", action="append", default=[])
    parser.add_argument("--num-mixtures", type=int, default=50)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="quality")
    parser.add_argument(
        "--compat-beams",
        type=lambda text: [int(b) for b in text.split(",")],
        default=None,
        help="B values of the default vs --compat upstream table (e.g. 1,5,10,20)",
    )
    parser.add_argument(
        "--levels",
        type=lambda text: [float(db) for db in text.split(",")],
        default=None,
        help="dB relative to native of the level-robustness table (e.g. -18,-6,0,6)",
    )
    args = parser.parse_args()
    if (args.compat_beams or args.levels) and not args.latent:
        parser.error("--compat-beams and --levels measure the --latent model")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports, seconds = [], []
    for name, label, settings in variants(args):
        if not args.levels:
            settings.setdefault("beams", args.beams)
        request = EvaluateRequest(
            root=args.data, split=args.split, num_mixtures=args.num_mixtures, seed=args.seed,
            registries=tuple(args.registry), out=str(out / f"{name}.json"), resume=True, quiet=True, **settings,
        )  # fmt: skip
        report = run_evaluate(request)
        reports.append((label, report))
        seconds.append(float(np.mean([row["seconds"] for row in report["rows"]])))
    if not reports:
        parser.error("name at least one of --counted and --latent")
    first = reports[0][1]
    stems = first["model"]["stems"]
    count = len(first["rows"])
    lines = [
        f"Mean SDR (dB) over {count} mixtures of {args.data} ({args.split}), museval, 1 s frames, median per mixture.",
        "",
        "| method | " + " | ".join(stems) + " | seconds per mixture |",
        "|---" * (len(stems) + 2) + "|",
    ]
    rows = [(label, first, method, None) for method, label in BASELINES if method in first["aggregates"]]
    rows += [(label, report, "lass", s) for (label, report), s in zip(reports, seconds)]
    for label, report, method, each in rows:
        values = [mean_sdr(report, method, stem) for stem in stems]
        cells = [f"{v:.2f}" if v is not None else "n/a" for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {f'{each:.1f}' if each else ''} |")
    table = "\n".join(lines) + "\n"
    name = "compat-table.md" if args.compat_beams else "level-table.md" if args.levels else "table.md"
    (out / name).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
