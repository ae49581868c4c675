"""Audio I/O through the real decoders, resampling, windows, atomic writes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from lass_cli import audio

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (.ci/run installs it)"
)


def tone(rate: int, seconds: float, channels: int = 1, freqs=(220.0, 330.0)) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rows = [0.3 * np.sin(2 * np.pi * freqs[c % len(freqs)] * t) for c in range(channels)]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")]
)
def test_soundfile_formats_decode_to_float_channels_first(tmp_path, fmt, subtype):
    signal = tone(44100, 0.5, channels=2)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, signal.T, 44100, subtype=subtype, format=fmt)
    data, rate = audio.load(path)
    assert rate == 44100 and data.dtype == np.float32 and data.shape == signal.shape
    tolerance = 0.05 if subtype == "VORBIS" else 1e-3
    assert np.abs(data - signal).max() < tolerance


@needs_ffmpeg
@pytest.mark.parametrize("suffix", ["mp3", "m4a"])
def test_ffmpeg_formats_decode(tmp_path, suffix):
    from pydub import AudioSegment

    signal = tone(48000, 1.0, channels=2)
    pcm = (signal.T * 32767).astype(np.int16)
    segment = AudioSegment(pcm.tobytes(), frame_rate=48000, sample_width=2, channels=2)
    path = tmp_path / f"x.{suffix}"
    segment.export(path, format="mp4" if suffix == "m4a" else suffix)
    data, rate = audio.load(path)
    assert rate == 48000 and data.shape[0] == 2
    assert abs(data.shape[1] - 48000) < 3000  # encoders add padding
    assert 0.15 < np.abs(data).max() < 0.45


def test_bad_inputs_get_their_own_message(tmp_path):
    with pytest.raises(audio.AudioError, match="no such file"):
        audio.load(tmp_path / "absent.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEjunk" * 10)
    with pytest.raises(audio.AudioError, match="cannot decode"):
        audio.load(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 22050)
    with pytest.raises(audio.AudioError, match="no audio samples"):
        audio.load(tmp_path / "empty.wav")
    bad = tone(22050, 0.1)
    bad[0, 10] = np.nan
    sf.write(tmp_path / "nan.wav", bad.T, 22050, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="non-finite"):
        audio.load(tmp_path / "nan.wav")


def test_mono_downmix_averages_channels():
    stereo = np.array([[1.0, 0.5], [0.0, -0.5]], np.float32)
    np.testing.assert_allclose(audio.to_mono(stereo), [0.5, 0.0])


@pytest.mark.parametrize(("a", "b"), [(44100, 22050), (48000, 44100), (16000, 22050)])
def test_resample_round_trip_keeps_a_band_limited_signal(a, b):
    rng = np.random.default_rng(0)
    t = np.arange(a * 2) / a
    limit = 0.35 * min(a, b)
    signal = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(rng.uniform(50, limit, 12), rng.uniform(0, 6, 12)))
    signal = (0.05 * signal).astype(np.float32)
    there = audio.resample(signal, a, b)
    assert len(there) == int(np.ceil(len(signal) * b / a))
    back = audio.fit_length(audio.resample(there, b, a), len(signal))
    inner = slice(a // 10, -a // 10)  # the filter's edges
    error_db = 10 * np.log10(np.sum((back - signal)[inner] ** 2) / np.sum(signal[inner] ** 2))
    assert error_db < -40


@pytest.mark.parametrize("length", [1, 99, 100, 101, 1000, 12345])
def test_windows_stitch_back_exactly(length):
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    windows = audio.to_windows(x, 100)
    assert windows.shape == (max(1, -(-length // 100)), 100)
    assert np.all(windows.reshape(-1)[length:] == 0)
    np.testing.assert_array_equal(audio.from_windows(windows, length), x)


def test_peak_limiting_modes():
    stems = {"a": np.array([0.5, -2.0], np.float32), "b": np.array([1.0, 0.25], np.float32)}
    rescaled = audio.limit_peaks(stems, "rescale")
    np.testing.assert_allclose(rescaled["a"], [0.25, -1.0])
    np.testing.assert_allclose(rescaled["b"], [0.5, 0.125])  # one common factor keeps the balance
    np.testing.assert_allclose(audio.limit_peaks(stems, "clamp")["a"], [0.5, -1.0])
    assert audio.limit_peaks(stems, "none") is stems


@pytest.mark.parametrize(
    ("fmt", "bits", "subtype"),
    [("wav", "16", "PCM_16"), ("wav", "24", "PCM_24"), ("wav", "32f", "FLOAT"), ("flac", "24", "PCM_24")],
)
def test_save_writes_the_asked_format_atomically(tmp_path, fmt, bits, subtype):
    x = tone(22050, 0.2)[0]
    path = tmp_path / "sub" / f"stem.{fmt}"
    audio.save(path, x, 22050, fmt, bits)
    info = sf.info(path)
    assert info.subtype == subtype and info.samplerate == 22050 and info.frames == len(x)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "stem.flac"
    audio.save(path, tone(22050, 0.1)[0], 22050, "flac", "16")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="cannot write"):
        audio.save(path, tone(22050, 0.1)[0], 22050, "flac", "32f")
    with pytest.raises(sf.LibsndfileError):
        audio.save(path, tone(22050, 0.1)[0], 0, "flac", "16")  # invalid rate fails inside the writer
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stem.flac"]


def test_overlapping_windows_cross_fade_back_exactly_and_without_steps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000).astype(np.float32)
    windows = audio.cut_windows(x, 300, 200)
    assert windows.shape == (audio.window_count(1000, 300, 200), 300) == (5, 300)
    np.testing.assert_array_equal(windows[1], x[200:500])
    np.testing.assert_allclose(audio.crossfade(windows, 200, 1000), x, atol=1e-6)  # fades sum to one
    np.testing.assert_array_equal(audio.cut_windows(x, 300, 300), audio.to_windows(x, 300))
    np.testing.assert_array_equal(audio.crossfade(audio.to_windows(x, 300), 300, 1000), x)
    # Windows whose level is off by different amounts (as independent separations are): without
    # overlap the stitched signal jumps at each seam; cross-faded, no sample-to-sample step is larger
    # than the signal's own largest step.
    t = np.arange(4000)
    sine = np.sin(2 * np.pi * t / 230).astype(np.float32)
    for step, size in ((1000, 1000), (750, 1000)):
        pieces = audio.cut_windows(sine, size, step)
        gains = np.resize(np.array([1.0, 0.6, 1.4, 0.8], np.float32), len(pieces))
        own = gains.max() * np.abs(np.diff(sine)).max()  # the largest step of the best-fitting window
        steps = np.abs(np.diff(audio.crossfade(pieces * gains[:, None], step, len(sine))))
        assert (steps.max() > 2 * own) if step == size else (steps.max() <= own)


@pytest.mark.parametrize("rates", [(22050, 44100), (44100, 22050), (22050, 48000), (96000, 22050), (22050, 22050)])
def test_stitching_and_resampling_in_pieces_equal_the_whole_file_to_the_bit(rates):
    rng = np.random.default_rng(1)
    for length in (1, 299, 5000, 30001):
        x = rng.standard_normal(length).astype(np.float32)
        resampler, pieces, start = audio.Resampler(*rates), [], 0
        while start < length:
            size = int(rng.integers(1, 4000))
            pieces.append(resampler.push(x[start : start + size]))
            start += size
        pieces.append(resampler.finish())
        np.testing.assert_array_equal(np.concatenate(pieces), audio.resample(x, *rates))
        for size, step in ((300, 200), (300, 300), (64, 48)):
            windows = audio.cut_windows(x, size, step)
            cut = [audio.cut_windows(x, size, step, a, min(a + 2, len(windows))) for a in range(0, len(windows), 2)]
            np.testing.assert_array_equal(np.concatenate(cut), windows)
            fader = audio.CrossFader(size, step, len(windows), length)
            stitched = np.concatenate([*(fader.push(c) for c in cut), fader.finish()])
            np.testing.assert_array_equal(stitched, audio.crossfade(windows, step, length))
