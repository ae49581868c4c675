"""``lass count-likelihood``: count ``F[z1, z2, m]`` from pairs of source chunks, resumable and sharded.

Per epoch the pairs are every usable full-window chunk's own two stems (same track, same time) and
as many random pairings across chunks (stem 1 of chunk i with stem 2 of chunk perm(i), a seeded
permutation per epoch), as upstream's shuffled batches pair unrelated chunks. Pairs are cut into
batches of ``--batch-size`` in that order; batch b belongs to shard ``b % n``, so shards encode
exactly the batches of the unsharded run and their merged counts equal its counts. Each chunk of
a pair is encoded with the model's VQ-VAE, as is their mixture ``y = (x1 + x2) / 2``, and every
aligned token triple is counted in both source orders.

The schedule is fixed by the seed, so a run that checkpoints every N batches (``OUT.resume.npz``,
written atomically: the counts plus how many batches they cover) and is killed resumes with
``--resume`` to exactly the counts of an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .jobs import choose_model
from .likelihood import Counts
from .registry import load_registry
from .separate import load_vqvae, pick_device
from .slakh import all_chunks, default_classes, find_tracks, load_stems, parse_shard


@dataclass
class CountRequest:
    root: str
    out: str
    model: str | None = None
    registries: tuple[str, ...] = ()
    split: str = "train"
    epochs: int = 1
    batch_size: int = 8
    seed: int = 0
    shard: str = "0/1"
    resume: bool = False
    force: bool = False
    checkpoint_every: int = 50
    gain_db: float = 0.0
    device: str = "auto"
    quiet: bool = False


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume.npz")


def _save_checkpoint(path: Path, counts: Counts, state: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        np.savez(f, keys=counts.keys, values=counts.values, bins=counts.bins, state=json.dumps(state))
    os.replace(partial, path)


def _load_checkpoint(path: Path) -> tuple[Counts, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        return Counts(int(data["bins"]), data["keys"], data["values"]), json.loads(str(data["state"]))


def _levels(x1: np.ndarray, x2: np.ndarray, target: float | None, gain_db: float, rng) -> tuple[np.ndarray, ...]:
    """Each pair at the model's level (the RMS of its mixture, when the model names one), then
    each source by its own random gain within +-gain_db, so the counts see the level spread that
    separation meets."""
    n = len(x1)
    scale = np.ones((n, 1))
    if target:
        level = np.sqrt(np.mean(((x1 + x2) / 2).astype(np.float64) ** 2, axis=1, keepdims=True))
        scale = np.where(level > 1e-6, target / np.maximum(level, 1e-6), 1.0)
    g1, g2 = (10 ** (rng.uniform(-gain_db, gain_db, (n, 1)) / 20) for _ in range(2))
    return np.clip(x1 * scale * g1, -1, 1), np.clip(x2 * scale * g2, -1, 1)


def run_count(request: CountRequest, progress=None) -> Counts:
    """Count this shard's pairs into ``request.out`` (sparse.save_npz layout) and return the counts."""
    shard_index, shard_count = parse_shard(request.shard)
    if request.batch_size < 1 or request.epochs < 1 or request.checkpoint_every < 1:
        raise ValueError("--epochs, --batch-size and --checkpoint-every must be at least 1")
    out = Path(request.out)
    if out.exists() and not request.force:
        raise FileExistsError(f"{out} exists (use --force to replace it)")
    spec, _ = choose_model(load_registry(list(request.registries)), request.model)
    device = pick_device(request.device)
    vqvae = load_vqvae(spec).to(device)
    level, rate = spec.level, spec.sample_rate
    window, hop = spec.window_tokens * vqvae.hop_length(level), vqvae.hop_length(level)
    first, second = spec.stems
    tracks = {t.name: t for t in find_tracks(request.root, request.split, default_classes(spec.stems))}
    chunks = [c for c in all_chunks(list(tracks.values()), rate, window, hop) if c.length == window]
    if not chunks:
        raise ValueError(f"no full, non-silent {window}-sample chunk in {request.root}")
    pairs = []
    for epoch in range(request.epochs):
        order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(request.seed + epoch)).tolist()
        pairs += [(c, c) for c in chunks] + [(chunks[i], chunks[j]) for i, j in enumerate(order)]
    every = [pairs[i : i + request.batch_size] for i in range(0, len(pairs), request.batch_size)]
    batches = [b for k, b in enumerate(every) if k % shard_count == shard_index]
    state = {"model": spec.name, "root": str(Path(request.root).resolve()), "split": request.split,
             "epochs": request.epochs, "batch_size": request.batch_size, "seed": request.seed,
             "shard": request.shard, "gain_db": request.gain_db, "batches_done": 0}  # fmt: skip
    counts = Counts(vqvae.config.l_bins)
    resume_file = checkpoint_path(out)
    if request.resume and resume_file.exists():
        counts, saved = _load_checkpoint(resume_file)
        same = {k: v for k, v in saved.items() if k != "batches_done"} == {
            k: v for k, v in state.items() if k != "batches_done"
        }
        if not same:
            raise ValueError(f"{resume_file} was written with other settings; cannot resume from it")
        state["batches_done"] = saved["batches_done"]
    loader = functools.lru_cache(maxsize=8)(lambda name: load_stems(tracks[name], rate))
    if progress:
        progress.start(len(batches), state["batches_done"])
    for number in range(state["batches_done"], len(batches)):
        batch = batches[number]
        x1 = np.stack([loader(a.track)[first][a.start : a.start + window] for a, _ in batch])
        x2 = np.stack([loader(b.track)[second][b.start : b.start + window] for _, b in batch])
        x1, x2 = _levels(x1, x2, spec.input_rms, request.gain_db, np.random.default_rng([request.seed, number]))
        signals = torch.from_numpy(np.concatenate([x1, x2, (x1 + x2) / 2]).astype(np.float32)).to(device)
        tokens = vqvae.encode(signals, level).cpu()
        n = len(batch)
        counts.add(tokens[:n], tokens[n : 2 * n], tokens[2 * n :])
        state["batches_done"] = number + 1
        if state["batches_done"] % request.checkpoint_every == 0 and state["batches_done"] < len(batches):
            _save_checkpoint(resume_file, counts, state)
        if progress:
            progress.advance(1)
    counts.save(out)
    resume_file.unlink(missing_ok=True)
    return counts


def merge_counts(out: str | Path, parts: list[str | Path], force: bool = False) -> Counts:
    """Sum count files (shards) into one."""
    if not parts:
        raise ValueError("nothing to merge")
    if Path(out).exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to replace it)")
    total = Counts.load(parts[0])
    for part in parts[1:]:
        total.merge(Counts.load(part))
    total.save(out)
    return total


__all__ = ["CountRequest", "checkpoint_path", "merge_counts", "run_count"]
