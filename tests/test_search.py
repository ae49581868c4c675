"""Samplers: beam search against a brute-force K x K reference, batching, greedy, sampling."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from lass_cli import search as search_module
from lass_cli.likelihood import Counts
from lass_cli.search import SearchOptions, beam_search, search

from .conftest import random_prior

BINS = 16


def random_counts(seed: int, bins: int = BINS, triples: int = 1500, missing: int = 1) -> Counts:
    """Random sparse counts; the last ``missing`` mixture tokens are never counted."""
    rng = np.random.default_rng(seed)
    z1, z2 = rng.integers(0, bins, (2, triples))
    m = (z1 * 3 + z2 * 5 + rng.integers(0, 2, triples)) % (bins - missing)
    counts = Counts(bins)
    counts.add(z1, z2, m)
    return counts


def brute_force_grid(priors, step_scores, length: int, beams: int):
    """One window, scoring the whole K x K grid of every beam at every step; ``step_scores(t)`` is
    step t's (K, K) log-likelihood. Returns the best z1, z2 and its score."""
    caches = [p.new_cache(rows=1, max_len=length, capacity=beams) for p in priors]
    cum = torch.zeros(1, dtype=torch.float64)
    histories = torch.zeros(2, 1, 0, dtype=torch.long)
    previous = (None, None)
    for t in range(length):
        lp1, lp2 = (torch.log_softmax(p.step(c, prev), -1).double() for p, c, prev in zip(priors, caches, previous))
        bins = lp1.shape[-1]
        grid = cum[:, None, None] + lp1[:, :, None] + lp2[:, None, :] + step_scores(t)[None]
        cum, index = grid.flatten().topk(beams)
        parent, z1, z2 = index // (bins * bins), (index // bins) % bins, index % bins
        histories = torch.cat((histories[:, parent], torch.stack((z1, z2))[:, :, None]), 2)
        for cache in caches:
            cache.reorder(parent)
        previous = (z1, z2)
    best = int(cum.argmax())
    return histories[0, best], histories[1, best], float(cum[best])


def brute_force_beam(priors, counts: Counts, weight: float, mixture: torch.Tensor, beams: int):
    dense = torch.from_numpy(counts.dense()).double()
    log_p = weight * torch.log(dense / dense.sum(-1, keepdim=True))  # -inf where never counted

    def step_scores(t: int) -> torch.Tensor:
        slice_ = log_p[:, :, mixture[t]]
        if not torch.isfinite(slice_).any():
            return torch.zeros(counts.bins, counts.bins, dtype=torch.float64)  # no entries: the priors alone
        return slice_

    return brute_force_grid(priors, step_scores, len(mixture), beams)


def make_priors(seed: int = 0):
    return (
        random_prior(seed, l_bins=BINS, n_ctx=24, blocks=4),
        random_prior(seed + 100, l_bins=BINS, n_ctx=24, blocks=4),
    )


@pytest.mark.parametrize(("beams", "windows", "weight"), [(1, 1, 3.0), (4, 3, 3.0), (7, 2, 0.5), (12, 2, 10.0)])
def test_beam_search_equals_brute_force(beams, windows, weight):
    priors = make_priors(beams)
    counts = random_counts(beams)
    likelihood = counts.likelihood(weight=weight)
    generator = torch.Generator().manual_seed(beams)
    mixture = torch.randint(0, BINS, (windows, 14), generator=generator)
    mixture[0, 3] = BINS - 1  # a token never counted: that step falls back to the priors
    result = search(priors, likelihood, mixture, SearchOptions(beams=beams))
    assert result.tokens[0].shape == (windows, 14)
    for w in range(windows):
        z1, z2, score = brute_force_beam(priors, counts, weight, mixture[w], beams)
        np.testing.assert_array_equal(result.tokens[0][w].numpy(), z1.numpy())
        np.testing.assert_array_equal(result.tokens[1][w].numpy(), z2.numpy())
        assert float(result.scores[w]) == pytest.approx(score, abs=1e-5, rel=1e-6)
        assert int(result.fallback_steps[w]) == int((mixture[w] == BINS - 1).sum())


def test_batched_windows_equal_separate_runs_and_greedy_is_beam_one():
    priors = make_priors(7)
    likelihood = random_counts(7).likelihood()
    mixture = torch.randint(0, BINS - 1, (4, 12), generator=torch.Generator().manual_seed(7))
    together = beam_search(priors, likelihood, mixture, beams=5)
    for w in range(4):
        alone = beam_search(priors, likelihood, mixture[w : w + 1], beams=5)
        assert torch.equal(alone.tokens[0][0], together.tokens[0][w])
        assert torch.equal(alone.tokens[1][0], together.tokens[1][w])
        assert torch.allclose(alone.scores[0], together.scores[w], atol=1e-5)
    greedy = search(priors, likelihood, mixture, SearchOptions(method="greedy"))
    beam1 = search(priors, likelihood, mixture, SearchOptions(beams=1))
    assert torch.equal(greedy.tokens[0], beam1.tokens[0]) and torch.equal(greedy.tokens[1], beam1.tokens[1])
    assert torch.all(together.scores >= greedy.scores - 1e-5)  # a wider beam never scores worse here


def test_every_chosen_pair_is_a_counted_pair():
    priors = make_priors(3)
    counts = random_counts(3)
    dense = counts.dense()
    mixture = torch.randint(0, BINS - 1, (2, 16), generator=torch.Generator().manual_seed(3))
    for options in (SearchOptions(beams=3), SearchOptions(method="sample", samples=4, top_k=5, seed=1)):
        result = search(priors, counts.likelihood(), mixture, options)
        z1, z2 = result.tokens
        assert np.all(dense[z1.numpy(), z2.numpy(), mixture.numpy()] > 0), options.method


def test_sampling_is_seeded_and_selects_by_mixture_error():
    priors = make_priors(5)
    likelihood = random_counts(5).likelihood()
    mixture = torch.randint(0, BINS, (2, 10), generator=torch.Generator().manual_seed(5))
    options = SearchOptions(method="sample", samples=6, temperature=0.8, seed=11)
    first, again = search(priors, likelihood, mixture, options), search(priors, likelihood, mixture, options)
    assert torch.equal(first.tokens[0], again.tokens[0]) and torch.equal(first.tokens[1], again.tokens[1])
    other = search(priors, likelihood, mixture, SearchOptions(method="sample", samples=6, seed=12))
    assert not (torch.equal(first.tokens[0], other.tokens[0]) and torch.equal(first.tokens[1], other.tokens[1]))

    # A decoder that maps tokens to their values: the best candidate is the one whose two
    # sources average closest to the target, which we can compute independently.
    decode = lambda tokens: tokens.double()  # noqa: E731
    target = torch.full((2, 10), 4.0, dtype=torch.float64)
    chosen = search(priors, likelihood, mixture, options, decode=decode, mixture_audio=target)
    for w in range(2):
        error = (0.5 * (chosen.tokens[0][w] + chosen.tokens[1][w]).double() - 4.0).pow(2).sum()
        assert error <= (0.5 * (first.tokens[0][w] + first.tokens[1][w]).double() - 4.0).pow(2).sum() + 1e-9


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="method"):
        SearchOptions(method="viterbi")
    with pytest.raises(ValueError, match="at least 1"):
        SearchOptions(beams=0)
    with pytest.raises(ValueError, match="positive"):
        SearchOptions(temperature=0)
    with pytest.raises(ValueError, match="windows, S"):
        search(make_priors(), random_counts(0).likelihood(), torch.zeros(5, dtype=torch.long))


def test_an_empty_likelihood_leaves_the_priors_alone():
    """Every step falls back: beam search then equals a search on the priors' outer sum."""
    priors = make_priors(9)
    empty = Counts(BINS)
    mixture = torch.randint(0, BINS, (2, 8), generator=torch.Generator().manual_seed(9))
    result = search(priors, empty.likelihood(), mixture, SearchOptions(beams=3))
    assert result.fallback_steps.tolist() == [8, 8]
    for w in range(2):
        z1, z2, score = brute_force_beam(priors, empty, 3.0, mixture[w], 3)
        assert torch.equal(result.tokens[0][w], z1) and torch.equal(result.tokens[1][w], z2)
        assert float(result.scores[w]) == pytest.approx(score, abs=1e-5)
    sampled = search(priors, empty.likelihood(), mixture, SearchOptions(method="sample", samples=2, top_k=3))
    assert sampled.fallback_steps.tolist() == [8, 8] and torch.isfinite(sampled.scores).all()


class _Witnessed:
    """A prior that notes, at every step, the thread it ran in and that thread's torch threads;
    with a ``meeting`` (a barrier of two) a step waits there for the other prior's to begin."""

    def __init__(self, prior, seen: list[tuple[int, int]], meeting: threading.Barrier | None = None) -> None:
        self.prior, self.seen, self.meeting, self.weight_bytes = prior, seen, meeting, prior.weight_bytes

    def new_cache(self, rows, max_len=None, capacity=None):
        return self.prior.new_cache(rows, max_len, capacity)

    def step(self, cache, previous):
        self.seen.append((threading.get_ident(), torch.get_num_threads()))
        if self.meeting is not None:
            self.meeting.wait(timeout=30)  # broken (an error) unless both priors step at once
        return self.prior.step(cache, previous)


@pytest.mark.parametrize(
    "options",
    [SearchOptions(beams=4), SearchOptions(beams=4, compat="upstream"), SearchOptions(method="sample", samples=3)],
    ids=["beam", "upstream", "sample"],
)
def test_priors_past_the_threshold_step_side_by_side_and_choose_the_same_tokens(monkeypatch, options):
    """On a CPU with two threads, priors of at least SIDE_BY_SIDE_FROM bytes each step at once, in
    two threads of one torch thread each; the search chooses what it chooses one after the other."""
    priors, likelihood = make_priors(4), random_counts(4).likelihood()
    mixture = torch.randint(0, BINS, (3, 14), generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[tuple[int, int]] = []
        alone = search(tuple(_Witnessed(p, seen) for p in priors), likelihood, mixture, options)
        assert {ident for ident, _ in seen} == {threading.get_ident()}  # small priors: one after the other
        monkeypatch.setattr(search_module, "SIDE_BY_SIDE_FROM", min(p.weight_bytes for p in priors))
        seen.clear()
        meeting = threading.Barrier(2)
        together = search(tuple(_Witnessed(p, seen, meeting) for p in priors), likelihood, mixture, options)
        assert len(seen) == 2 * 14 and threading.get_ident() not in {ident for ident, _ in seen}
        assert len({ident for ident, _ in seen}) == 2 and {count for _, count in seen} == {1}
        torch.set_num_threads(1)  # one thread: nothing to share
        seen.clear()
        search(tuple(_Witnessed(p, seen) for p in priors), likelihood, mixture, options)
        assert {ident for ident, _ in seen} == {threading.get_ident()}
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone.tokens[0], together.tokens[0]) and torch.equal(alone.tokens[1], together.tokens[1])
    torch.testing.assert_close(alone.scores, together.scores, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize(
    "options",
    [SearchOptions(beams=4), SearchOptions(beams=4, compat="upstream"), SearchOptions(method="sample", samples=3)],
    ids=["beam", "upstream", "sample"],
)
def test_small_priors_of_one_config_step_as_twins_and_choose_the_same_tokens(monkeypatch, options):
    """Every sampler steps two small priors of one config as twins (one stacked step and one cache
    a step), and chooses what it chooses with the priors one after the other."""
    priors, likelihood = make_priors(6), random_counts(6).likelihood()
    mixture = torch.randint(0, BINS, (3, 14), generator=torch.Generator().manual_seed(6))
    seen: list[tuple[int, int]] = []
    alone = search(tuple(_Witnessed(p, seen) for p in priors), likelihood, mixture, options)
    assert len(seen) == 2 * 14  # wrapped, they are not Priors: one after the other
    caches: list[int] = []
    twin_step = search_module.TwinPriors.step

    def counted(self, cache, previous):
        caches.append(id(cache))
        return twin_step(self, cache, previous)

    monkeypatch.setattr(search_module.TwinPriors, "step", counted)
    twins = search(priors, likelihood, mixture, options)
    assert len(caches) == 14 and len(set(caches)) == 1
    assert torch.equal(alone.tokens[0], twins.tokens[0]) and torch.equal(alone.tokens[1], twins.tokens[1])
    torch.testing.assert_close(alone.scores, twins.scores, atol=1e-5, rtol=1e-6)
