"""Slakh folders and the evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from lass_cli.slakh import all_chunks, default_classes, find_tracks, is_silent, load_stems, parse_shard, seeded_subset

from .slakh_folder import render

CLASSES = default_classes(("drums", "bass"))


def test_stems_come_from_metadata_and_are_summed(tmp_path):
    truth = render(tmp_path, tracks=2)
    tracks = find_tracks(tmp_path, "test", CLASSES)
    assert [t.name for t in tracks] == ["Track00001", "Track00002"]
    assert [p.name for p in tracks[0].files["bass"]] == ["S01.flac", "S02.wav"]  # S04 was not rendered
    assert [p.name for p in tracks[0].files["drums"]] == ["S00.flac"]
    stems = load_stems(tracks[0], 22050)
    np.testing.assert_allclose(stems["bass"], truth["Track00001"]["bass"], atol=1e-4)
    at_44k = load_stems(tracks[0], 44100)
    assert len(at_44k["drums"]) == 2 * len(stems["drums"])
    # A split folder itself works too, and a missing split is an error.
    assert [t.name for t in find_tracks(tmp_path / "test", None, CLASSES)] == ["Track00001", "Track00002"]
    with pytest.raises(ValueError, match="no train/ folder"):
        find_tracks(tmp_path, "train", CLASSES)
    with pytest.raises(ValueError, match="no track"):
        find_tracks(tmp_path, "test", {"drums": "Drums", "vocals": "Vocals"})


def test_upstream_two_folder_layout(tmp_path):
    for stem in ("drums", "bass"):
        (tmp_path / stem).mkdir()
        for name in ("Track00001.wav", "Track00002.wav"):
            sf.write(tmp_path / stem / name, np.full(100, 0.1, np.float32), 22050)
    sf.write(tmp_path / "drums" / "Track00003.wav", np.zeros(100, np.float32), 22050)  # no bass: left out
    tracks = find_tracks(tmp_path, "test", CLASSES)
    assert [t.name for t in tracks] == ["Track00001", "Track00002"]


def test_chunks_skip_silence_and_short_tails(tmp_path):
    render(tmp_path, tracks=3, seconds=1.2)
    tracks = find_tracks(tmp_path, "test", CLASSES)
    chunks = all_chunks(tracks, 22050, window=8192, hop=32)
    n = int(1.2 * 22050)  # 26460 samples: chunks of 8192 at 0, 8192, 16384 and a tail of 1884
    by_track = {}
    for c in chunks:
        by_track.setdefault(c.track, []).append((c.index, c.length))
    assert by_track["Track00001"] == [(0, 8192), (1, 8192), (2, 8192), (3, n - 3 * 8192)]
    assert [i for i, _ in by_track["Track00002"]] == [0, 1]  # drums silent after 13230: chunks 2, 3 go
    assert is_silent(np.zeros(10)) and not is_silent(np.full(10, 0.01))
    assert all(c.length >= 32 for c in chunks)


def test_subset_and_shards():
    first, again = seeded_subset(20, 7, seed=3), seeded_subset(20, 7, seed=3)
    assert first == again and len(set(first)) == 7 and seeded_subset(20, 7, seed=4) != first
    assert sorted(seeded_subset(5, None, 0)) == list(range(5))
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
