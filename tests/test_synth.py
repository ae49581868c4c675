"""`lass synth`: Slakh-layout tracks rendered with the real FluidSynth and soundfonts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import yaml

from lass_cli.slakh import default_classes, find_tracks, load_stems
from lass_cli.synth import compose, synth

from .test_cli import lass

pytestmark = pytest.mark.skipif(
    shutil.which("fluidsynth") is None, reason="fluidsynth is not installed (.ci/run installs it)"
)


def test_tracks_have_the_slakh_layout_and_are_reproducible(tmp_path):
    folders = synth(tmp_path / "a", tracks=2, seed=5, split="train", seconds=3.0, rate=22050)
    assert [f.name for f in folders] == ["Track00001", "Track00002"]
    meta = yaml.safe_load((folders[0] / "metadata.yaml").read_text())
    assert meta["stems"]["S00"]["inst_class"] == "Drums" and meta["stems"]["S01"]["inst_class"] == "Bass"
    assert meta["stems"]["S00"]["plugin_name"] == "FluidR3_GM.sf2"
    assert 32 <= meta["stems"]["S01"]["program_num"] <= 39
    for name in ("mix.flac", "stems/S00.flac", "stems/S01.flac", "MIDI/S00.mid", "MIDI/S01.mid"):
        assert (folders[0] / name).is_file(), name
    tracks = find_tracks(tmp_path / "a", "train", default_classes(("drums", "bass")))
    stems = load_stems(tracks[0], 22050)
    assert len(stems["drums"]) == 3 * 22050
    assert np.sqrt(np.mean(stems["drums"] ** 2)) > 1e-3 and np.sqrt(np.mean(stems["bass"] ** 2)) > 1e-3
    mix, _ = sf.read(folders[0] / "mix.flac", dtype="float32")
    np.testing.assert_allclose(mix, stems["drums"] + stems["bass"], atol=2e-4)  # 16-bit FLAC rounding

    again = synth(tmp_path / "b", tracks=1, seed=5, split="train", seconds=3.0, rate=22050)
    for key in ("S00", "S01"):
        np.testing.assert_array_equal(
            sf.read(folders[0] / f"stems/{key}.flac")[0], sf.read(again[0] / f"stems/{key}.flac")[0]
        )
    other = synth(tmp_path / "a", tracks=1, seed=5, split="test", seconds=3.0, rate=22050)
    assert yaml.safe_load((other[0] / "metadata.yaml").read_text())["stems"]["S00"]["plugin_name"] == "TimGM6mb.sf2"
    assert not np.array_equal(sf.read(other[0] / "stems/S01.flac")[0], sf.read(folders[0] / "stems/S01.flac")[0])


def test_several_soundfonts_give_each_track_one_and_keep_its_music(tmp_path):
    fonts = "FluidR3_GM.sf2,TimGM6mb.sf2"
    folders = synth(tmp_path / "m", tracks=6, seed=2, split="train", seconds=1.0, soundfont=fonts)
    used = [yaml.safe_load((f / "metadata.yaml").read_text())["stems"]["S01"]["plugin_name"] for f in folders]
    assert set(used) == {"FluidR3_GM.sf2", "TimGM6mb.sf2"}
    again = synth(tmp_path / "m2", tracks=6, seed=2, split="train", seconds=1.0, soundfont=fonts)
    assert used == [yaml.safe_load((f / "metadata.yaml").read_text())["stems"]["S01"]["plugin_name"] for f in again]
    # The music and settings of a track do not depend on how many soundfonts there are.
    one = yaml.safe_load((synth(tmp_path / "o", 1, 2, "train", 1.0)[0] / "metadata.yaml").read_text())
    many = yaml.safe_load((folders[0] / "metadata.yaml").read_text())
    assert one["lass_synth"] == many["lass_synth"] and one["stems"]["S01"]["render"] == many["stems"]["S01"]["render"]


def test_compositions_vary_and_stay_in_range():
    songs = [compose(np.random.default_rng([1, 0, i]), 8.0) for i in range(12)]
    assert len({s["tempo"] for s in songs}) == 12 and len({s["meter"] for s in songs}) > 1
    for song in songs:
        assert song["drums"] and song["bass"]
        assert all(
            0 <= n.start < 8.0 and n.end > n.start and 1 <= n.velocity <= 127 for n in song["drums"] + song["bass"]
        )
        assert all(24 <= n.pitch <= 60 for n in song["bass"])


def test_cli_renders_and_skips_finished_tracks(tmp_path):
    first = lass("synth", "out", "--tracks", "2", "--seconds", "2", "--split", "validation", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    stamp = (tmp_path / "out/validation/Track00001/stems/S00.flac").stat().st_mtime_ns
    again = lass("synth", "out", "--tracks", "3", "--seconds", "2", "--split", "validation", "-q", cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "out/validation/Track00003/metadata.yaml").is_file()
    assert (tmp_path / "out/validation/Track00001/stems/S00.flac").stat().st_mtime_ns == stamp
    bad = lass("synth", "out", "--soundfont", "nope.sf2", cwd=tmp_path)
    assert bad.returncode == 1 and "soundfont nope.sf2 not found" in bad.stderr
