"""Shared test helpers: the Jukebox parity fixtures in ../shared beside the clone."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lass_cli.prior import Prior, PriorConfig

SHARED = Path(os.environ.get("LASS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
JUKEBOX = SHARED / "fixtures" / "jukebox"


@pytest.fixture(autouse=True)
def tiny_default_model(monkeypatch):
    """Commands run without --model use the tiny random model (fast); tests of the default choice
    remove LASS_MODEL themselves."""
    monkeypatch.setenv("LASS_MODEL", "tiny-random")


def jukebox_fixture(name: str) -> Path:
    """Path of a parity fixture; skips only when the whole ../shared folder is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: Jukebox parity fixtures come from ../shared/fixtures/jukebox")
    path = JUKEBOX / name
    assert path.is_file(), f"fixture {path} is missing although {SHARED} exists"
    return path


@pytest.fixture(scope="session")
def vqvae_reference() -> dict[str, np.ndarray]:
    return dict(np.load(jukebox_fixture("vqvae_reference.npz")))


@pytest.fixture(scope="session")
def prior_reference() -> dict[str, np.ndarray]:
    return dict(np.load(jukebox_fixture("prior_reference.npz")))


def fixture_keys(name: str) -> dict[str, tuple[list[int], str]]:
    """Keys, shapes and dtypes listed in a ``*_state_dict_keys.tsv`` fixture."""
    rows = {}
    for line in jukebox_fixture(name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            rows[key] = ([int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype)
    return rows


SMALL = dict(n_ctx=48, prior_width=32, prior_depth=6, heads=4, blocks=4, m_attn=0.5, m_mlp=2.0, l_bins=24)


def random_prior(seed: int = 0, **overrides) -> Prior:
    """A tiny prior whose every weight matters (the default init gives near-uniform attention)."""
    torch.manual_seed(seed)
    prior = Prior(PriorConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        for name, param in prior.named_parameters():
            if name.endswith(".w"):
                param.normal_(0, 1 / math.sqrt(param.shape[0]))
            elif name.endswith(".b"):
                param.normal_(0, 0.05)
            elif "ln_" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0, 0.3)
    return prior
