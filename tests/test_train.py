"""`lass train`: deterministic, resumable training of the VQ-VAE and a prior on synthetic folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lass_cli.checkpoint import read_checkpoint
from lass_cli.prior import Prior
from lass_cli.vqvae import VQVAE, VQVAEConfig

from .slakh_folder import render
from .test_cli import lass
from .test_evaluate import run_and_kill


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    render(root, "train", tracks=2, seconds=1.0)
    render(root, "test", tracks=1, seconds=1.0, seed=3)
    return root


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


def test_killed_vqvae_training_resumes_to_the_same_weights(data, tmp_path):
    common = ["--preset", "tiny", "--steps", "12", "--batch-size", "3", "--segment", "2048", "--checkpoint-every", "3",
              "--val", str(data), "--threads", "1", "-q"]  # fmt: skip
    whole = lass("train", "vqvae", str(data), "--out", "whole", *common, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    state = tmp_path / "cut" / "train_state.pt"
    run_and_kill(["train", "vqvae", str(data), "--out", "cut", *common], tmp_path,
                 lambda: state.exists() and torch.load(state, weights_only=False)["step"] >= 3)  # fmt: skip
    assert not (tmp_path / "cut/vqvae.safetensors").exists()
    again = lass("train", "vqvae", str(data), "--out", "cut", *common, cwd=tmp_path)
    assert again.returncode == 1 and "--resume" in again.stderr
    resumed = lass("train", "vqvae", str(data), "--out", "cut", "--resume", *common, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "whole/vqvae.safetensors"), weights(tmp_path / "cut/vqvae.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "whole/log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [3, 6, 9, 12] and all("val_loss" in e for e in log)
    assert all(0 < e["loss"] < 10 and 0 < e["codes_used_0"] <= 1 for e in log)  # finite, codes in use
    model = VQVAE.from_checkpoint(tmp_path / "whole/vqvae.safetensors")
    assert model.encode(torch.randn(2, 4096) * 0.1).shape == (2, 4096 // 32)


def test_prior_training_on_vqvae_tokens(data, tmp_path):
    made = lass("train", "vqvae", str(data), "--out", "v", "--preset", "tiny", "--steps", "3", "--batch-size", "3",
                "--segment", "2048", "-q", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    common = ["--stem", "bass", "--vqvae", "v/vqvae.safetensors", "--preset", "tiny", "--steps", "8",
              "--batch-size", "4", "--checkpoint-every", "4", "--val", str(data), "--threads", "1", "-q"]  # fmt: skip
    first = lass("train", "prior", str(data), "--out", "p1", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = lass("train", "prior", str(data), "--out", "p2", *common, cwd=tmp_path)
    a, b = weights(tmp_path / "p1/prior_bass.safetensors"), weights(tmp_path / "p2/prior_bass.safetensors")
    assert second.returncode == 0 and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    prior = Prior.from_checkpoint(tmp_path / "p1/prior_bass.safetensors")
    assert prior.config.bins == 64
    log = [json.loads(line) for line in (tmp_path / "p1/log.jsonl").read_text().splitlines()]
    assert {"val_loss", "val_accuracy"} <= set(log[-1])
    # A resumed run reads its tokens back from DIR/tokens-*.npz and still matches a fresh run.
    assert (tmp_path / "p1/tokens-bass-train.npz").is_file() and (tmp_path / "p1/tokens-bass-val.npz").is_file()
    longer = [a if a != "8" else "10" for a in common]
    assert lass("train", "prior", str(data), "--out", "p1", "--resume", *longer, cwd=tmp_path).returncode == 0
    assert lass("train", "prior", str(data), "--out", "p4", *longer, cwd=tmp_path).returncode == 0
    a, b = weights(tmp_path / "p1/prior_bass.safetensors"), weights(tmp_path / "p4/prior_bass.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    missing = lass("train", "prior", str(data), "--out", "p3", "--vqvae", "v/vqvae.safetensors", cwd=tmp_path)
    assert missing.returncode == 2  # --stem is required
    # Fine-tuning starts from the given weights: steps at learning rate 0 keep them exactly.
    tuned = [a for a in common if a != "--preset" and a != "tiny"] + ["--lr", "0"]
    run = lass("train", "prior", str(data), "--out", "p5", "--init", "p1/prior_bass.safetensors", *tuned, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    a, b = weights(tmp_path / "p1/prior_bass.safetensors"), weights(tmp_path / "p5/prior_bass.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "p5/log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 8


def test_linearisation_loss_uses_pairs_and_their_mixture(data, tmp_path):
    from lass_cli.train import TRAIN_RMS, Sampler, vqvae_loss

    sampler = Sampler(str(data), "train", 22050, seed=4)
    rows = sampler.audio(7, 2048).numpy()
    np.testing.assert_allclose(rows[2], (rows[0] + rows[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(rows[5], (rows[3] + rows[4]) / 2, atol=1e-6)
    assert 0.5 * TRAIN_RMS < np.sqrt(np.mean(rows[2] ** 2)) < 2 * TRAIN_RMS
    model = VQVAE(VQVAEConfig(levels=1, downs_t=(3,), strides_t=(2,), emb_width=8, l_bins=16, width=8, depth=1,
                              hvqvae_multipliers=(1,)))  # fmt: skip
    with torch.no_grad():
        model.bottleneck.level_blocks[0].k.normal_()
    _, plain = vqvae_loss(model, torch.from_numpy(rows), None, torch.Generator())
    total, metrics = vqvae_loss(model, torch.from_numpy(rows), None, torch.Generator(), lin_weight=1.0)
    assert "lin_0" not in plain and metrics["lin_0"] >= 0
    total.backward()
    assert model.encoders[0].level_blocks[0].model[0][0].weight.grad is not None
    run = lass("train", "vqvae", str(data), "--out", "lin", "--preset", "tiny", "--steps", "2", "--batch-size", "3",
               "--segment", "2048", "--checkpoint-every", "1", "--linearize", "-q", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    log = [json.loads(line) for line in (tmp_path / "lin/log.jsonl").read_text().splitlines()]
    assert all("lin_0" in e for e in log)
