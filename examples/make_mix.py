"""Render examples/mix.flac: 6 s of synthetic drums and bass at 22.05 kHz, mono, 16-bit.

Deterministic; run `python examples/make_mix.py` to write it again.
"""

from pathlib import Path

import numpy as np
import soundfile as sf

RATE, SECONDS, BPM = 22050, 6.0, 110


def main() -> None:
    rng = np.random.default_rng(2023)
    n = int(RATE * SECONDS)
    t = np.arange(n) / RATE
    beat = 60 / BPM
    drums, bass = np.zeros(n), np.zeros(n)
    for k in range(int(SECONDS / (beat / 2))):
        start = int(k * beat / 2 * RATE)
        tail = np.arange(n - start) / RATE
        if k % 2 == 0:  # kick on every beat: a falling sine
            drums[start:] += 0.9 * np.sin(2 * np.pi * (50 + 90 * np.exp(-tail * 30)) * tail) * np.exp(-tail * 9)
        if k % 4 == 2:  # snare on 2 and 4: noise and a tone
            drums[start:] += 0.5 * rng.standard_normal(n - start) * np.exp(-tail * 18)
        drums[start:] += 0.15 * rng.standard_normal(n - start) * np.exp(-tail * 60)  # hi-hat
    notes = [41, 41, 44, 46, 41, 41, 48, 46]  # MIDI numbers, one per beat
    for k in range(int(SECONDS / beat)):
        start, end = int(k * beat * RATE), min(n, int((k + 1) * beat * RATE))
        f = 440 * 2 ** ((notes[k % len(notes)] - 69) / 12)
        local = t[start:end] - t[start]
        bass[start:end] += 0.5 * np.tanh(2 * np.sin(2 * np.pi * f * local)) * np.exp(-local * 2)
    mix = 0.5 * (drums + bass)
    mix /= np.abs(mix).max() / 0.8
    sf.write(Path(__file__).with_name("mix.flac"), mix.astype(np.float32), RATE, subtype="PCM_16")


if __name__ == "__main__":
    main()
