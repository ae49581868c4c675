"""``lass evaluate``: the paper's protocol on a Slakh folder, as a resumable, shardable batch job.

Selected chunks are separated in groups of ``--batch-windows`` consecutive rows of the selection
(default 8; one chunk = one window, all windows of a group in one search, as in ``lass separate``).
Group g belongs to shard ``g % n``, so a shard runs exactly the groups, and hence the arithmetic,
of the unsharded run, and shard reports merge into the same report. After each group the report is
rewritten atomically, so a killed run resumes from its last group with ``--resume``.

Each row carries the metrics of LASS and of three baselines computed in the same run: the mixture
itself (``y = (x1 + x2) / 2``) as the estimate of every stem; the oracle, the VQ-VAE's
reconstruction of the true stem; and a crossover split of the mixture sum ``2y`` at 150 Hz
(4th-order Butterworth, zero phase): below for ``bass``, the rest for the other stem (only for
models whose stems include ``bass``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import audio
from .jobs import SearchRequest, choose_model
from .metrics import museval_sdr, si_sdr, si_sdr_improvement
from .registry import load_registry
from .report import build_report, write_json
from .search import SearchOptions
from .separate import Separator, pick_device
from .slakh import (
    SILENCE_THRESHOLD,
    Chunk,
    all_chunks,
    default_classes,
    find_tracks,
    load_stems,
    parse_shard,
    seeded_subset,
)

EVALUATION_VERSION = 1
DEFAULT_GROUP = 8  # rows per search; fixed (not memory-derived) so results do not depend on the machine
METHODS = ("lass", "mixture", "oracle", "lowpass")
LOWPASS_HZ = 150.0  # the low/high-pass baseline's crossover


@dataclass(kw_only=True)
class EvaluateRequest(SearchRequest):
    root: str
    out: str = "evaluation.json"
    split: str = "test"
    num_mixtures: int = 450
    shard: str = "0/1"
    resume: bool = False
    force: bool = False
    save_audio: str | None = None
    level_db: float = 0.0  # feed every mixture this many dB above its native level (robustness)

    @property
    def group(self) -> int:
        return self.batch_windows or DEFAULT_GROUP


def _metrics(reference: np.ndarray, estimate: np.ndarray, mixture: np.ndarray, rate: int) -> dict[str, float]:
    return {
        "sdr": round(museval_sdr(reference, estimate, rate), 4),
        "si_sdr": round(si_sdr(reference, estimate), 4),
        "si_sdri": round(si_sdr_improvement(reference, estimate, mixture), 4),
    }


def crossover(mix_sum: np.ndarray, stems: list[str], rate: int) -> dict[str, np.ndarray] | None:
    """The low/high-pass baseline: ``bass`` = low-passed mixture sum, the other stem the rest."""
    if "bass" not in stems or len(stems) != 2:
        return None
    from scipy.signal import butter, sosfiltfilt

    low = sosfiltfilt(butter(4, LOWPASS_HZ, "low", fs=rate, output="sos"), mix_sum).astype(np.float32)
    other = next(s for s in stems if s != "bass")
    return {"bass": low, other: (mix_sum - low).astype(np.float32)}


def aggregate(rows: list[dict[str, Any]], stems: list[str]) -> dict[str, Any]:
    """Mean, median and std (NaN-aware) of every metric per method and stem, and of the stems' average."""
    out: dict[str, Any] = {}
    for method in [m for m in METHODS if all(m in r for r in rows)]:
        out[method] = {}
        for metric in ("sdr", "si_sdr", "si_sdri"):
            per_stem = {s: np.array([r[method][s][metric] for r in rows], dtype=np.float64) for s in stems}
            per_stem["average"] = np.nanmean(np.stack(list(per_stem.values())), axis=0) if rows else np.array([])
            for name, values in per_stem.items():
                stats = out[method].setdefault(name, {})
                finite = values[np.isfinite(values)]
                stats[metric] = {
                    "mean": round(float(finite.mean()), 4) if len(finite) else None,
                    "median": round(float(np.median(finite)), 4) if len(finite) else None,
                    "std": round(float(finite.std()), 4) if len(finite) else None,
                    "count": int(len(finite)),
                }
    return out


def _settings(request: EvaluateRequest, separator: Separator, options: SearchOptions) -> dict[str, Any]:
    """What must be equal for two partial reports to belong to the same evaluation."""
    return {
        "root": str(Path(request.root).resolve()),
        "split": request.split,
        "num_mixtures": request.num_mixtures,
        "seed": request.seed,
        "rows_per_group": request.group,
        "search": asdict(options),
        "lambda": separator.likelihood.weight,
        "dtype": str(separator.dtype).removeprefix("torch."),
        "normalize": request.normalize,
        "level_db": request.level_db,
        "wiener": separator.spec.wiener if request.wiener is None else request.wiener,
        "protocol": {
            "rate": separator.spec.sample_rate,
            "window_samples": separator.window_samples,
            "min_chunk_samples": separator.vqvae.hop_length(separator.spec.level),
            "silence_threshold": SILENCE_THRESHOLD,
            "mixture": "(x1 + x2) / 2",
            "sdr": "museval v4, 512-tap filter per chunk, 1 s frames (window = hop = rate), median over frames",
        },
    }


def _report(settings: dict, model: dict, shard: str, rows: list[dict], stems: list[str], device: str) -> dict:
    rows = sorted(rows, key=lambda r: r["row"])
    return build_report(
        lass_evaluation=EVALUATION_VERSION,
        settings=settings,
        model=model,
        device=device,
        shard=shard,
        rows=rows,
        aggregates=aggregate(rows, stems),
    )


def _read_report(path: Path) -> dict[str, Any]:
    import json

    data = json.loads(path.read_text())
    if data.get("lass_evaluation") != EVALUATION_VERSION:
        raise ValueError(f"{path} is not a lass evaluation report of version {EVALUATION_VERSION}")
    return data


def _save_audio(folder: Path, row: int, rate: int, signals: dict[str, np.ndarray]) -> None:
    for name, x in signals.items():
        audio.save(folder / f"{row:05d}" / f"{name}.wav", x, rate, "wav", "32f")


def run_evaluate(request: EvaluateRequest, progress=None) -> dict[str, Any]:
    """Evaluate (this shard of) the selection; returns the report that was written."""
    shard_index, shard_count = parse_shard(request.shard)
    spec, _ = choose_model(load_registry(list(request.registries)), request.model)
    device = pick_device(request.device)
    options = request.search_options(device, spec)
    separator = request.load_separator(spec, device, options)
    settings = _settings(request, separator, options)
    stems = list(spec.stems)
    out = Path(request.out)
    done: dict[int, dict] = {}
    if out.exists():
        if request.resume:
            previous = _read_report(out)
            if previous["settings"] != settings or previous["shard"] != request.shard:
                raise ValueError(f"{out} was written with other settings; cannot resume it")
            done = {r["row"]: r for r in previous["rows"]}
        elif not request.force:
            raise FileExistsError(f"{out} exists (use --resume to continue it or --force to start again)")

    rate, window = spec.sample_rate, separator.window_samples
    hop = separator.vqvae.hop_length(spec.level)
    tracks = {t.name: t for t in find_tracks(request.root, request.split, default_classes(spec.stems))}
    chunks = all_chunks(list(tracks.values()), rate, window, hop)
    selected = seeded_subset(len(chunks), request.num_mixtures, request.seed)
    rows_of = list(enumerate(chunks[i] for i in selected))
    groups = [rows_of[g : g + request.group] for g in range(0, len(rows_of), request.group)]
    mine = [group for g, group in enumerate(groups) if g % shard_count == shard_index]
    pending = [group for group in mine if any(k not in done for k, _ in group)]
    loader = functools.lru_cache(maxsize=4)(lambda name: load_stems(tracks[name], rate))
    rows = list(done.values())
    model = separator.describe()
    write_json(out, _report(settings, model, request.shard, rows, stems, str(device)))
    if progress:
        progress.start(sum(map(len, mine)), len(done))
    for group in pending:
        rows = [r for r in rows if r["row"] not in {k for k, _ in group}]
        began = time.perf_counter()
        rows += _evaluate_batch(separator, options, group, loader, request, stems)
        each = round((time.perf_counter() - began) / len(group), 3)
        for row in rows[-len(group) :]:
            row["seconds"] = each
        write_json(out, _report(settings, model, request.shard, rows, stems, str(device)))
        if progress:
            progress.advance(len(group))
    return _report(settings, model, request.shard, rows, stems, str(device))


def row_gain(separator: Separator, y: np.ndarray, normalize: bool) -> float:
    """The factor that brings a row's ``y`` to the model's training level (1 without one)."""
    return audio.gain_to(y, separator.spec.input_rms) if normalize else 1.0


def _segments(chunk: Chunk, loader) -> dict[str, np.ndarray]:
    stems = loader(chunk.track)
    return {s: x[chunk.start : chunk.start + chunk.length] for s, x in stems.items()}


def _evaluate_batch(
    separator: Separator, options: SearchOptions, group: list[tuple[int, Chunk]], loader, request: EvaluateRequest,
    stems: list[str],
) -> list[dict[str, Any]]:  # fmt: skip
    rate, window = separator.spec.sample_rate, separator.window_samples
    truths = [_segments(chunk, loader) for _, chunk in group]
    # Each row is its own mixture: brought to the asked level, then (normalising) to the model's
    # level on its own; the estimates are scaled back by the whole gain, to the native level.
    fed = 10 ** (request.level_db / 20)
    gains = [fed * row_gain(separator, fed * sum(t.values()) / 2, request.normalize) for t in truths]
    # One signal of padded chunks: each chunk is exactly one window, and windows are independent.
    # Under --compat upstream a short chunk is separated on its own, unpadded, as the original does.
    alone = [options.compat == "upstream" and chunk.length < window for _, chunk in group]
    full = [j for j, short in enumerate(alone) if not short]
    estimates: list[dict[str, np.ndarray]] = [{} for _ in group]
    scores, free_steps = [0.0] * len(group), [0] * len(group)
    batches = [full] if full else []
    batches += [[j] for j, short in enumerate(alone) if short]
    for rows in batches:
        size = window if len(rows) > 1 or not alone[rows[0]] else group[rows[0]][1].length
        mix = np.concatenate([audio.fit_length(sum(truths[j].values()) * gains[j], size) for j in rows])
        scaled, details = separator.separate(
            mix[None], rate, options, None, len(rows), normalize=False, wiener=request.wiener
        )
        for i, j in enumerate(rows):
            estimates[j] = {s: scaled[s][i * size : (i + 1) * size] / gains[j] for s in stems}
            scores[j] = details["windows"]["scores"][i]
            free_steps[j] = details["windows"]["likelihood_free_steps"][i]
    oracle = {}
    for stem in stems:
        rows = np.stack([audio.fit_length(t[stem] * g, window) for t, g in zip(truths, gains)])
        decoded = separator.decode_tokens(separator.encode_windows(torch.from_numpy(rows).to(separator.device)))
        oracle[stem] = decoded.float().cpu().numpy() / np.array(gains, np.float32)[:, None]
    rows = []
    for j, ((k, chunk), truth) in enumerate(zip(group, truths)):
        n = chunk.length
        y = sum(truth.values()) / 2
        lass_est = {s: estimates[j][s][:n] for s in stems}
        oracle_est = {s: oracle[s][j, :n] for s in stems}
        split = crossover(2 * y, stems, rate)
        rows.append({
            "row": k,
            "track": chunk.track,
            "chunk": chunk.index,
            "offset_s": round(chunk.start / rate, 4),
            "samples": n,
            "lass": {s: _metrics(truth[s], lass_est[s], y, rate) for s in stems},
            "mixture": {s: _metrics(truth[s], y, y, rate) for s in stems},
            "oracle": {s: _metrics(truth[s], oracle_est[s], y, rate) for s in stems},
            **({"lowpass": {s: _metrics(truth[s], split[s], y, rate) for s in stems}} if split else {}),
            "score": scores[j],
            "likelihood_free_steps": free_steps[j],
        })  # fmt: skip
        if request.save_audio:
            signals = {"mixture": y, **lass_est, **{f"reference_{s}": truth[s] for s in stems}}
            signals.update({f"oracle_{s}": oracle_est[s] for s in stems})
            _save_audio(Path(request.save_audio), k, rate, signals)
    return rows


def merge_reports(out: str | Path, parts: list[str | Path]) -> dict[str, Any]:
    """Join shard reports of one evaluation into the report of the whole run."""
    reports = [_read_report(Path(p)) for p in parts]
    if not reports:
        raise ValueError("nothing to merge")
    first = reports[0]
    rows: dict[int, dict] = {}
    for path, report in zip(parts, reports):
        if report["settings"] != first["settings"] or report["model"]["name"] != first["model"]["name"]:
            raise ValueError(f"{path} belongs to another evaluation (settings or model differ)")
        for row in report["rows"]:
            rows[row["row"]] = row
    stems = first["model"]["stems"]
    merged = _report(first["settings"], first["model"], "merged", list(rows.values()), stems, first["device"])
    write_json(Path(out), merged)
    return merged


__all__ = ["EvaluateRequest", "aggregate", "merge_reports", "run_evaluate"]
