"""Stem files written while a file is separated, so that a long input never holds its stems whole.

Each batch's stems are appended to float32 WAV staging files (exact: float32 is what the pipeline
gives); the peaks are counted on the way. Once all are in, each stem is limited (``--clip-mode``,
which needs every stem's peak first) and converted to the asked format a block at a time. The
staging folder is the caller's: nothing reaches ``--out`` until all stems are complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from . import audio

BLOCK = 1 << 18  # samples read at a time when converting


class StemFiles:
    """One float32 staging file per stem in ``staging``, appended by :meth:`write`."""

    def __init__(self, staging: Path, stems: list[str], rate: int) -> None:
        self.rate = rate
        self.paths = {stem: staging / f".{stem}.float.wav" for stem in stems}
        self.peaks = dict.fromkeys(stems, 0.0)
        self._files = {stem: sf.SoundFile(path, "w", rate, 1, "FLOAT", format="WAV")
                       for stem, path in self.paths.items()}  # fmt: skip

    def write(self, blocks: dict[str, np.ndarray]) -> None:
        """Append the next samples of each stem (``blocks`` may hold more stems than are kept)."""
        for stem, file in self._files.items():
            samples = blocks[stem]
            if samples.size:
                file.write(samples)
                self.peaks[stem] = max(self.peaks[stem], float(np.abs(samples).max()))

    def close(self) -> None:
        for file in self._files.values():
            file.close()

    def read(self, stem: str) -> np.ndarray:
        """A stem whole (for ``--reference`` scores, which compare whole signals)."""
        return sf.read(self.paths[stem], dtype="float32")[0]

    def finish(self, stems: list[str], fmt: str, bits: str, bitrate: str, clip_mode: str) -> dict[str, Path]:
        """Limit and convert ``stems`` to ``fmt`` beside the staging files; their paths."""
        limit = audio.peak_limiter({stem: self.peaks[stem] for stem in stems}, clip_mode)
        done = {}
        for stem in stems:
            source, target = self.paths[stem], self.paths[stem].with_name(f"{stem}.{fmt}")
            unchanged = limit is None or (clip_mode == "clamp" and self.peaks[stem] <= 1.0)
            if fmt == "wav" and bits == "32f" and unchanged:
                source.replace(target)
            elif fmt == "mp3":
                if not unchanged:
                    limited = source.with_name(f".{stem}.limited.wav")
                    self._convert(source, limited, "FLOAT", "WAV", limit)
                    source = limited
                audio.encode_mp3(source, target, bitrate)
            else:
                self._convert(source, target, audio.subtype(fmt, bits), fmt.upper(), None if unchanged else limit)
            done[stem] = target
        return done

    def _convert(self, source: Path, target: Path, subtype: str, container: str, limit) -> None:
        with sf.SoundFile(target, "w", self.rate, 1, subtype, format=container) as out:
            for block in sf.blocks(source, blocksize=BLOCK, dtype="float32"):
                out.write(block if limit is None else limit(block))


__all__ = ["StemFiles"]
