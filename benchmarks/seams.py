"""Window seams: SDR of 1 s frames that straddle a window boundary against frames that do not.

Windows are separated independently, so a stem can jump where two windows meet. This separates
whole held-out tracks (e.g. 30 s, `lass synth data30 --seconds 30 --split test`), each as one
file through the same path as `lass separate`, at every ``--overlap`` asked, and scores every 1 s
frame with museval (BSS Eval v4, one 512-tap filter per track). A frame straddles when a window of
the run starts or ends strictly inside it (with overlap that is either edge of every cross-fade).
For each overlap and stem it prints the mean SDR of straddling and of other frames, their
difference, and the run's seconds per second of audio, in one table and one JSON line.

Usage:
    python benchmarks/seams.py data30 --split test --overlaps 0,0.25 --threads 2 [--sampler beam --beams 10]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lass_cli.audio import window_count
from lass_cli.jobs import SearchRequest, choose_model
from lass_cli.metrics import museval_frames
from lass_cli.registry import load_registry
from lass_cli.separate import pick_device
from lass_cli.slakh import default_classes, find_tracks, load_stems


def straddling(frames: int, rate: int, edges: set[int]) -> np.ndarray:
    """(frames,) bool: frame f, samples [f * rate, (f + 1) * rate), holds an edge strictly inside."""
    return np.array([any(f * rate < e < (f + 1) * rate for e in edges) for f in range(frames)])


def window_edges(length: int, size: int, step: int) -> set[int]:
    """Where the windows of a file of ``length`` samples start and end, inside the file."""
    starts = [i * step for i in range(window_count(length, size, step))]
    return {e for s in starts for e in (s, s + size) if 0 < e < length}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="Slakh-layout root of whole held-out tracks")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--registry", action="append", default=[])
    parser.add_argument("--tracks", type=int, default=None, help="at most this many tracks (sorted by name)")
    parser.add_argument("--overlaps", type=lambda t: [float(x) for x in t.split(",")], default=[0.0, 0.25])
    parser.add_argument("--sampler", choices=["beam", "greedy", "sample"], default=None, help="default: the model's")
    parser.add_argument("--beams", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    request = SearchRequest(model=args.model, registries=tuple(args.registry), sampler=args.sampler, beams=args.beams,
                            quiet=True)  # fmt: skip
    spec, _ = choose_model(load_registry(list(request.registries)), request.model)
    device = pick_device(request.device)
    options = request.search_options(device, spec)
    separator = request.load_separator(spec, device, options)
    rate, stems = spec.sample_rate, list(spec.stems)
    tracks = find_tracks(args.data, args.split, default_classes(spec.stems))[: args.tracks]
    results = []
    for overlap in args.overlaps:
        step = separator.window_step(overlap)
        scores = {stem: {True: [], False: []} for stem in stems}
        seconds = audio_seconds = 0.0
        for track in tracks:
            truth = load_stems(track, rate)
            mix = sum(truth.values())
            began = time.perf_counter()
            estimates, _ = separator.separate(mix[None], rate, options, overlap=overlap)
            seconds += time.perf_counter() - began
            audio_seconds += len(mix) / rate
            edges = window_edges(len(mix), separator.window_samples, step)
            for stem in stems:
                frames = museval_frames(truth[stem], estimates[stem], rate)
                seam = straddling(len(frames), rate, edges)
                for flag in (True, False):
                    values = frames[seam == flag]
                    scores[stem][flag] += values[np.isfinite(values)].tolist()
        row = {"overlap": overlap, "step_samples": step, "tracks": len(tracks),
               "seconds_per_audio_second": round(seconds / audio_seconds, 3)}  # fmt: skip
        for stem in stems:
            seam, rest = (float(np.mean(scores[stem][flag])) for flag in (True, False))
            row[stem] = {"straddling": round(seam, 3), "other": round(rest, 3), "difference": round(seam - rest, 3),
                         "frames": [len(scores[stem][True]), len(scores[stem][False])]}  # fmt: skip
        results.append(row)
    header = "| overlap | " + " | ".join(f"{s} straddling | {s} other | {s} difference" for s in stems)
    lines = [header + " | s per audio s |", "|---" * (3 * len(stems) + 2) + "|"]
    for row in results:
        cells = [f"{row[s][k]:.2f}" for s in stems for k in ("straddling", "other", "difference")]
        lines.append(f"| {row['overlap']:g} | " + " | ".join(cells) + f" | {row['seconds_per_audio_second']:.2f} |")
    print(f"Mean SDR (dB) of 1 s frames, {len(tracks)} tracks of {args.data} ({args.split}), model {spec.name}, "
          f"search {options.method}, {options.rows_per_window} sequences per window")  # fmt: skip
    print("\n".join(lines))
    print(json.dumps({"benchmark": "seams", "model": spec.name, "search": options.method,
                      "rows_per_window": options.rows_per_window,
                      "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
