"""`lass evaluate` and `lass count-likelihood` on rendered Slakh folders with the tiny model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import sparse

from lass_cli.likelihood import Counts
from lass_cli.metrics import museval_sdr, si_sdr

from .slakh_folder import render
from .test_cli import lass

TIMING = {"seconds", "created"}


@pytest.fixture(scope="module")
def slakh(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slakh")
    render(root, "test", tracks=3, seconds=1.2)
    render(root, "train", tracks=3, seconds=2.0, seed=1)
    return root


def rows_without_timing(report: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in report["rows"]]


def test_evaluate_rows_match_museval_on_saved_audio_and_shards_merge(slakh, tmp_path):
    common = ["--model", "tiny-random", "--num-mixtures", "6", "--seed", "2", "--beams", "3", "--batch-windows", "2"]
    common.append("-q")
    whole = lass("evaluate", str(slakh), "--out", "whole.json", "--save-audio", "audio", *common, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    report = json.loads((tmp_path / "whole.json").read_text())
    assert report["lass_evaluation"] == 1 and [r["row"] for r in report["rows"]] == list(range(6))
    assert set(report["aggregates"]) == {"lass", "mixture", "oracle", "lowpass"}
    assert set(report["aggregates"]["lass"]) == {"drums", "bass", "average"}
    for row in report["rows"]:
        folder = tmp_path / "audio" / f"{row['row']:05d}"
        for stem in ("drums", "bass"):
            estimate, rate = sf.read(folder / f"{stem}.wav")
            reference, _ = sf.read(folder / f"reference_{stem}.wav")
            assert len(estimate) == row["samples"] == len(reference)
            expected = museval_sdr(reference, estimate, rate)
            assert row["lass"][stem]["sdr"] == pytest.approx(expected, abs=1e-3, nan_ok=True)
            assert row["lass"][stem]["si_sdr"] == pytest.approx(si_sdr(reference, estimate), abs=1e-3)
        mixture, _ = sf.read(folder / "mixture.wav")
        assert row["mixture"]["drums"]["sdr"] == pytest.approx(
            museval_sdr(sf.read(folder / "reference_drums.wav")[0], mixture, 22050), abs=1e-3, nan_ok=True
        )  # noqa: E501
        assert row["mixture"]["bass"]["si_sdri"] == 0.0
        assert row["lowpass"]["bass"]["si_sdr"] > row["mixture"]["bass"]["si_sdr"]  # low sines, broadband drums
    for i in (0, 1):
        part = lass("evaluate", str(slakh), "--out", f"part{i}.json", "--shard", f"{i}/2", *common, cwd=tmp_path)
        assert part.returncode == 0, part.stderr
        rows = json.loads((tmp_path / f"part{i}.json").read_text())["rows"]
        assert [r["row"] for r in rows] == [k for k in range(6) if (k // 2) % 2 == i]  # groups of 2 rows
    merged = lass("evaluate", "merge", "merged.json", "part0.json", "part1.json", "--json", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    merged_report = json.loads((tmp_path / "merged.json").read_text())
    assert rows_without_timing(merged_report) == rows_without_timing(report)
    assert merged_report["aggregates"] == report["aggregates"]
    again = lass("evaluate", str(slakh), "--out", "whole.json", *common, cwd=tmp_path)
    assert again.returncode == 1 and "--resume" in again.stderr


def run_and_kill(args: list[str], cwd: Path, ready) -> None:
    """Start `lass ARGS`, wait until ``ready()`` holds, then kill it hard."""
    process = subprocess.Popen([sys.executable, "-m", "lass_cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_evaluation_resumes_to_the_same_report(slakh, tmp_path):
    common = ["--model", "tiny-random", "--num-mixtures", "8", "--beams", "2", "--batch-windows", "1", "-q"]
    done = lass("evaluate", str(slakh), "--out", "full.json", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    def two_rows() -> bool:
        try:
            return len(json.loads((tmp_path / "cut.json").read_text())["rows"]) >= 2
        except (OSError, ValueError):
            return False

    run_and_kill(["evaluate", str(slakh), "--out", "cut.json", *common], tmp_path, two_rows)
    partial = json.loads((tmp_path / "cut.json").read_text())
    assert 2 <= len(partial["rows"]) < 8
    resumed = lass("evaluate", str(slakh), "--out", "cut.json", "--resume", *common, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads((tmp_path / "cut.json").read_text())
    assert rows_without_timing(final) == rows_without_timing(json.loads((tmp_path / "full.json").read_text()))


def test_count_likelihood_resume_shards_and_merge(slakh, tmp_path):
    common = ["--model", "tiny-random", "--split", "train", "--batch-size", "1", "--epochs", "2", "-q"]
    full = lass("count-likelihood", str(slakh), "--out", "full.npz", "--json", *common, cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    stats = json.loads(full.stdout)
    assert stats["bins"] == 32 and stats["nnz"] > 0 and 0 < stats["density"] < 1
    reference = Counts.load(tmp_path / "full.npz")
    theirs = sparse.load_npz(tmp_path / "full.npz")
    np.testing.assert_array_equal(theirs.todense(), reference.dense())

    checkpoint = tmp_path / "cut.npz.resume.npz"
    run_and_kill(["count-likelihood", str(slakh), "--out", "cut.npz", "--checkpoint-every", "2", *common], tmp_path,
                 checkpoint.exists)  # fmt: skip
    assert checkpoint.exists() and not (tmp_path / "cut.npz").exists()
    resumed = lass("count-likelihood", str(slakh), "--out", "cut.npz", "--resume", *common, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    again = Counts.load(tmp_path / "cut.npz")
    np.testing.assert_array_equal(again.keys, reference.keys)
    np.testing.assert_array_equal(again.values, reference.values)
    assert not checkpoint.exists()

    for i in range(3):
        part = lass("count-likelihood", str(slakh), "--out", f"p{i}.npz", "--shard", f"{i}/3", *common, cwd=tmp_path)
        assert part.returncode == 0, part.stderr
    merged = lass("count-likelihood", "merge", "merged.npz", "p0.npz", "p1.npz", "p2.npz", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr and "nonzeros" in merged.stdout
    total = Counts.load(tmp_path / "merged.npz")
    np.testing.assert_array_equal(total.keys, reference.keys)
    np.testing.assert_array_equal(total.values, reference.values)


def test_crossover_baseline_splits_the_mixture_sum():
    from lass_cli.evaluate import crossover

    rate = 22050
    t = np.arange(rate) / rate
    low, high = np.sin(2 * np.pi * 50 * t), 0.5 * np.sin(2 * np.pi * 2000 * t)
    split = crossover((low + high).astype(np.float32), ["drums", "bass"], rate)
    np.testing.assert_allclose(split["bass"] + split["drums"], low + high, atol=1e-6)
    inner = slice(rate // 10, -rate // 10)
    assert np.abs(split["bass"][inner] - low[inner]).max() < 0.05
    assert crossover(low.astype(np.float32), ["vocals", "piano"], rate) is None
