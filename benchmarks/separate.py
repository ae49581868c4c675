"""End to end: `lass separate` on a 30 s and a 10 min input, wall time, real-time factor, peak RSS.

The inputs are the bundled example (`examples/mix.flac`, 15 s) repeated to each length and written
as 16-bit WAV at its rate. Each run is its own `lass separate` process (so import, model loading
and writing are in the figure, and so is each process's own peak resident memory), run
``--repeats`` times; the table gives the median wall time, the real-time factor (wall / audio
length), tokens per second (both priors' tokens: windows x 1024 x 2 per wall second), the search,
decoding and total seconds of the report, and the peak RSS.

With ``--short N,SECONDS`` it times instead one `lass separate` call on N inputs of SECONDS each
(pieces of the example), whose windows are searched together, against the same call with
``--batch-windows 1`` (one input, one window at a time, as before inputs were packed).

Usage:
    python benchmarks/separate.py --lengths 30,600 --repeats 3 -- --sampler beam --beams 10
    python benchmarks/separate.py --short 8,2.5 -- --sampler beam --beams 10
Arguments after ``--`` go to `lass separate` as they are. Prints one table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mix.flac"


def make_input(folder: Path, seconds: float) -> Path:
    """The example repeated (and cut) to ``seconds``."""
    data, rate = sf.read(EXAMPLE, dtype="float32", always_2d=True)
    samples = int(round(seconds * rate))
    tiled = np.resize(data, (samples, data.shape[1])) if len(data) < samples else data[:samples]
    path = folder / f"input-{seconds:g}s.wav"
    sf.write(path, tiled, rate, subtype="PCM_16")
    return path


def make_pieces(folder: Path, count: int, seconds: float) -> list[Path]:
    """``count`` consecutive pieces of ``seconds`` of the example (repeated where it runs out)."""
    data, rate = sf.read(EXAMPLE, dtype="float32", always_2d=True)
    samples = int(round(seconds * rate))
    tiled = np.resize(data, (samples * count, data.shape[1]))
    paths = []
    for i in range(count):
        paths.append(folder / f"piece-{i}.wav")
        sf.write(paths[-1], tiled[i * samples : (i + 1) * samples], rate, subtype="PCM_16")
    return paths


def short_inputs(count: int, seconds: float, extra: list[str]) -> None:
    """N short inputs in one call, packed into shared searches against one window at a time."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = make_pieces(folder, count, seconds)
        for name, flags in (("packed", []), ("apart", ["--batch-windows", "1"])):
            command = [sys.executable, "-m", "lass_cli", "separate", *map(str, sources), "-o", str(folder / name),
                       "--force", "-q", *flags, *extra]  # fmt: skip
            began = time.perf_counter()
            subprocess.run(command, check=True)
            wall = time.perf_counter() - began
            windows = sum(json.loads((folder / name / s.stem / "report.json").read_text())["windows"]["count"]
                          for s in sources)  # fmt: skip
            rtf = round(wall / (count * seconds), 3)
            results.append({"mode": name, "inputs": count, "seconds_each": seconds, "windows": windows,
                            "wall_s": round(wall, 2), "real_time_factor": rtf})  # fmt: skip
    print("| inputs | mode | windows | wall s | RTF |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['inputs']} x {r['seconds_each']:g} s | {r['mode']} | {r['windows']} | {r['wall_s']:.1f} | "
              f"{r['real_time_factor']:.2f} |")  # fmt: skip
    print(f"apart / packed: {results[1]['wall_s'] / results[0]['wall_s']:.2f}x")
    print(json.dumps({"benchmark": "separate-short", "cpu_threads": os.cpu_count(), "results": results}))


def run_once(source: Path, out: Path, extra: list[str]) -> dict:
    """One `lass separate` process: its wall time, its peak RSS and its report."""
    command = [sys.executable, "-m", "lass_cli", "separate", str(source), "-o", str(out), "--force", "-q", *extra]
    began = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)  # the child's own peak RSS
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lass separate failed on {source}")
    report = json.loads((out / source.stem / "report.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "report": report}


def describe(settings: dict) -> str:
    if settings["method"] == "sample":
        return f"sample N={settings['samples']}"
    return f"{settings['method']} B={settings['beams']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="30,600", help="input lengths in seconds")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--short", help="N,SECONDS: N short inputs in one call, packed against apart")
    parser.add_argument("extra", nargs="*", help="arguments for lass separate (after --)")
    args = parser.parse_args()
    if args.short:
        count, seconds = args.short.split(",")
        return short_inputs(int(count), float(seconds), args.extra)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for seconds in [float(s) for s in args.lengths.split(",")]:
            source = make_input(folder, seconds)
            runs = [run_once(source, folder / "out", args.extra) for _ in range(args.repeats)]
            wall = statistics.median(r["wall_s"] for r in runs)
            report = runs[0]["report"]
            windows = report["windows"]["count"]
            tokens = windows * report["windows"]["tokens_per_window"] * 2
            timings = {k: statistics.median(r["report"]["timings"][k] for r in runs)
                       for k in ("search_s", "decode_s", "total_s")}  # fmt: skip
            results.append({
                "seconds": seconds, "windows": windows, "settings": describe(report["settings"]),
                "wall_s": round(wall, 2), "wall_all_s": [round(r["wall_s"], 2) for r in runs],
                "real_time_factor": round(wall / seconds, 3), "tokens_per_s": round(tokens / wall, 1),
                **{k: round(v, 2) for k, v in timings.items()},
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
            })  # fmt: skip
    print("| input | windows | search | wall s (median) | RTF | tokens/s | search s | decode s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cells = [f"{r['seconds']:g} s", r["windows"], r["settings"], f"{r['wall_s']:.1f}",
                 f"{r['real_time_factor']:.2f}", f"{r['tokens_per_s']:.0f}", f"{r['search_s']:.1f}",
                 f"{r['decode_s']:.1f}", f"{r['peak_rss_mb']:.0f}"]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")
    if len(results) > 1:
        print(f"peak RSS ratio (longest / shortest): {results[-1]['peak_rss_mb'] / results[0]['peak_rss_mb']:.2f}")
    print(json.dumps({"benchmark": "separate", "cpu_threads": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
