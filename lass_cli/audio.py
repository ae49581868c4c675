"""Audio in and out: decode any file to float32, mono, resample, cut into windows, write atomically.

WAV/FLAC/OGG (and MP3 with a recent libsndfile) go through soundfile; everything else ffmpeg reads
(M4A, AAC, ...) through pydub. Resampling uses a polyphase filter at the exact rational ratio of the
two rates (44100 / 22050 = 2 / 1, 48000 -> 44100 = 147 / 160).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

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
    from scipy.signal import resample_poly  # here: scipy.signal takes a second to import, often unneeded

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


def cut_windows(audio: np.ndarray, size: int, step: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """(samples,) -> (W, size) windows starting every ``step`` samples, the last zero-padded;
    ``step == size`` is :func:`to_windows`. ``start`` / ``stop``: only those windows (a batch of a
    long file, cut when it is needed)."""
    stop = window_count(len(audio), size, step) if stop is None else stop
    windows = np.zeros((stop - start, size), audio.dtype)
    for row, i in enumerate(range(start, stop)):
        piece = audio[i * step : i * step + size]
        windows[row, : len(piece)] = piece
    return windows


class CrossFader:
    """:func:`crossfade` in pieces: windows pushed in order, each push giving back the samples no
    later window touches, so a long file is stitched one batch at a time. The same additions in
    the same order as the whole-file overlap-add, so the result is the same to the bit."""

    def __init__(self, size: int, step: int, count: int, length: int) -> None:
        self.size, self.step, self.count, self.length = size, step, count, length
        self.overlap = max(size - step, 0)
        ramp = (np.arange(self.overlap) + 0.5) / max(self.overlap, 1)
        self.fade_in = (np.sin(0.5 * np.pi * ramp) ** 2).astype(np.float32)
        self.pending = np.zeros(0, np.float32)  # what the last window left for the next one's fade
        self.pushed = self.emitted = 0

    def push(self, windows: np.ndarray) -> np.ndarray:
        pieces = []
        for window in windows:
            out = np.zeros(self.size, np.float32)
            out[: len(self.pending)] = self.pending
            last = self.pushed == self.count - 1
            if self.overlap:
                weight = np.ones(self.size, np.float32)
                if self.pushed > 0:
                    weight[: self.overlap] = self.fade_in
                if not last:
                    weight[self.size - self.overlap :] = 1 - self.fade_in
                out += window * weight
            else:
                out += window
            done = self.size if last else self.step
            pieces.append(out[:done])
            self.pending = out[done:]
            self.pushed += 1
        return self._emit(np.concatenate(pieces) if pieces else np.zeros(0, np.float32))

    def finish(self) -> np.ndarray:
        """The zeros that pad the output to ``length`` where the windows fell short."""
        return np.zeros(max(0, self.length - self.emitted), np.float32)

    def _emit(self, samples: np.ndarray) -> np.ndarray:
        samples = samples[: max(0, self.length - self.emitted)]
        self.emitted += len(samples)
        return samples


def crossfade(windows: np.ndarray, step: int, length: int) -> np.ndarray:
    """Inverse of :func:`cut_windows`: overlap-add with complementary fades (sin^2 in, 1 - sin^2 out,
    summing to exactly 1 at every sample) over each overlap of ``size - step`` samples, trimmed to
    ``length``. Windows that add up to the mixture still do after the fade."""
    fader = CrossFader(windows.shape[1], step, len(windows), length)
    return np.concatenate((fader.push(windows), fader.finish()))


class Resampler:
    """:func:`resample` of a signal that arrives in pieces, the same to the bit as resampling the
    whole. Each output sample of the polyphase filter reads a fixed span of input samples, so the
    filter is run over what has arrived (cut where the output phase starts again, a multiple of
    ``down`` input samples) and only the outputs whose span lies within it are given out; what
    later outputs still read is kept."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        ratio = Fraction(to_rate, from_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        # Input samples either side an output reads: the filter's half length (10 x the larger
        # factor, in upsampled samples) and its padding, with room to spare.
        self.context = (10 * max(self.up, self.down) + 2 * self.down) // self.up + 2
        self.kept = np.zeros(0, np.float32)
        self.start = 0  # input index of kept[0], a multiple of down
        self.received = self.emitted = 0

    def push(self, samples: np.ndarray, final: bool = False) -> np.ndarray:
        self.kept = np.concatenate((self.kept, samples.astype(np.float32, copy=False)))
        self.received += len(samples)
        if self.up == self.down:
            out, self.kept = self.kept, self.kept[:0]
            return out
        total = -(-self.received * self.up // self.down)
        ready = total if final else max(self.emitted, (self.received - self.context) * self.up // self.down)
        if ready <= self.emitted or not len(self.kept):
            return np.zeros(0, np.float32)
        from scipy.signal import resample_poly

        out = resample_poly(self.kept, self.up, self.down).astype(np.float32, copy=False)
        first = self.start * self.up // self.down  # the output index of out[0]
        out = out[self.emitted - first : ready - first]
        self.emitted = ready
        keep_from = max(self.start, (self.emitted * self.down // self.up - self.context) // self.down * self.down)
        self.kept, self.start = self.kept[keep_from - self.start :], keep_from
        return out

    def finish(self) -> np.ndarray:
        return self.push(np.zeros(0, np.float32), final=True)


class Restorer:
    """Decoded windows at the model's rate -> the signal at the input's rate, level and length, a
    batch of windows at a time: cross-faded (:class:`CrossFader`), resampled (:class:`Resampler`),
    divided by the ``gain`` the input was scaled by and cut to ``length``; the same to the bit as
    on all windows at once."""

    def __init__(
        self, size: int, step: int, count: int, model_length: int, model_rate: int, rate: int, gain: float,
        length: int,
    ) -> None:  # fmt: skip
        self.fader, self.resampler = CrossFader(size, step, count, model_length), Resampler(model_rate, rate)
        self.gain, self.length, self.emitted = np.float32(gain), length, 0

    def push(self, windows: np.ndarray) -> np.ndarray:
        """``windows``: (W, size), the next ones in order."""
        return self._cut(self.resampler.push(self.fader.push(windows)))

    def finish(self) -> np.ndarray:
        out = self._cut(self.resampler.push(self.fader.finish(), final=True))
        missing = self.length - self.emitted  # the resampled signal may fall a sample short
        self.emitted = self.length
        return np.concatenate((out, np.zeros(missing, np.float32)))

    def _cut(self, samples: np.ndarray) -> np.ndarray:
        out = (samples / self.gain).astype(np.float32, copy=False)[: max(0, self.length - self.emitted)]
        self.emitted += len(out)
        return out


def rms(x: np.ndarray) -> float:
    """Root mean square (0 for an empty signal)."""
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))) if np.size(x) else 0.0


def gain_to(x: np.ndarray, target: float | None) -> float:
    """The factor that brings ``x`` to RMS ``target``; 1 without a target or for silence."""
    level = rms(x)
    return target / level if target and level > 1e-6 else 1.0


def peak_limiter(peaks: dict[str, float], mode: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """What keeps samples within [-1, 1] for integer formats, from the stems' peaks: ``rescale``
    divides every stem of a file by one common factor when any peak exceeds 1, ``clamp`` clips,
    ``none`` leaves them; None where nothing is to be done."""
    if mode not in ("rescale", "clamp", "none"):
        raise ValueError(f"clip mode must be rescale, clamp or none, got {mode!r}")
    if mode == "clamp":
        return lambda x: np.clip(x, -1.0, 1.0)
    peak = max(peaks.values(), default=0.0)
    if mode == "none" or peak <= 1.0:
        return None
    return lambda x: x / peak


def limit_peaks(stems: dict[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """:func:`peak_limiter` applied to whole stems."""
    limit = peak_limiter({name: float(np.abs(x).max()) if x.size else 0.0 for name, x in stems.items()}, mode)
    return stems if limit is None else {name: limit(x) for name, x in stems.items()}


def subtype(fmt: str, bits: str) -> str:
    """The libsndfile sample format of ``bits``-bit ``fmt`` (WAV 16/24/32f, FLAC 16/24)."""
    if (fmt, bits) not in _SUBTYPES:
        raise ValueError(f"cannot write {bits}-bit {fmt} (choose wav 16/24/32f or flac 16/24)")
    return _SUBTYPES[fmt, bits]


def encode_mp3(source: Path, target: Path, bitrate: str) -> None:
    """Encode a WAV file with ffmpeg's LAME (its header records the encoder delay, so decoders give
    back the exact length)."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        raise AudioError("--format mp3 needs ffmpeg, which is not installed")
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-codec:a", "libmp3lame",
               "-b:a", bitrate, "-f", "mp3", str(target)]  # fmt: skip
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
    kind = None if fmt == "mp3" else subtype(fmt, bits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        if kind is None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                source = Path(tmp) / "in.wav"
                sf.write(source, audio, rate, subtype="FLOAT")
                encode_mp3(source, partial, bitrate)
        else:
            sf.write(partial, audio, rate, subtype=kind, format=fmt.upper())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


__all__ = [
    "AUDIO_SUFFIXES", "AudioError", "BITS", "CrossFader", "FORMATS", "Resampler", "Restorer", "crossfade",
    "cut_windows", "encode_mp3", "fit_length", "from_windows", "gain_to", "limit_peaks", "load", "peak_limiter",
    "resample", "rms", "save", "subtype", "to_mono", "to_windows", "window_count",
]  # fmt: skip
