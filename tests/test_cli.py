"""`lass separate` end to end through the installed command, on the tiny random model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (.ci/run installs it)"
)


def lass(*args: str, stdin: str | None = None, env: dict | None = None, cwd: Path | None = None):
    command = [sys.executable, "-m", "lass_cli", *args]
    full_env = {**os.environ, "LASS_CACHE": str(Path(cwd or ".") / "lass-cache"), **(env or {})}
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)


def mix(rate: int, seconds: float, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-((t * 2) % 1) * 8)
    bass = 0.3 * np.sin(2 * np.pi * 110 * t)
    noise = 0.02 * rng.standard_normal((channels, len(t)))
    return (0.4 * (kick + bass) + noise).astype(np.float32)


def check_outputs(out: Path, track: str, rate: int, length: int, model: str = "tiny-random") -> dict:
    for stem in ("drums", "bass"):
        info = sf.info(out / track / f"{stem}.wav")
        assert (info.samplerate, info.channels, info.frames) == (rate, 1, length)
    report = json.loads((out / track / "report.json").read_text())
    assert report["lass_report"] == 1 and report["model"]["name"] == model
    assert report["input"]["sample_rate"] == rate and report["input"]["samples"] == length
    assert report["windows"]["count"] == len(report["windows"]["scores"]) >= 1
    assert report["timings"]["real_time_factor"] > 0
    return report


@needs_ffmpeg
def test_ten_second_48k_stereo_mp3(tmp_path):
    from pydub import AudioSegment

    signal = mix(48000, 10.0, 2)
    pcm = (signal.T * 32767).astype(np.int16)
    AudioSegment(pcm.tobytes(), frame_rate=48000, sample_width=2, channels=2).export(
        tmp_path / "song.mp3", format="mp3"
    )
    decoded_length = sf.info(tmp_path / "song.mp3").frames if sf.check_format("MP3") else None
    result = lass("separate", "song.mp3", "--out", "stems", "--model", "tiny-random", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "stems/song/report.json").read_text())
    length = report["input"]["samples"]
    assert decoded_length in (None, length)
    assert abs(length - 480000) < 5000
    check_outputs(tmp_path / "stems", "song", 48000, length)
    assert report["input"]["channels"] == 2


def test_slakh_style_22k_wav_and_the_embedded_model_by_default(tmp_path, monkeypatch):
    """A fresh install (no paper model, no LASS_MODEL) separates with the embedded trained model,
    whose files ship in the package and match the registry's checksums."""
    monkeypatch.delenv("LASS_MODEL")
    sf.write(tmp_path / "Track00001.wav", mix(22050, 4.0, 1).T, 22050, subtype="PCM_16")
    result = lass("separate", "Track00001.wav", "-o", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "using model synth-drums-bass" in result.stderr and "lass fetch slakh-drums-bass" in result.stderr
    report = check_outputs(tmp_path / "out", "Track00001", 22050, 88200, model="synth-drums-bass")
    assert report["model"]["likelihood"]["kind"] == "latent" and report["wiener"] is True
    assert all("sha256" in f for f in report["model"]["files"].values() if not f.get("generated"))
    stems = [sf.read(tmp_path / f"out/Track00001/{s}.wav")[0] for s in ("drums", "bass")]
    source, _ = sf.read(tmp_path / "Track00001.wav")
    assert all(np.abs(x).max() > 0 for x in stems)  # something was decoded
    np.testing.assert_allclose(stems[0] + stems[1], source, atol=2e-3)  # soft masks split the mixture


def test_stdin_list_resume_force_json_and_flac(tmp_path):
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.flac", mix(44100, 1.0, 2, seed=ord(name)).T, 44100)
    first = lass("separate", "-", "--out", "o", "--json", "--format", "flac", "--bits", "24", stdin="a.flac\nb.flac\n",
                 cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["ok"] and summary["done"] == 2 and [i["status"] for i in summary["inputs"]] == ["done", "done"]
    assert sf.info(tmp_path / "o/a/drums.flac").subtype == "PCM_24"
    stamp = (tmp_path / "o/a/report.json").stat().st_mtime_ns
    again = lass("separate", "a.flac", "b.flac", "--out", "o", "--json", "-q", "--format", "flac", cwd=tmp_path)
    assert json.loads(again.stdout)["skipped"] == 2 and again.stderr == ""
    assert (tmp_path / "o/a/report.json").stat().st_mtime_ns == stamp
    forced = lass("separate", "a.flac", "--out", "o", "--json", "--force", "--format", "flac", cwd=tmp_path)
    assert json.loads(forced.stdout)["done"] == 1
    # Same seed, same options: the same stems.
    again_forced = lass("separate", "a.flac", "--out", "o2", "--format", "flac", "-q", cwd=tmp_path)
    assert again_forced.returncode == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "o/a/bass.flac")[0], sf.read(tmp_path / "o2/a/bass.flac")[0])


def test_existing_stem_is_not_overwritten_without_force(tmp_path):
    sf.write(tmp_path / "a.wav", mix(22050, 0.5, 1).T, 22050)
    (tmp_path / "o/a").mkdir(parents=True)
    (tmp_path / "o/a/drums.wav").write_bytes(b"mine")
    result = lass("separate", "a.wav", "--out", "o", cwd=tmp_path)
    assert result.returncode == 1
    assert "exists (use --force to overwrite)" in result.stderr
    assert (tmp_path / "o/a/drums.wav").read_bytes() == b"mine"


def test_each_bad_input_has_its_own_message_and_the_rest_go_on(tmp_path):
    sf.write(tmp_path / "good.wav", mix(22050, 0.5, 1).T, 22050)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 20)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 22050)
    bad = mix(22050, 0.5, 1)
    bad[0, 5] = np.inf
    sf.write(tmp_path / "inf.wav", bad.T, 22050, subtype="FLOAT")
    result = lass("separate", "good.wav", "missing.wav", "junk.wav", "empty.wav", "inf.wav", "-o", "o", "--json",
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert [i["status"] for i in summary["inputs"]] == ["done", "failed", "failed", "failed", "failed"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("lass: error:")]
    assert len(errors) == 4 and "Traceback" not in result.stderr
    for needle, line in zip(["no such file", "cannot decode", "no audio samples", "non-finite"], errors):
        assert needle in line
    assert not (tmp_path / "o/junk").exists()


def test_model_and_usage_errors(tmp_path):
    sf.write(tmp_path / "a.wav", mix(22050, 0.5, 1).T, 22050)
    unknown = lass("separate", "a.wav", "--model", "nope", cwd=tmp_path)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert "unknown model 'nope'" in unknown.stderr
    missing = lass("separate", "a.wav", "--model", "slakh-drums-bass", cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "lass fetch slakh-drums-bass" in missing.stderr and "--import lass-slakh-ckpts.tar" in missing.stderr
    (tmp_path / "x").mkdir()
    sf.write(tmp_path / "x/a.wav", mix(22050, 0.5, 1).T, 22050)
    clash = lass("separate", "a.wav", "x/a.wav", "-o", "o", cwd=tmp_path)
    assert clash.returncode == 1 and "would both write" in clash.stderr and not (tmp_path / "o").exists()
    reference = lass("separate", "a.wav", "--reference", "piano=a.wav", cwd=tmp_path)
    assert reference.returncode == 1 and "STEM=PATH" in reference.stderr
    assert lass("separate", cwd=tmp_path).returncode == 2
    assert lass("separate", "a.wav", "--beams", "0", cwd=tmp_path).returncode == 2
    upstream = lass("separate", "a.wav", "--model", "tiny-random", "--compile", "--compat", "upstream", cwd=tmp_path)
    assert upstream.returncode == 1 and upstream.stderr.count("\n") == 1 and "--compile" in upstream.stderr


def test_compiled_step_chooses_the_same_tokens(tmp_path):
    """``--compile`` through the real compiler (inductor on CPU): the same search decisions."""
    sf.write(tmp_path / "a.wav", mix(22050, 1.0, 1).T, 22050)
    runs = {}
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        args = ("separate", "a.wav", "--out", name, "--model", "tiny-random", "--save-tokens", f"{name}.npz", *flags)
        result = lass(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        runs[name] = check_outputs(tmp_path / name, "a", 22050, 22050)
        assert runs[name]["compiled"] == (name == "compiled")
    eager, compiled = (np.load(tmp_path / f"{name}.npz") for name in ("eager", "compiled"))
    for stem in ("drums", "bass"):
        np.testing.assert_array_equal(eager[stem], compiled[stem])


def test_references_add_metrics(tmp_path):
    sf.write(tmp_path / "a.wav", mix(22050, 1.0, 1).T, 22050)
    sf.write(tmp_path / "drums.wav", mix(44100, 1.0, 1, seed=3).T, 44100)
    result = lass("separate", "a.wav", "-o", "o", "--reference", "drums=drums.wav", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "o/a/report.json").read_text())["metrics"]
    assert set(metrics) == {"drums"} and set(metrics["drums"]) == {"sdr", "si_sdr"}
    assert all(np.isfinite(v) for v in metrics["drums"].values())


def test_a_failing_write_leaves_no_stem_and_no_staging(tmp_path):
    sf.write(tmp_path / "a.wav", mix(22050, 0.5, 1).T, 22050)
    (tmp_path / "o/a/bass.wav").mkdir(parents=True)  # a folder where a stem must go: the rename fails
    result = lass("separate", "a.wav", "-o", "o", "--force", cwd=tmp_path)
    assert result.returncode == 1 and "lass: error:" in result.stderr
    leftovers = sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*"))
    assert leftovers == ["a", "a/bass.wav"]  # the first stem, already in place, was taken back


def test_model_search_defaults_and_their_overrides(tmp_path):
    """A registry entry's [search] table and `wiener` are the defaults; options on the command
    line win over them."""
    from lass_cli.registry import packaged_registry_text

    text = packaged_registry_text()
    tiny = text[text.index("[models.tiny-random]") :].replace("[models.tiny-random", "[models.tiny-defaults")
    tiny = tiny.replace(
        "likelihood_weight = 3.0\n",
        'likelihood_weight = 3.0\nwiener = true\nsearch = { method = "sample", samples = 3, select = "priors" }\n',
        1,
    )
    (tmp_path / "models.toml").write_text(tiny)
    sf.write(tmp_path / "a.wav", mix(22050, 1.0, 1).T, 22050)
    base = ("separate", "a.wav", "--registry", "models.toml", "--model", "tiny-defaults", "--force")
    assert lass(*base, "-o", "d", cwd=tmp_path).returncode == 0
    report = json.loads((tmp_path / "d/a/report.json").read_text())
    assert (report["settings"]["method"], report["settings"]["samples"], report["settings"]["select"]) == (
        "sample", 3, "priors")  # fmt: skip
    assert report["wiener"] is True
    stems = [sf.read(tmp_path / f"d/a/{s}.wav")[0] for s in ("drums", "bass")]
    np.testing.assert_allclose(stems[0] + stems[1], sf.read(tmp_path / "a.wav")[0], atol=2e-3)
    assert lass(*base, "-o", "o", "--sampler", "beam", "--beams", "2", "--no-wiener", cwd=tmp_path).returncode == 0
    report = json.loads((tmp_path / "o/a/report.json").read_text())
    assert (report["settings"]["method"], report["settings"]["beams"], report["wiener"]) == ("beam", 2, False)
