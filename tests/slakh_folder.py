"""Render small Slakh2100-layout folders for tests: synthetic stems, real FLAC/WAV, metadata.yaml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import yaml


def render(root: Path, split: str = "test", tracks: int = 3, seconds: float = 1.2, rate: int = 22050, seed: int = 0):
    """Each track: a drum stem, two bass stems (summed by the reader), a piano stem, and a bass stem
    that was not rendered. Track 1's drums are silent in its second half (the silence filter's case).
    Returns {track: {"drums": signal, "bass": signal}} at ``rate``."""
    rng = np.random.default_rng(seed)
    truth = {}
    n = int(seconds * rate)
    t = np.arange(n) / rate
    for k in range(tracks):
        name = f"Track{k + 1:05d}"
        folder = root / split / name
        (folder / "stems").mkdir(parents=True)
        drums = (0.3 * rng.standard_normal(n) * np.exp(-((t * 4) % 1) * 6)).astype(np.float32)
        if k == 1:
            drums[n // 2 :] = 0
        bass_a = (0.2 * np.sin(2 * np.pi * (55 + 10 * k) * t)).astype(np.float32)
        bass_b = (0.1 * np.sin(2 * np.pi * (110 + 7 * k) * t)).astype(np.float32)
        piano = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        sf.write(folder / "stems/S00.flac", drums, rate)
        sf.write(folder / "stems/S01.flac", bass_a, rate)
        sf.write(folder / "stems/S02.wav", bass_b, rate, subtype="FLOAT")
        sf.write(folder / "stems/S03.flac", piano, rate)
        meta = {
            "UUID": f"test-{k}",
            "audio_dir": "stems",
            "stems": {
                "S00": {"inst_class": "Drums", "is_drum": True, "program_num": 0, "audio_rendered": True},
                "S01": {"inst_class": "Bass", "is_drum": False, "program_num": 33, "audio_rendered": True},
                "S02": {"inst_class": "Bass", "is_drum": False, "program_num": 34, "audio_rendered": True},
                "S03": {"inst_class": "Piano", "is_drum": False, "program_num": 0, "audio_rendered": True},
                "S04": {"inst_class": "Bass", "is_drum": False, "program_num": 35, "audio_rendered": False},
            },
        }
        (folder / "metadata.yaml").write_text(yaml.safe_dump(meta))
        truth[name] = {"drums": drums, "bass": bass_a + bass_b}
    (root / "omitted" / "Track09999").mkdir(parents=True, exist_ok=True)
    return truth
