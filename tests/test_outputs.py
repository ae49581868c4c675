"""What `lass separate` writes for real songs and batches: residual, subsets, MP3, folders (issue 12),
and shards run at once as separate processes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from lass_cli import audio

from .test_cli import lass, mix, needs_ffmpeg
from .test_evaluate import rows_without_timing, slakh  # noqa: F401  (module fixture)


def test_residual_makes_the_written_stems_add_up_to_the_input(tmp_path):
    rate = 44100
    sf.write(tmp_path / "song.wav", mix(rate, 1.5, 2).T, rate, subtype="FLOAT")
    done = lass("separate", "song.wav", "--out", "out", "--beams", "2", "--residual", "--bits", "32f", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stems = {s: sf.read(tmp_path / "out" / "song" / f"{s}.wav", dtype="float64")[0] for s in ("drums", "bass", "other")}
    source = audio.to_mono(sf.read(tmp_path / "song.wav", dtype="float32", always_2d=True)[0].T)
    assert np.max(np.abs(sum(stems.values()) - source)) < 1e-6
    report = json.loads((tmp_path / "out" / "song" / "report.json").read_text())
    assert set(report["outputs"]) == {"drums", "bass", "other"} and report["settings"]["stems"] == [
        "drums",
        "bass",
        "other",
    ]


def test_stems_streamed_to_their_files_equal_the_whole_file_separation(tmp_path):
    """Written two windows at a time (--batch-windows 2: the VQ-VAE's own batch on a CPU, so that
    both runs make the same coder calls), cross-faded, resampled back to 44.1 kHz and limited, the
    files hold to the bit what separating the whole file in one batch gives."""
    from lass_cli.registry import load_registry
    from lass_cli.search import SearchOptions
    from lass_cli.separate import Separator, pick_device

    rate = 44100
    song = (3 * mix(rate, 2.5, 2)).astype(np.float32)  # loud: rescaling below 1 is part of the check
    sf.write(tmp_path / "song.wav", song.T, rate, subtype="FLOAT")
    args = ["--beams", "2", "--residual", "--bits", "32f", "--overlap", "0.25", "--model", "tiny-random"]
    done = lass("separate", "song.wav", "--out", "out", "--batch-windows", "2", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    separator = Separator.load(load_registry()["tiny-random"], pick_device("cpu"))
    stems, details = separator.separate(song, rate, SearchOptions(beams=2), overlap=0.25)
    assert details["windows"]["count"] > 6 and details["windows"]["batch_windows"] >= details["windows"]["count"]
    stems["other"] = audio.to_mono(song) - sum(stems.values())
    expected = audio.limit_peaks(stems, "rescale")
    assert max(float(np.abs(x).max()) for x in stems.values()) > 1  # so the files were rescaled
    for stem, samples in expected.items():
        written = sf.read(tmp_path / "out" / "song" / f"{stem}.wav", dtype="float32")[0]
        np.testing.assert_array_equal(written, samples)
    report = json.loads((tmp_path / "out" / "song" / "report.json").read_text())
    assert report["peaks"] == pytest.approx({s: float(np.abs(x).max()) for s, x in stems.items()})
    assert report["windows"]["batch_windows"] == 2
    assert not list((tmp_path / "out").glob(".lass-partial-*"))


def test_short_inputs_searched_together_give_what_each_gives_alone(tmp_path):
    """Three short inputs (two rates, one stereo) fill one search: each input's stems and report
    are those of separating it alone, and the report says how many windows were searched at once;
    --batch-windows 1 keeps them apart."""
    from lass_cli.registry import load_registry
    from lass_cli.search import SearchOptions
    from lass_cli.separate import Separator, pick_device

    songs = {"a": (44100, mix(44100, 0.3, 1, seed=1)), "b": (22050, mix(22050, 0.5, 2, seed=2)),
             "c": (44100, mix(44100, 0.2, 1, seed=3))}  # fmt: skip
    for name, (rate, song) in songs.items():
        sf.write(tmp_path / f"{name}.wav", song.T, rate, subtype="FLOAT")
    args = ["--beams", "2", "--bits", "32f", "--model", "tiny-random", "--json"]
    done = lass("separate", "a.wav", "b.wav", "c.wav", "--out", "out", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [entry["status"] for entry in json.loads(done.stdout)["inputs"]] == ["done"] * 3
    separator = Separator.load(load_registry()["tiny-random"], pick_device("cpu"))
    reports = {name: json.loads((tmp_path / "out" / name / "report.json").read_text()) for name in songs}
    together = sum(report["windows"]["count"] for report in reports.values())
    assert together > 3
    for name, (rate, song) in songs.items():
        stems, details = separator.separate(song, rate, SearchOptions(beams=2), overlap=0.25)
        for stem, samples in stems.items():
            written = sf.read(tmp_path / "out" / name / f"{stem}.wav", dtype="float32")[0]
            np.testing.assert_allclose(written, samples, rtol=0, atol=1e-6)
        assert reports[name]["windows"]["scores"] == pytest.approx(details["windows"]["scores"], abs=1e-3)
        assert reports[name]["windows"]["batch_windows"] == together
    apart = lass("separate", "a.wav", "b.wav", "c.wav", "--out", "apart", "--batch-windows", "1", *args, cwd=tmp_path)
    assert apart.returncode == 0, apart.stderr
    assert json.loads((tmp_path / "apart" / "b" / "report.json").read_text())["windows"]["batch_windows"] == 1


@needs_ffmpeg
def test_a_subset_of_stems_in_mp3_at_the_input_length(tmp_path):
    rate = 22050
    sf.write(tmp_path / "song.flac", mix(rate, 1.3, 1).T, rate)
    done = lass("separate", "song.flac", "--out", "out", "--beams", "2", "--stems", "bass", "--format", "mp3",
                "--mp3-bitrate", "192k", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / "song"
    assert sorted(p.name for p in folder.iterdir()) == ["bass.mp3", "report.json"]
    decoded, decoded_rate = audio.load(folder / "bass.mp3")
    assert decoded_rate == rate and decoded.shape == (1, int(1.3 * rate))
    assert np.abs(decoded).max() > 0
    bad = lass("separate", "song.flac", "--out", "out2", "--stems", "vocals", cwd=tmp_path)
    assert bad.returncode == 1 and "--stems must name some of drums, bass" in bad.stderr


def test_a_folder_input_is_searched_recursively_and_mirrored(tmp_path):
    rate = 22050
    for i, relative in enumerate(["album/one.wav", "album/disc2/two.flac", "three.wav"]):
        path = tmp_path / "music" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, mix(rate, 0.5, 1, seed=i).T, rate)
    (tmp_path / "music" / "notes.txt").write_text("not audio")
    done = lass("separate", "music", "--out", "out", "--beams", "2", "--json", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    inputs = [r["input"] for r in summary["inputs"]]
    assert inputs == ["music/album/disc2/two.flac", "music/album/one.wav", "music/three.wav"]
    for track in ("album/one", "album/disc2/two", "three"):
        assert (tmp_path / "out" / track / "drums.wav").is_file() and (
            tmp_path / "out" / track / "report.json"
        ).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    none = lass("separate", "empty", "--out", "out", cwd=tmp_path)
    assert none.returncode == 1 and "no audio files" in none.stderr


def test_three_shards_at_once_merge_to_the_unsharded_report(slakh, tmp_path):  # noqa: F811
    common = ["--model", "tiny-random", "--num-mixtures", "6", "--seed", "1", "--beams", "2", "--batch-windows", "1",
              "-q"]  # fmt: skip
    whole = lass("evaluate", str(slakh), "--out", "whole.json", *common, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    processes = [
        subprocess.Popen([sys.executable, "-m", "lass_cli", "evaluate", str(slakh), "--out", f"part{i}.json",
                          "--shard", f"{i}/3", *common], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]  # fmt: skip
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    merged = lass("evaluate", "merge", "merged.json", "part0.json", "part1.json", "part2.json", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    expected = json.loads((tmp_path / "whole.json").read_text())
    got = json.loads((tmp_path / "merged.json").read_text())
    assert rows_without_timing(got) == rows_without_timing(expected) and got["aggregates"] == expected["aggregates"]


def test_overlapping_windows_keep_masked_stems_summing_to_the_input_and_decode_again(tmp_path):
    rate = 22050  # the model's rate: no resampling between the mask and the file
    sf.write(tmp_path / "song.wav", mix(rate, 1.6, 1).T, rate, subtype="FLOAT")
    common = ["--beams", "2", "--bits", "32f", "--clip-mode", "none"]
    masked = lass("separate", "song.wav", "--out", "m", "--wiener", "--overlap", "0.5", *common, cwd=tmp_path)
    assert masked.returncode == 0, masked.stderr
    report = json.loads((tmp_path / "m" / "song" / "report.json").read_text())
    windows = report["windows"]  # tiny-random: windows of 4096 samples, every 2048
    assert windows["overlap"] == 0.5 and windows["count"] == audio.window_count(int(1.6 * rate), 4096, 2048) == 17
    source = sf.read(tmp_path / "song.wav", dtype="float64")[0]
    total = sum(sf.read(tmp_path / "m" / "song" / f"{s}.wav", dtype="float64")[0] for s in ("drums", "bass"))
    np.testing.assert_allclose(total, source, atol=1e-5)
    plain = lass("separate", "song.wav", "--out", "p", "--no-wiener", "--overlap", "0.25", "--save-tokens", "t.npz",
                 *common, cwd=tmp_path)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "p" / "song" / "report.json").read_text())["windows"]["overlap"] == 0.25
    again = lass("decode", "t.npz", "--out", "again", "--bits", "32f", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for stem in ("drums", "bass"):
        np.testing.assert_allclose(sf.read(tmp_path / "again" / f"{stem}.wav")[0],
                                   sf.read(tmp_path / "p" / "song" / f"{stem}.wav")[0], atol=1e-4)  # fmt: skip
