"""Two priors of one config stepped as one computation (lass_cli.twins)."""

from __future__ import annotations

import pytest
import torch

from lass_cli import twins as twins_module
from lass_cli.prior import COLUMN, PREVIOUS_ROW, ROW, PriorCache
from lass_cli.twins import TwinPriors, can_step_as_twins

from .conftest import random_prior

ATOL = 2e-5
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("grouping", [True, False], ids=["grouped", "alone"])
@pytest.mark.parametrize("overrides", [{}, {"heads": 1, "res_scale": True}], ids=["small", "one-head-res-scale"])
def test_twins_score_as_each_prior_alone_through_reorders(grouping, overrides, device, monkeypatch):
    """Through reorders that repeat and drop rows and change their count, with and without rows
    read in groups, the twins' logits are each prior's own step's, and the last ones a fresh
    teacher-forced pass on the histories."""
    if grouping:
        monkeypatch.setattr(PriorCache, "grouping_pays_from", {"cpu": 0, "other": 0})
    priors = (random_prior(seed=21, **overrides).to(device), random_prior(seed=22, **overrides).to(device))
    twins = TwinPriors(priors)
    length, capacity = priors[0].config.n_ctx, 8
    generator = torch.Generator().manual_seed(5)
    joint = twins.new_cache(rows=2, max_len=length, capacity=capacity)
    alone = [p.new_cache(rows=2, max_len=length, capacity=capacity) for p in priors]
    histories = torch.zeros(2, 2, 0, dtype=torch.long)
    previous, kinds = None, set()
    for t in range(length):
        logits = twins.step(joint, previous)
        for prior, cache, mine, own in zip(priors, alone, logits, (0, 1), strict=True):
            expected = prior.step(cache, None if previous is None else previous[own])
            assert torch.allclose(mine, expected, atol=ATOL, rtol=0), t
        kinds |= {kind for kind, groups in joint.groups.items() if groups is not None}
        if t == length - 1:
            break
        count = capacity if t % 3 else int(torch.randint(1, capacity + 1, (1,), generator=generator))
        half = torch.randint(0, 2, (count,), generator=generator)  # two windows, rows drawn within each
        index = half * joint.rows // 2 + torch.randint(0, max(1, joint.rows // 2), (count,), generator=generator)
        index = index.clamp(max=joint.rows - 1)
        for cache in (joint, *alone):
            cache.reorder(index.to(device))
        new = torch.randint(0, priors[0].config.bins, (2, count), generator=generator)
        histories = torch.cat((histories[:, index], new[:, :, None]), 2)
        previous = (new[0].to(device), new[1].to(device))
    assert kinds == ({ROW, COLUMN, PREVIOUS_ROW} if grouping else set())
    for prior, own, mine in zip(priors, histories, logits, strict=True):
        padded = torch.cat((own, own[:, :1]), 1).to(device)
        assert torch.allclose(mine, prior(padded)[:, -1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_twins_never_reordered_read_their_keys_in_place_as_each_prior_alone(device):
    """A sampler's twins (rows never reordered) read both priors' keys where they lie: their logits
    are each prior's own step's (also reading in place) and the teacher-forced pass's."""
    priors = (random_prior(seed=23).to(device), random_prior(seed=24).to(device))
    twins = TwinPriors(priors)
    length, rows = priors[0].config.n_ctx, 3
    tokens = torch.randint(0, priors[0].config.bins, (2, rows, length), generator=torch.Generator().manual_seed(2))
    joint = twins.new_cache(rows=rows, max_len=length)
    alone = [p.new_cache(rows=rows, max_len=length) for p in priors]
    for t in range(length):
        previous = None if t == 0 else (tokens[0, :, t - 1].to(device), tokens[1, :, t - 1].to(device))
        logits = twins.step(joint, previous)
        for prior, cache, mine, own in zip(priors, alone, logits, (0, 1), strict=True):
            expected = prior.step(cache, None if previous is None else previous[own])
            assert torch.allclose(mine, expected, atol=ATOL, rtol=0), t
    assert not joint.reordered and all(where is not None for where in joint._in_place.values())
    for prior, own, mine in zip(priors, tokens, logits, strict=True):
        assert torch.allclose(mine, prior(own.to(device))[:, -1], atol=ATOL, rtol=0)


def test_only_small_eager_float32_priors_of_one_config_are_twins(monkeypatch):
    first, second = random_prior(seed=1), random_prior(seed=2)
    limit = first.weight_bytes + 1
    assert can_step_as_twins((first, second), limit)
    monkeypatch.setattr(twins_module, "WIDEST", first.config.prior_width - 1)
    assert not can_step_as_twins((first, second), limit)  # wide ones: MKL's packed products are faster
    monkeypatch.undo()
    assert not can_step_as_twins((first, second), first.weight_bytes)  # large ones: another way
    assert not can_step_as_twins((first, random_prior(seed=2, prior_depth=3)), limit)
    assert not can_step_as_twins((first, random_prior(seed=2).double()), limit)
    assert not can_step_as_twins((first, random_prior(seed=2).set_compute_dtype(torch.bfloat16)), limit)
    assert not can_step_as_twins((first, random_prior(seed=2).compile_step(backend="eager")), limit)
    assert not can_step_as_twins((first, object()), limit)


def test_twins_check_their_input():
    twins = TwinPriors((random_prior(seed=1), random_prior(seed=2)))
    cache = twins.new_cache(rows=3, max_len=2)
    twins.step(cache, None)
    with pytest.raises(ValueError, match="two tensors of shape"):
        twins.step(cache, (torch.zeros(3, dtype=torch.long), None))
    twins.step(cache, (torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)))
    with pytest.raises(IndexError, match="full"):
        twins.step(cache, (torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)))
