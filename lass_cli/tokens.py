"""Token files (``lass separate --save-tokens``, ``lass decode``): what the search chose, per window.

A token file lets results be compared with another implementation token for token, cached, and
decoded again without a search. It is a numpy ``.npz`` (keys in docs/report.md): per window the
mixture's tokens and each stem's chosen tokens, padded with -1 past a window's own length (a short
last window under ``--compat upstream``), and what is needed to put the decoded stems back at the
input's rate, length and level.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import audio

TOKENS_VERSION = 1


@dataclass
class TokenFile:
    model: str
    stems: tuple[str, ...]
    tokens: dict[str, np.ndarray]  # "mixture" and each stem: (W, S) int64, -1 past ``lengths``
    lengths: np.ndarray  # (W,) tokens of each window
    model_rate: int
    input_rate: int
    input_samples: int
    model_samples: int  # the input's length at the model's rate
    gain: float  # the input was multiplied by this before encoding
    step_samples: int  # between window starts at the model's rate (the window's length without --overlap)
    settings: dict[str, Any]


def save_tokens(
    path: Path, windows: list[dict[str, np.ndarray]], separator, options, input_rate: int, input_samples: int,
    level: dict[str, float], step_samples: int,
) -> None:  # fmt: skip
    """Write the tokens of every window (as ``Separator.separate(keep_tokens=True)`` gives them)."""
    names = ("mixture", *separator.spec.stems)
    lengths = np.array([len(w["mixture"]) for w in windows], np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    arrays = {}
    for name in names:
        table = np.full((len(windows), width), -1, np.int64)
        for i, window in enumerate(windows):
            table[i, : len(window[name])] = window[name]
        arrays[name] = table
    rate = separator.spec.sample_rate
    model_samples = -(-input_samples * rate // input_rate)  # audio.resample's length
    meta = {
        "lass_tokens": TOKENS_VERSION, "model": separator.spec.name, "stems": list(separator.spec.stems),
        "model_rate": rate, "input_rate": input_rate, "input_samples": input_samples,
        "model_samples": model_samples, "gain": level["gain_in"], "step_samples": step_samples,
        "settings": {"compat": options.compat, "method": options.method, "beams": options.beams,
                     "samples": options.samples},
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as f:
            np.savez(f, lengths=lengths, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_tokens(path: str | Path) -> TokenFile:
    """Read a token file; a missing or foreign file raises ValueError with one line."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            stems = tuple(meta["stems"])
            tokens = {name: npz[name].astype(np.int64) for name in ("mixture", *stems)}
            lengths = npz["lengths"].astype(np.int64)
    except FileNotFoundError:
        raise ValueError(f"token file not found: {path}") from None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a lass token file ({exc})") from None
    if meta.get("lass_tokens") != TOKENS_VERSION:
        raise ValueError(f"{path} is not a lass token file of version {TOKENS_VERSION}")
    return TokenFile(meta["model"], stems, tokens, lengths, int(meta["model_rate"]), int(meta["input_rate"]),
                     int(meta["input_samples"]), int(meta["model_samples"]), float(meta["gain"]),
                     int(meta["step_samples"]), meta.get("settings", {}))  # fmt: skip


def decode_stems(file: TokenFile, separator) -> dict[str, np.ndarray]:
    """Each stem's chosen tokens decoded, stitched and put back at the input's rate, length and level
    (the decoded tokens themselves: soft masks would need the mixture and every candidate)."""
    spec = separator.spec
    if tuple(spec.stems) != file.stems or spec.sample_rate != file.model_rate:
        raise ValueError(f"the token file was written by model {file.model}, not by {spec.name}")
    window = separator.window_samples
    stems = {}
    for stem in file.stems:
        pieces = []
        for row, length in zip(file.tokens[stem], file.lengths):
            tokens = torch.from_numpy(row[:length].copy())[None]
            part = separator.decode_tokens(tokens).float().cpu().numpy()[0] if length else np.zeros(0, np.float32)
            pieces.append(audio.fit_length(part, window))
        restore = audio.Restorer(window, file.step_samples, len(pieces), file.model_samples, file.model_rate,
                                 file.input_rate, file.gain, file.input_samples)  # fmt: skip
        stems[stem] = np.concatenate((restore.push(np.stack(pieces)), restore.finish()))
    return stems


__all__ = ["TokenFile", "decode_stems", "read_tokens", "save_tokens"]
