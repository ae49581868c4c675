"""The LQ-VAE latent likelihood: the sum table, exact beam search, and prior-based rejection."""

from __future__ import annotations

import pytest
import torch

from lass_cli.latent import LatentLikelihood, sum_table, top_indices
from lass_cli.search import SearchOptions, search

from .conftest import random_prior
from .test_search import brute_force_grid

BINS, WIDTH = 12, 3


def codebook(seed: int = 0) -> torch.Tensor:
    return torch.randn(BINS, WIDTH, generator=torch.Generator().manual_seed(seed))


def priors(seed: int = 0):
    return (
        random_prior(seed, l_bins=BINS, n_ctx=24, blocks=4),
        random_prior(seed + 50, l_bins=BINS, n_ctx=24, blocks=4),
    )


def test_sum_table_is_the_nearest_code_of_every_average():
    e = codebook()
    table = sum_table(e)
    averages = (e[:, None] + e[None, :]) / 2
    expected = torch.cdist(averages.reshape(-1, WIDTH), e).argmin(1).view(BINS, BINS)
    assert torch.equal(table, expected)
    assert torch.equal(table, table.T) and torch.equal(table.diagonal(), torch.arange(BINS))


def brute_force_beam(priors, likelihood: LatentLikelihood, latents: torch.Tensor, beams: int):
    """One window, the whole K x K grid of every beam at every step."""
    e = likelihood.codebook.double()
    averages = e[likelihood.table] if likelihood.average == "quantized" else (e[:, None] + e[None]) / 2

    def step_scores(t: int) -> torch.Tensor:
        return -likelihood.weight * (latents[t].double() - averages).pow(2).sum(-1) / (2 * likelihood.sigma**2)

    return brute_force_grid(priors, step_scores, len(latents), beams)


@pytest.mark.parametrize(
    ("beams", "sigma", "weight", "average", "top_k", "top_pairs"),
    [
        (1, 1.0, 1.0, "quantized", BINS, 0),
        (5, 0.5, 1.0, "quantized", 3, BINS * BINS),  # the likelihood proposes every pair the priors miss
        (9, 2.0, 3.0, "continuous", BINS, 0),
        (6, 0.7, 1.0, "continuous", 1, BINS * BINS),
    ],
)
def test_search_over_every_pair_equals_brute_force(beams, sigma, weight, average, top_k, top_pairs):
    model = priors(beams)
    likelihood = LatentLikelihood.from_codebook(
        codebook(beams), sigma=sigma, top_k=top_k, weight=weight, average=average, top_pairs=top_pairs
    )
    latents = torch.randn(2, 10, WIDTH, generator=torch.Generator().manual_seed(beams))
    result = search(model, likelihood, latents, SearchOptions(beams=beams))
    assert result.fallback_steps.tolist() == [0, 0]
    for w in range(2):
        z1, z2, score = brute_force_beam(model, likelihood, latents[w], beams)
        assert torch.equal(result.tokens[0][w], z1) and torch.equal(result.tokens[1][w], z2)
        assert float(result.scores[w]) == pytest.approx(score, abs=1e-4, rel=1e-6)


def test_likelihood_proposals_find_pairs_outside_the_priors_top_k():
    """With top_k 1 and a sharp likelihood, the priors' own best pair rarely explains the mixture;
    the likelihood's proposals do, and every chosen pair is a proposal or the priors' best."""
    e = codebook(4)
    generator = torch.Generator().manual_seed(4)
    true = torch.randint(0, BINS, (2, 2, 12), generator=generator)
    latents = (e[true[0]] + e[true[1]]) / 2
    plain = LatentLikelihood.from_codebook(e, sigma=0.005, top_k=1, average="continuous")
    proposing = LatentLikelihood.from_codebook(e, sigma=0.005, top_k=1, average="continuous", top_pairs=8)
    model = priors(4)
    fits = {}
    for name, likelihood in (("plain", plain), ("proposing", proposing)):
        z1, z2 = search(model, likelihood, latents, SearchOptions(beams=3)).tokens
        fits[name] = (latents - (e[z1] + e[z2]) / 2).pow(2).sum(-1).mean()
    assert fits["proposing"] < 1e-6 < fits["plain"]


def test_a_sharp_likelihood_explains_the_mixture_latent():
    """With sigma tiny the chosen pair's quantised average is the code nearest the mixture latent
    (always reachable: z1 = z2 = that code), whatever the priors prefer, for beam and sampling."""
    e = codebook(3)
    likelihood = LatentLikelihood.from_codebook(e, sigma=1e-3, top_k=BINS)
    latents = torch.randn(3, 12, WIDTH, generator=torch.Generator().manual_seed(3))
    nearest = torch.cdist(latents, e[None]).argmin(-1)
    for options in (SearchOptions(beams=4), SearchOptions(method="sample", samples=3, select="priors")):
        z1, z2 = search(priors(3), likelihood, latents, options).tokens
        assert torch.equal(likelihood.table[z1, z2], nearest)


def teacher_forced(prior, tokens: torch.Tensor) -> torch.Tensor:
    """Sum over steps of log p(z_t | z_<t) for each row of (N, S) tokens."""
    cache = prior.new_cache(rows=len(tokens), max_len=tokens.shape[1])
    total, previous = torch.zeros(len(tokens), dtype=torch.float64), None
    for t in range(tokens.shape[1]):
        lp = torch.log_softmax(prior.step(cache, previous), -1).double()
        total += lp.gather(1, tokens[:, t : t + 1])[:, 0]
        previous = tokens[:, t]
    return total


def test_prior_based_rejection_keeps_the_candidate_the_priors_like_best():
    """select=priors (the LQ-VAE paper's alpha 0) and select=posterior choose among the same
    candidates (same seed): each wins on its own criterion, and here they choose differently."""
    model = priors(5)
    likelihood = LatentLikelihood.from_codebook(codebook(5), sigma=0.3, top_k=4)
    latents = torch.randn(3, 9, WIDTH, generator=torch.Generator().manual_seed(5))
    prior_score, posterior_score = {}, {}
    for select in ("priors", "posterior"):
        options = SearchOptions(method="sample", samples=8, seed=4, select=select)
        result = search(model, likelihood, latents, options)
        z1, z2 = result.tokens
        prior_score[select] = teacher_forced(model[0], z1) + teacher_forced(model[1], z2)
        posterior_score[select] = result.scores
    assert torch.all(prior_score["priors"] >= prior_score["posterior"] - 1e-4)
    assert torch.all(posterior_score["posterior"] >= posterior_score["priors"] - 1e-6)
    assert not torch.allclose(prior_score["priors"], prior_score["posterior"])


def test_bad_latents_and_settings_are_rejected():
    likelihood = LatentLikelihood.from_codebook(codebook(), top_k=3)
    with pytest.raises(ValueError, match="windows, S, 3"):
        search(priors(), likelihood, torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="sigma"):
        LatentLikelihood.from_codebook(codebook(), sigma=0)


@pytest.mark.parametrize("values", ["distinct", "ties", "clustered"])
def test_top_indices_in_passes_are_the_plain_top_k(values):
    """The blockwise top k (three passes here) gives the values of a plain topk, in some order, at
    distinct indices: with many equal values (the quantised average's ties) and with the best all
    in a few blocks."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64 * 64, generator=generator)
    if values == "ties":
        x = x.mul(2).round()
    if values == "clustered":
        x[:, 96:160] += 10  # the 64 largest fill two blocks of 32
    k = 32
    index = top_indices(x, k)
    assert torch.equal(x.gather(1, index).sort(1, descending=True).values, x.topk(k, dim=1).values)
    assert all(len(set(row.tolist())) == k for row in index)
    if values == "distinct":
        assert torch.equal(index.sort(1).values, x.topk(k, dim=1).indices.sort(1).values)
    small = x[:, :100]  # too few values for blocks: the plain topk
    assert torch.equal(top_indices(small, k).sort(1).values, small.topk(k, dim=1).indices.sort(1).values)


@pytest.mark.parametrize("average", ["quantized", "continuous"])
@pytest.mark.parametrize("top_pairs", [1, 40, 300, 64 * 64])
def test_best_pairs_from_half_the_grid_are_the_whole_grids_best(average, top_pairs):
    """The likelihood-best pairs ranked over the pairs i <= j and mirrored (K a multiple of 16;
    the whole grid where top_pairs is too large for that) score as the whole grid's best, each pair
    once, both orders of a pair where it is chosen."""
    generator = torch.Generator().manual_seed(top_pairs)
    e = torch.randn(64, 4, generator=generator)
    likelihood = LatentLikelihood.from_codebook(e, sigma=0.5, top_k=2, average=average, top_pairs=top_pairs)
    plan = likelihood.plan(torch.randn(3, 5, 4, generator=generator))
    terms = likelihood._step_terms(plan, 2)
    z1, z2 = likelihood._best_pairs(plan, terms)
    every = torch.arange(64 * 64).expand(3, -1)
    grid = likelihood._scores(terms, every // 64, every % 64)
    chosen = likelihood._scores(terms, z1, z2)
    # The ranking sums in another order than the scores: near ties may change places, not values.
    torch.testing.assert_close(chosen.sort(1, descending=True).values, grid.topk(top_pairs, dim=1).values,
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    assert all(len(set(row.tolist())) == top_pairs for row in z1 * 64 + z2)
    assert (likelihood._half is not None) == (top_pairs != 64 * 64)  # all pairs: the whole grid
    for a, b, score in zip(z1.tolist(), z2.tolist(), chosen):  # above the k-th value: both orders
        row = set(zip(a, b))
        assert all((j, i) in row for (i, j), s in zip(zip(a, b), score.tolist()) if s > score.min() + 1e-4)
