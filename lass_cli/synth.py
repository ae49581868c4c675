"""``lass synth``: render drums + bass tracks in the Slakh2100 layout from generated MIDI.

Each track gets a tempo (70-160 BPM), a meter (4/4, 3/4 or 6/8), swing, a groove with variations,
fills every fourth bar and humanised velocities and timing; a bass line follows a chord progression
in a random key, locked to the kick with passing notes. Stems are rendered one by one with
FluidSynth, each with its own GM drum kit or bass program (32-39), reverb and chorus settings, gain,
a random EQ tilt and a small transposition of the bass, so that priors do not learn one sound.
Train and validation use ``fluid-soundfont-gm`` (FluidR3_GM); the test split ``timgm6mb-soundfont``,
which no model ever trains on. Everything follows from (split, seed, track index): splits never
share a random stream, and a track is the same whenever it is rendered.

Layout: ``OUT/<split>/TrackNNNNN/{metadata.yaml, mix.flac, stems/S00.flac (drums), stems/S01.flac
(bass), MIDI/S00.mid, MIDI/S01.mid}``; ``metadata.yaml`` is written last, so a rerun skips finished
tracks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

SPLIT_CODES = {"train": 1, "validation": 2, "test": 3}
SOUNDFONT_DIRS = (Path("/usr/share/sounds/sf2"), Path("/usr/share/sounds/sf3"), Path("/usr/share/soundfonts"))
DEFAULT_SOUNDFONTS = {"train": "FluidR3_GM.sf2", "validation": "FluidR3_GM.sf2", "test": "TimGM6mb.sf2"}
DRUM_KITS = {0: "Standard", 8: "Room", 16: "Power", 24: "Electronic", 25: "TR-808", 32: "Jazz", 40: "Brush",
             48: "Orchestra"}  # fmt: skip
BASS_NAMES = {32: "Acoustic Bass", 33: "Electric Bass (finger)", 34: "Electric Bass (pick)", 35: "Fretless Bass",
              36: "Slap Bass 1", 37: "Slap Bass 2", 38: "Synth Bass 1", 39: "Synth Bass 2"}  # fmt: skip
KICK, SNARE, SIDE_STICK, CLAP, HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 37, 39, 42, 44, 46, 49, 51
TOMS = (45, 47, 48, 50)
PROGRESSIONS = ([0, 5, 3, 4], [0, 3, 4, 4], [0, 0, 3, 4], [5, 3, 0, 4], [0, 4, 5, 3], [0, 6, 5, 4])
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)


class SynthError(RuntimeError):
    """FluidSynth or a soundfont is missing, or a render failed."""


@dataclass(frozen=True)
class Note:
    pitch: int
    start: float
    end: float
    velocity: int


def find_soundfont(name: str) -> Path:
    for folder in SOUNDFONT_DIRS:
        if (folder / name).is_file():
            return folder / name
    path = Path(name)
    if path.is_file():
        return path
    raise SynthError(f"soundfont {name} not found (apt-get install fluid-soundfont-gm timgm6mb-soundfont)")


def _rng(split: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([SPLIT_CODES[split], seed, index])


def compose(rng: np.random.Generator, seconds: float) -> dict[str, Any]:
    """Drum and bass notes of one track plus what was chosen (tempo, meter, key, ...)."""
    tempo = float(rng.uniform(70, 160))
    meter = [(4, 4), (3, 4), (6, 8)][rng.choice(3, p=[0.7, 0.15, 0.15])]
    beats, steps_per_beat = (meter[0], 4) if meter[1] == 4 else (2, 6)  # 6/8: two dotted beats of 6 steps
    beat_s = 60.0 / tempo * (1.5 if meter[1] == 8 else 1.0)
    step_s = beat_s / steps_per_beat
    steps = beats * steps_per_beat
    swing = float(rng.uniform(0, 0.3)) if rng.random() < 0.4 else 0.0
    bars = int(np.ceil(seconds / (beats * beat_s))) + 1

    def when(bar: int, step: int) -> float:
        late = swing * step_s if steps_per_beat == 4 and step % 2 == 1 else 0.0
        return bar * steps * step_s + step * step_s + late + float(rng.normal(0, 0.006))

    def groove() -> dict[int, list[int]]:
        kick = {0} | ({steps // 2} if beats != 3 else set()) | {int(s) for s in rng.choice(steps, rng.integers(0, 3))}
        snare = {steps_per_beat * b for b in range(beats) if b % 2 == 1} if beats != 3 else {steps_per_beat * 2}
        if beats == 2:
            snare = {steps_per_beat}
        hat_every = int(rng.choice([1, 2, 2, 3] if steps_per_beat == 6 else [1, 2, 2, 4]))
        hat = set(range(0, steps, hat_every))
        return {KICK: sorted(kick - snare), SNARE: sorted(snare), HAT: sorted(hat)}

    grooves = [groove(), groove()]
    ride_instead = rng.random() < 0.25
    snare_sound = int(rng.choice([SNARE, SNARE, SNARE, SIDE_STICK, CLAP]))
    drums: list[Note] = []
    kicks: list[tuple[int, int]] = []
    for bar in range(bars):
        pattern = grooves[(bar // 2) % 2 if rng.random() < 0.8 else int(rng.integers(2))]
        fill = bar % 4 == 3
        for pitch, hits in pattern.items():
            for step in hits:
                if fill and step >= steps // 2 and pitch != HAT:
                    continue
                sound = {SNARE: snare_sound, HAT: RIDE if ride_instead else HAT}.get(pitch, pitch)
                accent = 1.0 if step % steps_per_beat == 0 else 0.8
                velocity = int(np.clip(rng.normal(95 * accent, 10), 30, 127))
                start = when(bar, step)
                drums.append(Note(sound, start, start + 0.1, velocity))
                if pitch == KICK:
                    kicks.append((bar, step))
        if fill:
            for step in range(steps // 2, steps, int(rng.choice([1, 2]))):
                start = when(bar, step)
                drums.append(Note(int(rng.choice([SNARE, *TOMS])), start, start + 0.1, int(rng.integers(70, 120))))
        if bar % 8 == 0:
            drums.append(Note(CRASH, when(bar, 0), when(bar, 0) + 0.5, int(rng.integers(80, 115))))
        if rng.random() < 0.15:
            drums.append(Note(OPEN_HAT, when(bar, steps - 2), when(bar, steps - 1), int(rng.integers(60, 100))))

    root = int(rng.integers(28, 40))  # E1 .. D#2
    scale = MAJOR if rng.random() < 0.5 else MINOR
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    bass: list[Note] = []
    onsets = sorted(set(kicks) | {(b, 0) for b in range(bars)} | {
        (b, s) for b in range(bars) for s in range(0, steps, steps_per_beat) if rng.random() < 0.3})  # fmt: skip
    for i, (bar, step) in enumerate(onsets):
        degree = progression[bar % len(progression)]
        chord_root = root + scale[degree % 7] + 12 * (degree // 7)
        pitch = chord_root + int(rng.choice([0, 0, 0, 12, 7, scale[2], -5]))
        nxt = onsets[i + 1] if i + 1 < len(onsets) else (bar + 1, 0)
        start, end = when(bar, step), when(*nxt) - 0.02
        end = min(end, start + beat_s * float(rng.uniform(0.4, 1.2)))
        bass.append(
            Note(int(np.clip(pitch, 24, 60)), start, max(end, start + 0.05), int(np.clip(rng.normal(90, 12), 40, 127)))
        )
    clip = lambda notes: [n for n in notes if 0 <= n.start < seconds]  # noqa: E731
    return {"drums": clip(drums), "bass": clip(bass), "tempo": round(tempo, 2), "meter": f"{meter[0]}/{meter[1]}",
            "swing": round(swing, 3), "key_root": root, "mode": "major" if scale == MAJOR else "minor"}  # fmt: skip


def write_midi(path: Path, notes: list[Note], program: int, is_drum: bool, transpose: int = 0) -> None:
    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    instrument = pretty_midi.Instrument(program=program, is_drum=is_drum)
    for n in notes:
        instrument.notes.append(pretty_midi.Note(n.velocity, n.pitch + transpose, max(n.start, 0.0), n.end))
    midi.instruments.append(instrument)
    midi.write(str(path))


def render(midi: Path, soundfont: Path, rate: int, length: int, settings: dict[str, Any], rng) -> np.ndarray:
    """FluidSynth's rendering of one MIDI file, mono, EQ'd, ``length`` samples."""
    if shutil.which("fluidsynth") is None:
        raise SynthError("fluidsynth is not installed (apt-get install fluidsynth)")
    from scipy.signal import butter, sosfilt

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        command = ["fluidsynth", "-ni", "-q", "-g", f"{settings['gain']:.3f}", "-r", str(rate), "-F", str(out),
                   "-R", "1" if settings["reverb"] else "0", "-C", "1" if settings["chorus"] else "0",
                   "-o", f"synth.reverb.room-size={settings['room']:.2f}",
                   "-o", f"synth.reverb.level={settings['wet']:.2f}",
                   "-o", f"synth.chorus.depth={settings['chorus_depth']:.1f}", str(soundfont), str(midi)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "LANG": "C"})
        if result.returncode != 0 or not out.is_file():
            raise SynthError(f"fluidsynth failed on {midi.name}: {(result.stderr or result.stdout).strip()[:200]}")
        data, _ = sf.read(out, dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    low, high = settings["eq"]
    x = x + low * sosfilt(butter(2, 200, "low", fs=rate, output="sos"), x)
    x = x + high * sosfilt(butter(2, min(4000, rate / 2 - 100), "high", fs=rate, output="sos"), x)
    x = np.pad(x, (0, max(0, length - len(x))))[:length]
    return x.astype(np.float32)


def _settings(rng) -> dict[str, Any]:
    return {
        "gain": float(rng.uniform(0.3, 0.8)),
        "reverb": bool(rng.random() < 0.6),
        "chorus": bool(rng.random() < 0.4),
        "room": float(rng.uniform(0.1, 0.8)),
        "wet": float(rng.uniform(0.1, 0.7)),
        "chorus_depth": float(rng.uniform(2, 15)),
        "eq": (float(rng.uniform(-0.5, 0.8)), float(rng.uniform(-0.5, 0.8))),
    }


def pick_soundfont(fonts: list[Path], split: str, seed: int, index: int) -> Path:
    """The soundfont of one track: drawn from its own stream, so that the track's music and sound
    settings are those of a single-soundfont render of the same (split, seed, index)."""
    if len(fonts) == 1:
        return fonts[0]
    return fonts[int(np.random.default_rng([SPLIT_CODES[split], seed, index, 1]).integers(len(fonts)))]


def synth_track(folder: Path, split: str, seed: int, index: int, seconds: float, rate: int, soundfont: Path) -> None:
    """Render one track into ``folder`` (skipped if its metadata.yaml exists)."""
    import yaml

    if (folder / "metadata.yaml").is_file():
        return
    rng = _rng(split, seed, index)
    song = compose(rng, seconds)
    kit = int(rng.choice(list(DRUM_KITS)))
    program = int(rng.integers(32, 40))
    transpose = int(rng.integers(-2, 3))
    (folder / "stems").mkdir(parents=True, exist_ok=True)
    (folder / "MIDI").mkdir(exist_ok=True)
    length = int(seconds * rate)
    stems, meta_stems = {}, {}
    for key, notes, prog, is_drum, shift in (("S00", song["drums"], kit, True, 0),
                                             ("S01", song["bass"], program, False, transpose)):  # fmt: skip
        settings = _settings(rng)
        write_midi(folder / "MIDI" / f"{key}.mid", notes, prog, is_drum, shift)
        stems[key] = render(folder / "MIDI" / f"{key}.mid", soundfont, rate, length, settings, rng)
        sf.write(folder / "stems" / f"{key}.flac", stems[key], rate)
        meta_stems[key] = {
            "inst_class": "Drums" if is_drum else "Bass",
            "is_drum": is_drum,
            "program_num": prog,
            "midi_program_name": DRUM_KITS[prog] + " Kit" if is_drum else BASS_NAMES[prog],
            "plugin_name": soundfont.name,
            "audio_rendered": True,
            "midi_saved": True,
            "render": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
        }
    sf.write(folder / "mix.flac", np.clip(stems["S00"] + stems["S01"], -1, 1), rate)
    meta = {
        "UUID": f"lass-synth-{split}-{seed}-{index}",
        "audio_dir": "stems",
        "midi_dir": "MIDI",
        "lass_synth": {
            "split": split,
            "seed": seed,
            "index": index,
            "seconds": seconds,
            "rate": rate,
            **{k: v for k, v in song.items() if k not in ("drums", "bass")},
            "bass_transpose": transpose,
        },  # fmt: skip
        "stems": meta_stems,
    }
    partial = folder / ".metadata.yaml.partial"
    partial.write_text(yaml.safe_dump(meta, sort_keys=False))
    os.replace(partial, folder / "metadata.yaml")


def synth(out: str | Path, tracks: int, seed: int, split: str, seconds: float = 30.0, rate: int = 22050,
          soundfont: str | None = None, progress=None) -> list[Path]:  # fmt: skip
    """Render ``tracks`` tracks of ``split`` under ``out``; returns their folders. ``soundfont`` may
    name several soundfonts, comma-separated: each track is rendered with one of them."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_CODES)}")
    if tracks < 1 or seconds <= 0:
        raise ValueError("--tracks and --seconds must be positive")
    fonts = [find_soundfont(name.strip()) for name in (soundfont or DEFAULT_SOUNDFONTS[split]).split(",")]
    folders = [Path(out) / split / f"Track{i + 1:05d}" for i in range(tracks)]
    if progress:
        progress.start(tracks, 0)
    for index, folder in enumerate(folders):
        synth_track(folder, split, seed, index, seconds, rate, pick_soundfont(fonts, split, seed, index))
        if progress:
            progress.advance(1)
    return folders


__all__ = ["SynthError", "compose", "find_soundfont", "pick_soundfont", "synth", "synth_track"]
