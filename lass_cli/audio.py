"""Audio in and out: decode any file to float32, mono, resample, cut into windows, write atomically.

WAV/FLAC/OGG (and MP3 with a recent libsndfile) go through soundfile; everything else ffmpeg reads
(M4A, AAC, ...) through pydub. Resampling uses a polyphase filter at the exact rational ratio of the
two rates (44100 / 22050 = 2 / 1, 48000 -> 44100 = 147 / 160).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

FORMATS = ("wav", "flac", "mp3")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".mp4")
BITS = ("16", "24", "32f")
_SUBTYPES = {("wav", "16"): "PCM_16", ("wav", "24"): "PCM_24", ("wav", "32f"): "FLOAT",
             ("flac", "16"): "PCM_16", ("flac", "24"): "PCM_24"}  # fmt: skip


class AudioError(ValueError):
    """An input that cannot be used: missing, undecodable, empty or not finite."""


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    try:
        from pydub import AudioSegment
        from pydub.exceptions import CouldntDecodeError
    except ImportError as exc:  # pragma: no cover - pydub is a dependency
        raise AudioError(f"{path}: cannot decode ({exc})") from None
    try:
        segment = AudioSegment.from_file(path)
    except (CouldntDecodeError, IndexError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and "ffmpeg" in str(exc) + str(exc.filename):
            reason = "this format needs ffmpeg, which is not installed"
        raise AudioError(f"{path}: cannot decode audio ({reason})") from None
    samples = np.array(segment.get_array_of_samples(), dtype=np.float32)
    scale = float(1 << (8 * segment.sample_width - 1))
    channels = max(segment.channels, 1)
    return (samples / scale).reshape(-1, channels).T, segment.frame_rate


def load(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file to float32 ``(channels, samples)`` and its sample rate."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = np.ascontiguousarray(data.T)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        audio, rate = _decode_with_ffmpeg(path)
    if audio.size == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: the audio contains non-finite samples (NaN or infinity)")
    return audio.astype(np.float32, copy=False), int(rate)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels: (channels, samples) -> (samples,)."""
    if audio.ndim == 2 and audio.shape[0] > 1:
        return audio.mean(axis=0, dtype=np.float32)
    return audio.reshape(-1).astype(np.float32, copy=False)  # one channel: itself, not a copy


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample along the last axis at the exact ratio; length ``ceil(n * to / from)``."""
    if from_rate == to_rate:
        return audio
    ratio = Fraction(to_rate, from_rate)
    return resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32, copy=False)


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad the last axis to ``length`` samples."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, length - audio.shape[-1])])


def to_windows(audio: np.ndarray, size: int) -> np.ndarray:
    """Cut (samples,) into (W, size) windows, the last one zero-padded; at least one window."""
    count = max(1, -(-len(audio) // size))
    return fit_length(audio, count * size).reshape(count, size)


def from_windows(windows: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`to_windows`: concatenate (W, size) and trim to ``length``."""
    return windows.reshape(-1)[:length]


def window_count(length: int, size: int, step: int) -> int:
    """Windows of ``size`` every ``step`` samples that cover ``length`` samples (at least one)."""
    return 1 if length <= size else 1 + -(-(length - size) // step)


def cut_windows(audio: np.ndarray, size: int, step: int) -> np.ndarray:
    """(samples,) -> (W, size) windows starting every ``step`` samples, the last zero-padded;
    ``step == size`` is :func:`to_windows`."""
    count = window_count(len(audio), size, step)
    windows = np.zeros((count, size), audio.dtype)
    for i in range(count):
        piece = audio[i * step : i * step + size]
        windows[i, : len(piece)] = piece
    return windows


def crossfade(windows: np.ndarray, step: int, length: int) -> np.ndarray:
    """Inverse of :func:`cut_windows`: overlap-add with complementary fades (sin^2 in, 1 - sin^2 out,
    summing to exactly 1 at every sample) over each overlap of ``size - step`` samples, trimmed to
    ``length``. Windows that add up to the mixture still do after the fade."""
    count, size = windows.shape
    overlap = size - step
    if overlap <= 0:
        return from_windows(windows, length)
    fade_in = (np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2).astype(np.float32)
    out = np.zeros((count - 1) * step + size, np.float32)
    for i, window in enumerate(windows):
        weight = np.ones(size, np.float32)
        if i > 0:
            weight[:overlap] = fade_in
        if i < count - 1:
            weight[size - overlap :] = 1 - fade_in
        out[i * step : i * step + size] += window * weight
    return fit_length(out, length)


def rms(x: np.ndarray) -> float:
    """Root mean square (0 for an empty signal)."""
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))) if np.size(x) else 0.0


def gain_to(x: np.ndarray, target: float | None) -> float:
    """The factor that brings ``x`` to RMS ``target``; 1 without a target or for silence."""
    level = rms(x)
    return target / level if target and level > 1e-6 else 1.0


def limit_peaks(stems: dict[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """Keep samples within [-1, 1] for integer formats: ``rescale`` scales every stem of a file
    by one common factor when any peak exceeds 1, ``clamp`` clips, ``none`` leaves them."""
    if mode == "none":
        return stems
    if mode == "clamp":
        return {name: np.clip(x, -1.0, 1.0) for name, x in stems.items()}
    if mode != "rescale":
        raise ValueError(f"clip mode must be rescale, clamp or none, got {mode!r}")
    peak = max((float(np.abs(x).max()) for x in stems.values() if x.size), default=0.0)
    return {name: x / peak for name, x in stems.items()} if peak > 1.0 else stems


def _save_mp3(partial: Path, audio: np.ndarray, rate: int, bitrate: str) -> None:
    """Encode with ffmpeg's LAME (its header records the encoder delay, so decoders give back the
    exact length)."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("ffmpeg") is None:
        raise AudioError("--format mp3 needs ffmpeg, which is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.wav"
        sf.write(source, audio, rate, subtype="FLOAT")
        command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-codec:a", "libmp3lame",
                   "-b:a", bitrate, "-f", "mp3", str(partial)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise AudioError(f"ffmpeg could not write MP3: {(done.stderr or '').strip()[:200]}")


def save(
    path: str | Path, audio: np.ndarray, rate: int, fmt: str = "wav", bits: str = "16", bitrate: str = "320k"
) -> None:
    """Write mono (samples,) audio atomically: a hidden temp file in the same folder, then rename.

    An existing file at ``path`` is replaced only once the new one is complete. MP3 (``bitrate``,
    e.g. 320k) goes through ffmpeg; ``bits`` applies to WAV and FLAC.
    """
    if fmt != "mp3" and (fmt, bits) not in _SUBTYPES:
        raise ValueError(f"cannot write {bits}-bit {fmt} (choose wav 16/24/32f or flac 16/24)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        if fmt == "mp3":
            _save_mp3(partial, audio, rate, bitrate)
        else:
            sf.write(partial, audio, rate, subtype=_SUBTYPES[fmt, bits], format=fmt.upper())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


__all__ = [
    "AUDIO_SUFFIXES", "AudioError", "BITS", "FORMATS", "crossfade", "cut_windows", "fit_length", "from_windows",
    "gain_to", "limit_peaks", "load", "resample", "rms", "save", "to_mono", "to_windows", "window_count",
]  # fmt: skip
