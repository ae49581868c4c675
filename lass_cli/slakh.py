"""Slakh2100 folders and the paper's evaluation protocol (chunks, silence filter, seeded subset).

Two layouts are read:
- Slakh2100: ``ROOT/{train,validation,test}/TrackNNNNN/{metadata.yaml, stems/SNN.flac|wav}`` (or a
  single split folder as ROOT; ``omitted/`` is ignored). A stem's files are the rendered stems whose
  ``inst_class`` matches (several of one class in a track are summed).
- upstream LASS: one folder per stem with same-named files (``ROOT/bass/Track00001.wav``,
  ``ROOT/drums/Track00001.wav``); tracks present in every folder are used.

Protocol (as the upstream code): each track's stems, at the model's rate, are cut into consecutive
chunks of one model window from sample 0; a last, shorter chunk counts if it holds at least one
token; a chunk is used only if neither stem is silent (``||x||_2 / len(x) < 1.5e-5``). The subset
is the first N of a seeded random permutation of all chunks (``torch.randperm``).
Only one track's audio is in memory at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from . import audio

SILENCE_THRESHOLD = 1.5e-5
SPLITS = ("train", "validation", "test")
AUDIO_SUFFIXES = (".flac", ".wav")


@dataclass(frozen=True)
class Track:
    """One track: for each stem name, the files to sum."""

    name: str
    files: dict[str, tuple[Path, ...]]


@dataclass(frozen=True)
class Chunk:
    """A chunk of a track at the model's rate: ``start`` and ``length`` in samples."""

    track: str
    index: int
    start: int
    length: int


def is_silent(x: np.ndarray, threshold: float = SILENCE_THRESHOLD) -> bool:
    return len(x) == 0 or float(np.linalg.norm(x)) / len(x) < threshold


def _stem_files(track_dir: Path, inst_class: str) -> tuple[Path, ...]:
    import yaml

    meta = yaml.safe_load((track_dir / "metadata.yaml").read_text()) or {}
    stems_dir = track_dir / str(meta.get("audio_dir") or "stems")
    found = []
    for key, info in sorted((meta.get("stems") or {}).items()):
        if not isinstance(info, dict) or not info.get("audio_rendered"):
            continue
        if str(info.get("inst_class", "")).lower() != inst_class.lower():
            continue
        for suffix in AUDIO_SUFFIXES:
            if (stems_dir / f"{key}{suffix}").is_file():
                found.append(stems_dir / f"{key}{suffix}")
                break
    return tuple(found)


def find_tracks(root: str | Path, split: str | None, classes: dict[str, str]) -> list[Track]:
    """Tracks of a Slakh root (``split`` picks train/validation/test) or of the upstream two-folder
    layout, with files for every stem in ``classes`` (stem name -> Slakh ``inst_class``).
    Tracks missing a stem are left out. Sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if all((root / stem).is_dir() for stem in classes):  # upstream layout
        names = None
        for stem in classes:
            here = {p.name for p in (root / stem).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES}
            names = here if names is None else names & here
        return [Track(Path(n).stem, {s: (root / s / n,) for s in classes}) for n in sorted(names or ())]
    base = root / split if split and (root / split).is_dir() else root
    if split and base == root and any((root / s).is_dir() for s in SPLITS):
        raise ValueError(f"{root} has no {split}/ folder")
    tracks = []
    for track_dir in sorted(p for p in base.iterdir() if p.is_dir() and (p / "metadata.yaml").is_file()):
        files = {stem: _stem_files(track_dir, inst_class) for stem, inst_class in classes.items()}
        if all(files.values()):
            tracks.append(Track(track_dir.name, files))
    if not tracks:
        raise ValueError(f"no track under {base} has all of the stems {', '.join(classes.values())}")
    return tracks


def load_stems(track: Track, rate: int) -> dict[str, np.ndarray]:
    """Each stem of a track, mono, summed over its files, at ``rate``, all of the same length."""
    stems = {}
    for stem, files in track.files.items():
        parts = []
        for path in files:
            data, source_rate = sf.read(path, dtype="float32", always_2d=True)
            parts.append(audio.resample(audio.to_mono(data.T), source_rate, rate))
        length = min(len(p) for p in parts)
        stems[stem] = np.sum([p[:length] for p in parts], axis=0).astype(np.float32)
    length = min(len(x) for x in stems.values())
    return {stem: x[:length] for stem, x in stems.items()}


def track_chunks(track: Track, stems: dict[str, np.ndarray], window: int, hop: int) -> list[Chunk]:
    """The usable chunks of one track (see the module docstring)."""
    length = min(len(x) for x in stems.values())
    chunks = []
    for index in range(-(-length // window)):
        start = index * window
        size = min(window, length - start)
        if size >= hop and not any(is_silent(x[start : start + size]) for x in stems.values()):
            chunks.append(Chunk(track.name, index, start, size))
    return chunks


def all_chunks(tracks: list[Track], rate: int, window: int, hop: int) -> list[Chunk]:
    """Every usable chunk of every track, in track order then time order."""
    chunks = []
    for track in tracks:
        chunks += track_chunks(track, load_stems(track, rate), window, hop)
    return chunks


def seeded_subset(count: int, wanted: int | None, seed: int) -> list[int]:
    """The first ``wanted`` of a seeded random permutation of ``range(count)`` (upstream's rule)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return order if wanted is None else order[:wanted]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n, got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def default_classes(stems: tuple[str, ...]) -> dict[str, str]:
    """Stem name -> Slakh ``inst_class`` (``drums`` -> ``Drums``)."""
    return {stem: stem.capitalize() for stem in stems}


__all__ = [
    "Chunk", "SILENCE_THRESHOLD", "Track", "all_chunks", "default_classes", "find_tracks", "is_silent",
    "load_stems", "parse_shard", "seeded_subset", "track_chunks",
]  # fmt: skip
